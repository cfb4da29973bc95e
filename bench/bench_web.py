"""Web tier figures: page server time cold and cached, concurrent users while publishing, 1 M-row export.

    python bench/bench_web.py --data-dir DIR [--users 50] [--seconds 20] [--with-worker]

`--data-dir` must hold published snapshots (`python -m simulator build --scale county`, then
`python app.py worker --once`); the bench adds a user, starts `gunicorn -w 2 -k gthread --threads 4
'app:server()'` on a free port, and prints the figures with the command that reproduces them,
the load average and the CPU seconds the web (and worker) processes used. With `--with-worker`
the worker runs its ETL + evaluation + publish cycle meanwhile (it writes DIR, and its log to
DIR/bench_worker.log: use a copy of the data); run long enough to see publishes (150 s covers
three or four cycles at county scale; the output names the versions at start and end).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser.conftest import free_port, wait_http, web_env  # noqa: E402
from tests.processes.test_worker_web import PASSWORD, Client  # noqa: E402

UNAVAILABLE = "数据暂不可用"

PAGES = [("sources", "/sources"), ("overview", "/"), ("repair", "/repair"), ("customer", "/customer"),
         ("service", "/service"), ("billing", "/billing")]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def start_web(data_dir: Path, gunicorn: bool) -> tuple[subprocess.Popen, str, dict[str, str]]:  # type: ignore[type-arg]
    port = free_port()
    env = web_env(data_dir, port)
    env["CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-cache-")   # cold start: an empty cache
    root = subprocess.run([sys.executable, "-c", "from kpis.appdb import find_root_org; "
                           "from etl.settings import load_settings; print(find_root_org(load_settings()))"],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([sys.executable, "app.py", "users", "add", "bench", "--role", "analyst", "--org", root,
                    "--password-stdin"], cwd=ROOT, env=env, input=PASSWORD + "\n", text=True,
                   capture_output=True)
    cmd = ([sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "4", "-b",
            f"127.0.0.1:{port}", "app:server()"] if gunicorn else [sys.executable, "app.py", "web"])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz", timeout=120)
    return proc, base, env


def page_times(base: str) -> list[tuple[str, float, float]]:
    """Per page: first render (cold cache) and the median of 5 cached renders, in ms."""
    client = Client(base, "bench")
    out = []
    for page, path in PAGES:
        t0 = time.perf_counter()
        status, _ = client.render(page, path)
        cold = (time.perf_counter() - t0) * 1000
        warm = []
        for _ in range(5):
            t0 = time.perf_counter()
            client.render(page, path)
            warm.append((time.perf_counter() - t0) * 1000)
        out.append((page, cold, statistics.median(warm)))
        assert status == 200
    return out


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo += [c for c, parent in parents.items() if parent == p]
    return total


class KeepAliveClient:
    """A logged-in user on one persistent HTTP/1.1 connection, as a browser keeps it.

    The urllib client of the process tests opens a new connection for every request and parses
    cookies through http.cookiejar: with 50 threads in one Python process that client's own CPU
    competed with the server for the 2 cores and its connection setup was counted in every
    latency. Same requests (login, CSRF header, the render callback payload), lighter client."""

    def __init__(self, base: str, user: str) -> None:
        parts = urllib.parse.urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.cookies: dict[str, str] = {}
        self.con: http.client.HTTPConnection | None = None
        _status, page = self._request("GET", "/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.decode()).group(1)  # type: ignore[union-attr]
        form = urllib.parse.urlencode({"username": user, "password": PASSWORD, "csrf_token": token,
                                       "next": "/"})
        status, _ = self._request("POST", "/login", form.encode(),
                                  {"Content-Type": "application/x-www-form-urlencoded"})
        if status != 302 or "kpi_csrf" not in self.cookies:
            raise RuntimeError(f"login failed: HTTP {status}")

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in (1, 2):
            if self.con is None:
                self.con = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.con.request(method, path, body=body, headers=headers)
                resp = self.con.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # the server closed an idle keep-alive connection: one retry on a new one
                self.con.close()
                self.con = None
                if attempt == 2:
                    raise
                continue
            for cookie in resp.headers.get_all("Set-Cookie") or []:
                name, _, rest = cookie.partition("=")
                value = rest.split(";", 1)[0]
                if value and "expires=thu, 01 jan 1970" not in cookie.lower():
                    self.cookies[name.strip()] = value
                else:
                    self.cookies.pop(name.strip(), None)
            if resp.will_close:
                self.con.close()
                self.con = None
            return resp.status, data
        raise AssertionError("unreachable")

    def render(self, page: str, path: str) -> tuple[int, bytes]:
        body = {"output": f"{page}-body.children", "outputs": {"id": f"{page}-body", "property": "children"},
                "inputs": [{"id": f"{page}-version", "property": "data", "value": None},
                           {"id": f"{page}-filters", "property": "data",
                            "value": {"org": None, "period": "today", "lang": "zh", "path": path}}],
                "state": [], "changedPropIds": []}
        return self._request("POST", "/_dash-update-component", json.dumps(body).encode(),
                             {"Content-Type": "application/json", "X-CSRFToken": self.cookies["kpi_csrf"]})


def is_unavailable(body: bytes | str) -> bool:
    """The page's explicit 'data unavailable' state, however the JSON encoder wrote the text."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    return UNAVAILABLE in text or UNAVAILABLE.encode("unicode_escape").decode() in text


