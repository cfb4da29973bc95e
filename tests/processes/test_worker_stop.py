"""The worker's stop when the scheduler has just handed a job to a thread (the race that left a
worker running after SIGTERM: the stop held the cycle lock, the job waited for it, and the
interpreter's exit waited for the job's thread), and the jobs' effects on the serving snapshot."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from etl.settings import load_settings
from etl.warehouse import Warehouse
from kpis.worker import SignalStop, Worker


def _worker(tmp_path: Path) -> tuple[Worker, Warehouse]:
    data = tmp_path / "data"
    data.mkdir()
    settings = load_settings({"DATA_DIR": str(data), "SIMULATE": "0"})
    wh = Warehouse(settings.warehouse_path, threads=1, memory_limit="1GB")
    worker = Worker(settings, wh)
    worker.setup()
    return worker, wh


def test_a_job_handed_over_as_the_worker_stops_returns_without_running(tmp_path: Path) -> None:
    worker, wh = _worker(tmp_path)
    try:
        # the stop: flag set, cycle lock taken (as run_worker's finally does)
        worker.stopping.set()
        assert worker._cycle_lock.acquire(timeout=1)
        jobs = [threading.Thread(target=job) for job in (worker.cycle, worker.nightly, worker.dispatch)]
        for t in jobs:
            t.start()
        worker._cycle_lock.release()
        for t in jobs:
            t.join(timeout=10)
        assert not any(t.is_alive() for t in jobs)
        con = wh.cursor()
        assert con.execute("SELECT COUNT(*) FROM etl_run").fetchone()[0] == 0   # no pass ran
        con.close()
    finally:
        wh.close()


def test_a_cycle_runs_while_the_worker_is_not_stopping(tmp_path: Path) -> None:
    worker, wh = _worker(tmp_path)
    try:
        worker.cycle()
        con = wh.cursor()
        assert con.execute("SELECT COUNT(*) FROM etl_run").fetchone()[0] > 0
        con.close()
    finally:
        wh.close()


def test_the_nightly_job_publishes_a_snapshot_rebuilt_from_scratch(tmp_path: Path) -> None:
    # the daytime cycles publish incrementally; the full rebuild (compaction, rows gone upstream
    # dropped) is the nightly job's, off the cycles users wait for
    import duckdb

    from kpis.publish import current_version, snapshot_path
    worker, wh = _worker(tmp_path)
    serving = worker.settings.serving_dir

    def info() -> tuple[int, int]:
        con = duckdb.connect(str(snapshot_path(serving, current_version(serving))), read_only=True)
        try:
            return con.execute("SELECT version, full_version FROM snapshot_info").fetchone()
        finally:
            con.close()
    try:
        worker.cycle()
        worker.cycle()
        assert info() == (2, 1)          # the second cycle's publish built on the first
        worker.nightly()
        assert info() == (3, 3)
        worker.cycle()
        assert info() == (4, 3)
    finally:
        wh.close()


def test_the_workers_first_pass_over_a_source_leaves_kpi_value_sorted(tmp_path: Path,
                                                                      monkeypatch: Any) -> None:
    # its first cycle evaluates the sources' history (a backfill); the rows are re-appended in
    # period order right after it, a later minute's few are not
    from datetime import date

    import simulator
    from kpis import value_layout
    from simulator.config import SYSTEMS
    data = tmp_path / "data"
    data.mkdir()
    simulator.build({s: f"sqlite:///{data / f'source_{s}.db'}" for s in SYSTEMS}, scale="small",
                    seed=3, days=2, start=date(2026, 9, 1))
    settings = load_settings({"DATA_DIR": str(data), "SIMULATE": "0"})
    wh = Warehouse(settings.warehouse_path, threads=1, memory_limit="1GB")
    worker = Worker(settings, wh)
    worker.setup()
    monkeypatch.setattr(value_layout, "SORT_AFTER_ROWS", 1000)
    try:
        worker.cycle()
        con = wh.cursor()
        rows, newest = con.execute("SELECT COUNT(*), MAX(computed_at) FROM kpi_value").fetchone()
        assert rows > 1000
        assert con.execute("SELECT upto FROM kpi_value_sorted").fetchall() == [(newest,)]
        order = con.execute(f"SELECT {value_layout.ORDER} FROM kpi_value ORDER BY rowid").fetchall()
        assert order == sorted(order, key=lambda r: (r[0], r[1], r[2], r[3]))
        con.close()
    finally:
        wh.close()


def test_the_stop_closes_the_warehouse_only_after_a_running_dispatch(tmp_path: Path) -> None:
    # the dispatcher's job runs beside the cycle, on its own cursor: closing the warehouse under
    # it could leave its thread (and the interpreter's exit, which joins it) hanging
    import time
    worker, wh = _worker(tmp_path)
    events: list[str] = []

    def dispatch_for(seconds: float) -> threading.Thread:
        held = threading.Event()

        def job() -> None:
            with worker._dispatch_lock:
                held.set()
                time.sleep(seconds)
                events.append("dispatch done")
        t = threading.Thread(target=job)
        t.start()
        held.wait(5)
        return t
    try:
        slow = dispatch_for(2.0)
        assert not worker.stop_and_close(lambda: events.append("closed"), grace_s=0.3)
        assert events == []                 # given up: nothing closed under the running dispatch
        slow.join()
        worker.stopping.clear()
        short = dispatch_for(0.3)
        assert worker.stop_and_close(lambda: events.append("closed"), grace_s=5)
        short.join()
        assert events == ["dispatch done", "dispatch done", "closed"]
        worker.dispatch()                   # a dispatch after the stop returns at once
        assert events[-1] == "closed"
    finally:
        wh.close()


def _wait_for(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_sigterm_while_the_main_thread_holds_the_schedulers_pool_lock_still_stops_it() -> None:
    # CI after session 24: SIGTERM came while the scheduler's main loop handed a job to its pool
    # (ThreadPoolExecutor.submit holds the pool's lock); the handler, run in that same thread,
    # called shutdown, which waited for that lock: the worker never stopped. `pool_lock` stands
    # for the pool's lock; the stop must run once the main thread lets go of it.
    pool_lock = threading.Lock()
    calls: list[tuple[str, bool]] = []

    def shutdown(wait: bool) -> None:
        on_main = threading.current_thread() is threading.main_thread()
        if pool_lock.acquire(timeout=2):
            calls.append(("stopped", on_main))
            pool_lock.release()
        else:
            calls.append(("waited for a lock its own thread held", on_main))

    before = signal.getsignal(signal.SIGTERM)
    stopper = SignalStop(shutdown)
    stopper.install()
    try:
        with pool_lock:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)              # the Python-level handler runs in here, on this thread
            assert calls == []
        assert _wait_for(lambda: calls, 10)
        assert calls == [("stopped", False)]
        assert stopper.received == signal.SIGTERM
    finally:
        stopper.uninstall()
    assert signal.getsignal(signal.SIGTERM) is before    # the handlers are given back


def test_sigint_before_the_scheduler_runs_stops_it_once_it_does() -> None:
    from apscheduler.schedulers import SchedulerNotRunningError
    running = threading.Event()
    calls: list[bool] = []

    def shutdown(wait: bool) -> None:
        if not running.is_set():
            raise SchedulerNotRunningError
        calls.append(wait)

    stopper = SignalStop(shutdown)
    stopper.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)   # no KeyboardInterrupt: the stop is the thread's
        time.sleep(0.5)
        assert calls == [] and stopper.received == signal.SIGINT
        running.set()
        assert _wait_for(lambda: calls, 10)
        assert calls == [False]
    finally:
        stopper.uninstall()
