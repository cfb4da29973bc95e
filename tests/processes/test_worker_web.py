"""The worker and the web as real processes on temporary paths."""
from __future__ import annotations

import http.cookiejar
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import duckdb

from kpis.publish import current_version, publish
from tests.browser.conftest import ROOT, free_port, wait_http, web_env
from tests.web.snapshot_kit import build_warehouse, publish_fixture

PASSWORD = "process test password 1"


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(what)


def test_a_second_worker_stops_with_the_lock_message_and_the_first_prints_its_stacks(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = web_env(data, free_port())
    log = tmp_path / "worker.log"       # kept for the failure message below
    first = subprocess.Popen([sys.executable, "app.py", "worker"], cwd=ROOT, env=env,
                             stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        lock = data / "worker.lock"
        _wait(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), 60, "first worker lock")
        second = subprocess.run([sys.executable, "app.py", "worker"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 3
        assert f"PID {first.pid}" in second.stdout and "worker not started" in second.stdout
        assert first.poll() is None           # the first one is untouched
        # SIGUSR1: the worker prints its threads' stacks (the main thread's in run_worker) and
        # runs on. faulthandler's dump of all threads can stop short while the first cycle's
        # ETL threads start and end (session 30: two of the threads, the main one missing), so
        # an operator's second signal is what this allows too
        for attempt in range(6):
            first.send_signal(signal.SIGUSR1)
            try:
                _wait(lambda: "in run_worker" in log.read_text(errors="replace"), 5,
                      "stacks in the worker's log")
                break
            except TimeoutError:
                if attempt == 5:
                    raise
        assert "Current thread 0x" in log.read_text(errors="replace")
        assert first.poll() is None
    finally:
        first.terminate()
        try:
            first.wait(timeout=60)
        except subprocess.TimeoutExpired:     # never leave a worker behind, then fail loudly
            first.send_signal(signal.SIGUSR1)  # the worker prints its threads' stacks
            time.sleep(2)
            first.kill()
            first.wait(timeout=10)
            raise AssertionError("the worker did not stop within 60 s of SIGTERM; its log and "
                                 f"stacks:\n{log.read_text(errors='replace')[-8000:]}") from None


class Client:
    """A logged-in HTTP client (cookies + CSRF) against the real server."""

    def __init__(self, base: str, user: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        page = self.opener.open(base + "/login").read().decode()
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode({"username": user, "password": PASSWORD, "csrf_token": token,
                                       "next": "/"}).encode()
        self.opener.open(base + "/login", data=form)

    def csrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "kpi_csrf")

    def render(self, page: str, path: str) -> tuple[int, str]:
        body = {"output": f"{page}-body.children", "outputs": {"id": f"{page}-body", "property": "children"},
                "inputs": [{"id": f"{page}-version", "property": "data", "value": None},
                           {"id": f"{page}-filters", "property": "data",
                            "value": {"org": None, "period": "today", "lang": "zh", "path": path}}],
                "state": [], "changedPropIds": []}
        req = urllib.request.Request(self.base + "/_dash-update-component", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "X-CSRFToken": self.csrf()})
        with self.opener.open(req, timeout=30) as resp:
            return resp.status, resp.read().decode()


def _start_web(data: Path) -> tuple[subprocess.Popen, str, dict[str, str]]:  # type: ignore[type-arg]
    port = free_port()
    env = web_env(data, port)
    done = subprocess.run([sys.executable, "app.py", "users", "add", "ana", "--role", "analyst", "--org", "P0",
                           "--password-stdin"], cwd=ROOT, env=env, input=PASSWORD + "\n", capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen([sys.executable, "app.py", "web"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz")
    return proc, base, env


def test_publishing_under_load_keeps_the_web_answering(tmp_path: Path) -> None:
    data = tmp_path / "data"
    publish_fixture(data)
    proc, base, _env = _start_web(data)
    try:
        clients = [Client(base, "ana") for _ in range(4)]
        failures: list[str] = []
        done = threading.Event()
        answers = [0]

        def hammer(c: Client) -> None:
            while not done.is_set():
                for page, path in (("sources", "/sources"), ("repair", "/repair")):
                    try:
                        status, text = c.render(page, path)
                        if status != 200 or "数据暂不可用" in text:
                            failures.append(f"{page}: {status} {text[:200]}")
                        answers[0] += 1
                    except Exception as exc:   # any failed request is what this test is about
                        failures.append(f"{page}: {exc!r}")

        threads = [threading.Thread(target=hammer, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        con = duckdb.connect(str(data / "warehouse.duckdb"))
        for i in range(12):    # the worker's publishes: new versions, old files pruned under readers
            con.execute("UPDATE kpi_value SET value = value + 0.01, computed_at = now()::TIMESTAMP "
                        "WHERE org_no = 'P0'")
            publish(con, data / "serving", keep=2)
            time.sleep(0.3)
        con.close()
        done.set()
        for t in threads:
            t.join(timeout=60)
        assert failures == []
        assert answers[0] > 20
        assert current_version(data / "serving") == 13
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_simulator_worker_and_web_end_to_end(tmp_path: Path) -> None:
    """Small simulated sources → worker cycle (ETL, KPIs, publish) → the sources page over HTTP."""
    data = tmp_path / "data"
    env = web_env(data, free_port())
    built = subprocess.run([sys.executable, "-m", "simulator", "build", "--scale", "small", "--days", "2",
                            "--seed", "3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    worker = subprocess.run([sys.executable, "app.py", "worker", "--once"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert current_version(data / "serving") == 1
    con = duckdb.connect(str(data / "serving" / "serving_1.duckdb"), read_only=True)
    stats = dict(con.execute("SELECT table_name, row_count FROM source_table_stats").fetchall())
    root = con.execute("SELECT org_no FROM dim_org WHERE is_root").fetchone()[0]
    kpis = con.execute("SELECT COUNT(*) FROM kpi_value").fetchone()[0]
    con.close()
    assert stats["mis_org"] > 0 and stats["dist_repair_task"] > 0 and kpis > 0
    port = free_port()
    env = web_env(data, port)
    subprocess.run([sys.executable, "app.py", "users", "add", "ana", "--role", "analyst", "--org", root,
                    "--password-stdin"], cwd=ROOT, env=env, input=PASSWORD + "\n", check=True, text=True,
                   capture_output=True, timeout=60)
    proc = subprocess.Popen([sys.executable, "app.py", "web"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz")
        status, text = Client(base, "ana").render("sources", "/sources")
        assert status == 200
        for name in ("mis_org", "cs_work_order", "dist_repair_task", "meter_event"):
            assert name in text
        assert f"{stats['mis_org']:,}" in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_bad_setting_stops_the_start_with_exit_2(tmp_path: Path) -> None:
    env = web_env(tmp_path, free_port())
    env["ETL_INTERVAL_S"] = "soon"
    done = subprocess.run([sys.executable, "app.py", "web"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "ETL_INTERVAL_S: expected a whole number, got 'soon'" in done.stderr