@dataclass
class LoadResult:
    requests: int
    errors: int
    latencies: list[tuple[float, float]]   # (epoch start, ms)
    client_cpu_s: float

    def p(self, q: float) -> float:
        return pct([ms for _t, ms in self.latencies], q)


def log_in(base: str, users: int, client: str = "keepalive") -> list[Any]:
    """One logged-in client per simulated user (before the measured window: each login costs
    the server a password hash)."""
    make = KeepAliveClient if client == "keepalive" else Client
    return [make(base, "bench") for _ in range(users)]


def load(clients: list[Any], seconds: float) -> LoadResult:
    """A thread per logged-in client rendering pages round-robin, 0.5 s think time."""
    lat: list[tuple[float, float]] = []
    errors = [0]
    stop = time.monotonic() + seconds

    def run(i: int, c: Any) -> None:
        k = i
        while time.monotonic() < stop:
            page, path = PAGES[k % len(PAGES)]
            k += 1
            started = time.time()
            t0 = time.perf_counter()
            try:
                status, text = c.render(page, path)
                if status != 200 or is_unavailable(text):
                    errors[0] += 1
            except Exception:
                errors[0] += 1
            lat.append((started, (time.perf_counter() - t0) * 1000))
            time.sleep(0.5)     # think time of a dashboard user clicking around

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(clients)]
    cpu0 = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadResult(len(lat), errors[0], lat, time.process_time() - cpu0)


def publish_windows(worker_log: Path) -> list[tuple[float, float]]:
    """(start, end) epoch seconds of each publish in the worker's log (the line ends the publish)."""
    out = []
    for line in worker_log.read_text().splitlines():
        m = re.match(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}),(\d{3}) .*published snapshot .* in ([\d.]+) s", line)
        if m:
            end = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000
            out.append((end - float(m.group(3)), end))
    return out


def split_by_publish(lat: list[tuple[float, float]], windows: list[tuple[float, float]],
                     after_s: float = 10.0) -> dict[str, list[float]]:
    """Latencies of requests started during a publish, in the `after_s` after one (the web
    processes warm and switch), and the rest."""
    groups: dict[str, list[float]] = {"during publish": [], f"{after_s:.0f} s after": [], "between": []}
    for started, ms in lat:
        if any(a <= started <= b for a, b in windows):
            groups["during publish"].append(ms)
        elif any(b < started <= b + after_s for _a, b in windows):
            groups[f"{after_s:.0f} s after"].append(ms)
        else:
            groups["between"].append(ms)
    return groups


EXPORT_CHILD = """
import resource, sys, time
from pathlib import Path
from kpis.export import arrow_csv_chunks
from kpis.queries import KpiService
from kpis.serving import SnapshotReader
service = KpiService(SnapshotReader(Path(sys.argv[1])))
with service.reader.cursor() as (_v, cur):
    cur.execute("SELECT COUNT(*) FROM detail").fetchone()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
gen = service.query_batches("SELECT * FROM detail", [], 1)
size = 0
for chunk in arrow_csv_chunks(next(gen), gen):
    size += len(chunk)
seconds = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(seconds, before / 1024, after / 1024, size)
"""


