"""The worker process: the only writer of the warehouse and the only scheduler.

One APScheduler BlockingScheduler (ARCHITECTURE.md §3) runs the chained cycle
ETL pass → KPI evaluation → alerting → publish every ETL_INTERVAL_S, and the alert dispatcher
every 15 s. The web tier never imports this module (tests/processes checks it).
"""
from __future__ import annotations

import faulthandler
import logging
import os
import signal
import threading
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import (EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED,
                                JobExecutionEvent)
from apscheduler.schedulers.blocking import BlockingScheduler

from etl.settings import Settings
from kpis.alerting import process
from kpis.dispatch import dispatch_due
from kpis.evaluate import ensure_schema, evaluate_incremental, fine_snapshots, write_registry_table
from kpis.publish import publish
from kpis.registry import load_registry
from kpis.retention import thin_history
from kpis.value_layout import sort_after_large_pass, sort_recent

log = logging.getLogger(__name__)
DISPATCH_INTERVAL_S = 15
STOP_GRACE_S = 10             # how long SIGTERM waits for a running cycle before exiting
WORKER_THREADS = 2            # ARCHITECTURE.md §9: the worker's DuckDB budget on 2 cores
WORKER_MEMORY = "8GB"
EVENT_DDL = ("CREATE TABLE IF NOT EXISTS worker_event (event_at TIMESTAMP, job_id VARCHAR, "
             "event VARCHAR, detail VARCHAR)")


class WorkerBusy(RuntimeError):
    """Another worker holds the writer lock; the message names its PID."""


def local_now(settings: Settings) -> datetime:
    """Naive local time, as the sources write it."""
    return datetime.now(ZoneInfo(settings.timezone)).replace(tzinfo=None, microsecond=0)


