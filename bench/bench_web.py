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
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser.conftest import free_port, wait_http, web_env  # noqa: E402
from tests.processes.test_worker_web import PASSWORD, Client  # noqa: E402

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


def load(base: str, users: int, seconds: float) -> tuple[int, int, float, float]:
    """`users` threads, each logged in, rendering pages round-robin; (requests, errors, p50, p95)."""
    clients = [Client(base, "bench") for _ in range(users)]
    lat: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds

    def run(i: int, c: Client) -> None:
        k = i
        while time.monotonic() < stop:
            page, path = PAGES[k % len(PAGES)]
            k += 1
            t0 = time.perf_counter()
            try:
                status, text = c.render(page, path)
                if status != 200 or "数据暂不可用" in text:
                    errors[0] += 1
            except Exception:
                errors[0] += 1
            lat.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.5)     # think time of a dashboard user clicking around

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(lat), errors[0], pct(lat, 50), pct(lat, 95)


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
    args = ap.parse_args()
    print("command:", "python bench/bench_web.py " + shlex.join(sys.argv[1:]))
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
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
        first = current.read_text().strip()
        cpu0, t0 = tree_cpu_s(proc.pid), time.monotonic()
        n, errors, p50, p95 = load(base, args.users, args.seconds)
        wall = time.monotonic() - t0
        web_cpu = tree_cpu_s(proc.pid) - cpu0
        worker_cpu = tree_cpu_s(worker.pid) if worker else 0.0
        print(f"\n{args.users} users for {args.seconds:.0f} s{' while the worker runs' if worker else ''}: "
              f"{n} requests, {errors} errors, p50 {p50:.0f} ms, p95 {p95:.0f} ms")
        print(f"snapshot versions: {first} at the start, {current.read_text().strip()} at the end; "
              f"web CPU {web_cpu:.0f} s in {wall:.0f} s" + (f", worker CPU {worker_cpu:.0f} s" if worker else "")
              + f"; load average at the end {os.getloadavg()[0]:.1f}")
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
    for rows in (100_000, 1_000_000):
        seconds, before, after, size = export_million(rows)
        print(f"{rows:,}-row detail export: {seconds:.2f} s, {size / 1e6:.0f} MB of CSV, "
              f"peak RSS {before:.0f} MB -> {after:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