def export_million(rows: int = 1_000_000) -> tuple[float, float, float, int]:
    """Stream a detail-shaped query of `rows` rows from a snapshot through the CSV writer, in a
    fresh process: (seconds, peak RSS MB before, peak RSS MB after, bytes)."""
    import duckdb
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    (tmp / "CURRENT").write_text("1\n")
    con = duckdb.connect(str(tmp / "serving_1.duckdb"))
    con.execute(f"CREATE TABLE detail AS SELECT 'W' || i AS item_key, '3340101' || (i % 90) AS org_no, "
                f"CASE WHEN i % 7 = 0 THEN '=cmd' ELSE '西湖网格' || (i % 50) END AS grid_no, "
                f"(i % 2)::VARCHAR AS numerator, '1' AS denominator, i % 11 = 0 AS pending, "
                f"TIMESTAMP '2026-10-01' + INTERVAL (i) SECOND AS at FROM range({rows}) t(i)")
    con.close()
    out = subprocess.run([sys.executable, "-c", EXPORT_CHILD, str(tmp)], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), float(out[2]), int(out[3])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--dev-server", action="store_true", help="Flask dev server instead of gunicorn")
    ap.add_argument("--with-worker", action="store_true", help="run `python app.py worker` meanwhile")
    ap.add_argument("--client", choices=("keepalive", "urllib"), default="keepalive",
                    help="load generator: persistent connections (default) or the older urllib client "
                         "(a new connection per request)")
    ap.add_argument("--skip-export", action="store_true", help="leave out the detail export figures")
    args = ap.parse_args()
    print("command:", "python bench/bench_web.py " + shlex.join(sys.argv[1:]))
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the start")
    proc, base, env = start_web(args.data_dir, gunicorn=not args.dev_server)
    worker = None
    current = args.data_dir / "serving" / "CURRENT"
    try:
        cpu0 = tree_cpu_s(proc.pid)
        print("\npage                 cold ms   cached ms (median of 5)")
        for page, cold, warm in page_times(base):
            print(f"{page:<20} {cold:8.0f}   {warm:8.0f}")
        print(f"web CPU for these renders: {tree_cpu_s(proc.pid) - cpu0:.1f} s")
        if args.with_worker:
            worker_log = open(args.data_dir / "bench_worker.log", "w")
            worker = subprocess.Popen([sys.executable, "app.py", "worker"], cwd=ROOT, env=env,
                                      stdout=worker_log, stderr=subprocess.STDOUT)
        clients = log_in(base, args.users, args.client)
        first = current.read_text().strip()
        load_start = os.getloadavg()[0]
        cpu0, t0 = tree_cpu_s(proc.pid), time.monotonic()
        res = load(clients, args.seconds)
        wall = time.monotonic() - t0
        web_cpu = tree_cpu_s(proc.pid) - cpu0
        worker_cpu = tree_cpu_s(worker.pid) if worker else 0.0
        n = max(res.requests, 1)
        print(f"\n{args.users} users for {args.seconds:.0f} s{' while the worker runs' if worker else ''} "
              f"({args.client} client): {res.requests} requests, {res.errors} errors, "
              f"p50 {res.p(50):.0f} ms, p95 {res.p(95):.0f} ms, p99 {res.p(99):.0f} ms")
        print(f"snapshot versions: {first} at the start, {current.read_text().strip()} at the end; "
              f"web CPU {web_cpu:.0f} s in {wall:.0f} s ({web_cpu / n * 1000:.1f} ms per request)"
              + (f", worker CPU {worker_cpu:.0f} s" if worker else "")
              + f"; client CPU {res.client_cpu_s:.0f} s ({res.client_cpu_s / n * 1000:.1f} ms per request)"
              + f"; load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    finally:
        for child in (worker, proc):
            if child is not None:
                child.terminate()
        for child in (worker, proc):
            if child is not None:
                try:
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    child.kill()
    if worker is not None:
        published = [line.split("kpis.publish INFO ")[-1].strip() for line in
                     (args.data_dir / "bench_worker.log").read_text().splitlines() if "published snapshot" in line]
        print("worker:", "; ".join(published) or "no publish during the run")
        windows = publish_windows(args.data_dir / "bench_worker.log")
        for name, values in split_by_publish(res.latencies, windows).items():
            if values:
                print(f"  requests started {name}: {len(values)}, p50 {pct(values, 50):.0f} ms, "
                      f"p95 {pct(values, 95):.0f} ms, max {max(values):.0f} ms")
    for rows in () if args.skip_export else (100_000, 1_000_000):
        seconds, before, after, size = export_million(rows)
        print(f"{rows:,}-row detail export: {seconds:.2f} s, {size / 1e6:.0f} MB of CSV, "
              f"peak RSS {before:.0f} MB -> {after:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