class Worker:
    """Holds the warehouse and runs one cycle at a time."""

    def __init__(self, settings: Settings, warehouse: Any) -> None:
        self.settings = settings
        self.warehouse = warehouse
        self._registry: Any = None
        self._cycle_lock = threading.Lock()
        # the dispatcher's job runs beside the cycle (not under its lock); the stop closes the
        # warehouse only once no dispatch is running on it
        self._dispatch_lock = threading.Lock()
        # Set when the worker stops: a job the scheduler handed to a thread just before returns
        # at once (it would otherwise wait for the cycle lock that the stop holds, and the
        # interpreter's exit waits for every executor thread: the process never ended).
        self.stopping = threading.Event()

    def _cursor(self) -> Any:
        return self.warehouse.cursor()

    def setup(self) -> None:
        """Migrate the warehouse and create the KPI and worker tables."""
        self.warehouse.migrate()
        con = self._cursor()
        ensure_schema(con)
        write_registry_table(con, self.registry())   # kpi_def: the registry for the web side
        con.execute(EVENT_DDL)
        con.close()

    def registry(self) -> Any:
        if self._registry is None:
            self._registry = load_registry()
        return self._registry

    def cycle(self) -> None:
        """ETL pass, then evaluation and alerting in one transaction, then publish."""
        with self._cycle_lock:
            if self.stopping.is_set():
                return
            from etl.pipeline import run_pass
            passed = run_pass(self.settings, self.warehouse)
            log.info("etl pass %s done", getattr(passed, "run_id", "?"))
            now = local_now(self.settings)
            # evaluate_incremental commits KPI by KPI (a broken one fails alone); the alarm step
            # then reads the current row of every KPI and org in one transaction with the
            # outbox, so a notification is written exactly when its state change is.
            con = self._cursor()
            try:
                summary = evaluate_incremental(con, self.registry(), now)
            finally:
                con.close()
            rebuilt = sorted(n for n, how in summary.kept.items() if how == "full")
            log.info("evaluated %s rows in %s KPIs, %s changed, %s KPIs failed%s%s", summary.rows,
                     summary.kpis, len(summary.changed), len(summary.errors),
                     f": {sorted(summary.errors)}" if summary.errors else "",
                     f"; kept tables rebuilt whole: {', '.join(rebuilt)}" if rebuilt else "")
            with self.warehouse.transaction() as tx:
                process(tx, self.registry(), None, now, self.settings)
            self.publish()
            self.sort_after(summary.rows)
            if self.warehouse.fold_wal():   # after the publish: readers have the cycle already
                log.info("WAL folded into the warehouse file")

    def sort_after(self, rows: int) -> None:
        """After a pass that wrote millions of rows (the first one: the backfill), re-append them
        in period order at once rather than at 02:30 (kpis/value_layout.py)."""
        con = self._cursor()
        try:
            t = time.perf_counter()
            moved = sort_after_large_pass(con, rows)
            if moved:
                log.info("layout: %s kpi_value rows re-appended in period order after a pass of "
                         "%s rows, in %.1f s", moved, rows, time.perf_counter() - t)
        finally:
            con.close()

    def publish(self) -> None:
        con = self._cursor()
        try:
            publish(con, self.settings.serving_dir, published_at=local_now(self.settings))
        finally:
            con.close()

    def nightly(self) -> None:
        """Reconcile the last 7 days against the sources (late rows the overlap missed, hard
        deletes), keep one near-real-time snapshot per KPI and past hour (kpis/retention.py),
        re-append the day's kpi_value rows in period order (kpis/value_layout.py), fold the WAL
        into the file and publish a fully rebuilt snapshot. Holds the cycle lock: one writer job
        at a time."""
        from etl.reconcile import reconcile
        with self._cycle_lock:
            if self.stopping.is_set():
                return
            results = reconcile(self.settings, self.warehouse, days=7)
            log.info("nightly reconciliation: %s tables checked", len(results))
            con = self._cursor()
            try:
                thinned = thin_history(con, local_now(self.settings),
                                       fine_snapshots(self.registry().kpis.values()))
                log.info("nightly retention: %s near-real-time snapshot rows removed", thinned)
                log.info("nightly layout: %s kpi_value rows re-appended in period order",
                         sort_recent(con))
                con.execute("CHECKPOINT")
                # the serving snapshot rebuilt from scratch here, not in a daytime cycle: a minute
                # at city (kpis/publish.py), and it drops what the day's increments keep (rows
                # gone upstream, the thinned snapshots)
                publish(con, self.settings.serving_dir, published_at=local_now(self.settings), full=True)
            finally:
                con.close()

    def dispatch(self) -> None:
        """Deliver due alert notifications from the outbox."""
        if self.stopping.is_set():
            return
        with self._dispatch_lock:
            if self.stopping.is_set():
                return
            con = self._cursor()
            try:
                dispatch_due(con, self.settings, local_now(self.settings))
            finally:
                con.close()

    def stop_and_close(self, close: Any, grace_s: float = 10.0) -> bool:
        """Stop taking jobs and call `close` once neither a cycle nor a dispatch runs. False
        when one still runs after `grace_s` (nothing closed: the caller exits without waiting;
        committed loads survive, the next start re-reads the window)."""
        self.stopping.set()
        deadline = time.monotonic() + grace_s
        if not self._cycle_lock.acquire(timeout=grace_s):
            return False
        try:
            if not self._dispatch_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return False
            try:
                close()
                return True
            finally:
                self._dispatch_lock.release()
        finally:
            self._cycle_lock.release()     # a job waiting for it sees `stopping` and returns

    def record_event(self, event: JobExecutionEvent) -> None:
        """Scheduler trouble (error, missed or overlapping run) goes to worker_event."""
        kind = {EVENT_JOB_ERROR: "error", EVENT_JOB_MISSED: "missed",
                EVENT_JOB_MAX_INSTANCES: "max_instances"}.get(event.code, str(event.code))
        detail = repr(event.exception) if getattr(event, "exception", None) else ""
        log.warning("job %s: %s %s", event.job_id, kind, detail)
        try:
            con = self._cursor()
            con.execute("INSERT INTO worker_event VALUES (?, ?, ?, ?)",
                        [local_now(self.settings), event.job_id, kind, detail[:2000]])
            con.close()
        except Exception:  # the log line above already holds the event
            log.exception("could not record job event")


class SignalStop:
    """SIGTERM and SIGINT stop the scheduler from a thread of their own, never from the handler.

    A Python signal handler runs in the main thread between two of its bytecodes. The scheduler's
    main loop hands jobs to its thread pool under the pool's lock (`ThreadPoolExecutor.submit`);
    a handler that called `shutdown` there waited for that same lock in the same thread, and the
    worker never stopped (CI, session 24: SIGTERM while a job was being handed over). The
    handler here does nothing; Python's C-level handler writes the signal's number to a pipe
    (`signal.set_wakeup_fd`) and this class's thread, blocked on that pipe, calls `stop` once the
    main thread has let go of whatever it held.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, stop: Any) -> None:
        self._stop = stop
        self._read_fd = self._write_fd = -1
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1
        self._thread: threading.Thread | None = None
        self.received: int | None = None

    def install(self) -> None:
        """Call from the main thread (signal handlers and the wakeup fd are the main thread's)."""
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)   # the C handler must never block
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, _ignore_signal)
        self._thread = threading.Thread(target=self._watch, name="signal-stop", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        wanted = {int(s) for s in self.SIGNALS}
        while self.received is None:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:          # uninstalled: the pipe is closed
                return
            if not data:
                return
            hits = [b for b in data if b in wanted]
            if hits:
                self.received = hits[0]
        log.info("signal %s: stopping the scheduler", self.received)
        from apscheduler.schedulers import SchedulerNotRunningError
        while True:
            try:
                self._stop(wait=False)
                return
            except SchedulerNotRunningError:   # the signal came before the scheduler started
                if self._read_fd < 0:
                    return
                time.sleep(0.1)

    def uninstall(self) -> None:
        """Give back the handlers and the wakeup fd this class took (main thread)."""
        if self._read_fd < 0:
            return
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        read_fd, self._read_fd = self._read_fd, -1
        os.close(self._write_fd)        # the watcher's read returns b"" and it ends
        if self._thread is not None:
            self._thread.join(timeout=5)
        os.close(read_fd)


def _ignore_signal(_signum: int, _frame: object) -> None:
    """The Python-level handler: the work is done by SignalStop's thread (see there)."""


def build_scheduler(worker: Worker, settings: Settings) -> BlockingScheduler:
    """The worker's single scheduler, jobs defined in code (memory store)."""
    sched = BlockingScheduler(timezone=settings.timezone)
    tz_now = datetime.now(ZoneInfo(settings.timezone))
    common = dict(max_instances=1, coalesce=True, replace_existing=True, next_run_time=tz_now)
    sched.add_job(worker.cycle, "interval", id="cycle", seconds=settings.etl_interval_s,
                  misfire_grace_time=max(1, settings.etl_interval_s // 2), **common)
    sched.add_job(worker.dispatch, "interval", id="dispatch", seconds=DISPATCH_INTERVAL_S,
                  misfire_grace_time=DISPATCH_INTERVAL_S // 2, **common)
    sched.add_job(worker.nightly, "cron", id="nightly", hour=2, minute=30,
                  misfire_grace_time=3600, max_instances=1, coalesce=True, replace_existing=True)
    sched.add_listener(worker.record_event,
                       EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    return sched


def run_worker(settings: Settings, once: bool = False) -> int:
    """Take the writer lock, open the warehouse and run the scheduler (or one cycle)."""
    from etl.lock import WriterBusy, acquire_writer_lock
    from etl.warehouse import Warehouse

    # `kill -USR1 PID` prints every thread's stack to stderr: what a worker that does not stop
    # or does not cycle is doing, without stopping it (from the start: its setup can be long)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        lock = acquire_writer_lock(settings.data_dir)
    except WriterBusy as exc:
        log.error("worker not started: %s", exc)
        print(f"worker not started: {exc}", flush=True)
        return 3
    warehouse = Warehouse(settings.warehouse_path, threads=WORKER_THREADS, memory_limit=WORKER_MEMORY)
    worker = Worker(settings, warehouse)
    try:
        worker.setup()
        if once:
            worker.cycle()
            return 0
        sched = build_scheduler(worker, settings)

        stopper = SignalStop(sched.shutdown)
        stopper.install()
        try:
            log.info("worker running: cycle every %s s, dispatch every %s s",
                     settings.etl_interval_s, DISPATCH_INTERVAL_S)
            sched.start()
        finally:
            stopper.uninstall()
        return 0
    finally:
        # A cycle still running holds DuckDB; waiting for it could take minutes at county scale.
        # Leaving mid-cycle is safe: committed loads survive, the next start re-reads the window.
        def close() -> None:
            getattr(warehouse, "close", lambda: None)()
            lock.release()
        if not worker.stop_and_close(close, STOP_GRACE_S):
            log.warning("a cycle or dispatch is still running after %s s: exiting without waiting "
                        "for it", STOP_GRACE_S)
            logging.shutdown()
            os._exit(0)
