"""ETL speed: the floor (raw scan of the sources), the initial load, and incremental passes.

Usage:
  python bench/bench_etl.py [--scale county] [--days 30] [--dir DIR] [--kind scanner|sqlalchemy]
                            [--minutes 3] [--sources-from-env] [--staging TABLE]

DIR holds the simulator's SQLite sources (built there once when absent; a copy of a prebuilt
build works too). `--sources-from-env` takes SOURCE_*_URL from the environment instead
(PostgreSQL sources built with `python -m simulator build`; the simulator state then lives in
DATA_DIR, which must be set too).

Figures, each printed with wall time, CPU seconds of this process and the load average:
1. floor: every contract table read through the same scanner statement the full load uses
   (`CREATE TABLE AS SELECT <columns> FROM <source>`, no typing, no checks) into an in-memory
   DuckDB with the same threads: the raw scan speed of ARCHITECTURE.md, side by side;
2. initial load end to end (`run_pass` into a fresh warehouse), rows/s and its ratio to the floor;
3. incremental passes: the simulator's live mode advances the sources by one simulated minute,
   then one `run_pass` is timed (repeated `--minutes` times). With `--realtime` (the default for
   `--sources-from-env`) the simulator first catches up with the wall clock and each pass then
   follows one real minute: a server source's clock is its `now()`, so rows stamped at a
   simulated time behind it would fall before the window. The sources are changed by this;
   rerun on a fresh copy to repeat the figures exactly.
`--incremental-only` keeps the warehouse already loaded in DIR/data_<kind> (a copy of a data
directory whose warehouse.duckdb is moved there) and runs only 3., so that a city figure does not
wait for a fresh initial load each time.
`--staging TABLE` instead times only the typing and checks of one table's full load, from an
in-memory copy of its raw rows (no scan, no insert), three rounds: the cast alone, then the
loader's staging statement (`etl.load._batch_sql`); the difference is what the checks cost.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import duckdb  # noqa: E402

from etl.contract import load_contract  # noqa: E402
from etl.pipeline import run_pass  # noqa: E402
from etl.settings import SOURCE_NAMES, load_settings  # noqa: E402
from etl.sources import open_source  # noqa: E402
from etl.warehouse import Warehouse  # noqa: E402

THREADS = 2


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Timer:
    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.monotonic(), cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.monotonic() - self.wall, cpu_s() - self.cpu
        self.load = load_avg()

    def __str__(self) -> str:
        return f"{self.wall:.2f} s wall, {self.cpu:.2f} s CPU, load {self.load}"


def build(root: Path, scale: str, days: int) -> float:
    import simulator
    urls = {s: f"sqlite:///{root / f'source_{s}.db'}" for s in SOURCE_NAMES}
    if all((root / f"source_{s}.db").exists() for s in SOURCE_NAMES):
        return 0.0
    t = time.monotonic()
    simulator.build(urls, scale=scale, seed=1, days=days, side=root)
    return time.monotonic() - t


def floor(settings, ext_dir: Path) -> tuple[int, Timer]:
    """Raw scan of every contract table through the full load's own read statement."""
    con = duckdb.connect(config={"threads": THREADS, "autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False})
    contract = load_contract()
    rows = 0
    far = datetime(9999, 1, 1)
    with Timer() as t:
        for name in SOURCE_NAMES:
            source = open_source(name, settings.source_url(name), 600, settings.timezone)
            source.open(con, ext_dir)
            for table in contract.system_tables(name):
                sql = source.select_sql(table, None, far)
                rows += con.execute(f"CREATE OR REPLACE TABLE scan AS {sql}").fetchone()[0]
            con.execute("DROP TABLE IF EXISTS scan")
            source.close(con)
    con.close()
    return rows, t


def staging(settings, ext_dir: Path, table_name: str) -> None:
    """Typing alone vs the loader's typing + checks, from the raw rows held in memory."""
    from etl.load import _batch_sql, _typed
    from etl.schema import quote_ident
    table = load_contract().tables[table_name]
    con = duckdb.connect(config={"threads": THREADS, "autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False})
    source = open_source(table.system, settings.source_url(table.system), 600, settings.timezone)
    source.open(con, ext_dir)
    n = con.execute(f"CREATE TEMP TABLE _r AS {source.select_sql(table, None, datetime(9999, 1, 1))}").fetchone()[0]
    typed = ", ".join(f"{_typed(c)} AS {quote_ident(c.name)}" for c in table.columns)
    for i in range(3):
        with Timer() as a:
            con.execute(f"CREATE OR REPLACE TEMP TABLE _t AS SELECT {typed} FROM _r r")
        with Timer() as b:
            con.execute(_batch_sql(table, "SELECT * FROM _r", dedupe=False))
        print(f"staging {table_name} ({n:,} rows), round {i + 1}: cast only {a}; typing + checks {b}")
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="county", choices=("small", "county", "city"))
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--kind", default="scanner", choices=("scanner", "sqlalchemy"))
    ap.add_argument("--minutes", type=int, default=3)
    ap.add_argument("--sources-from-env", action="store_true")
    ap.add_argument("--realtime", action="store_true", help="follow the wall clock (see above)")
    ap.add_argument("--parallel", default="0", choices=("0", "1"),
                    help="ETL_PARALLEL: 1 = cs + dist beside meter after mis, 0 = one after another (default)")
    ap.add_argument("--meter-reread-s", default="21600", metavar="S",
                    help="ETL_METER_REREAD_S: 0 = re-read the 26 h metering overlap every pass (no count guard)")
    ap.add_argument("--meter-reread-rows", default="50000", metavar="N",
                    help="ETL_METER_REREAD_ROWS: most rows of that overlap re-read in one pass")
    ap.add_argument("--incremental-only", action="store_true",
                    help="keep the warehouse already loaded in DIR/data_<kind> (no floor, no initial load)")
    ap.add_argument("--staging", metavar="TABLE", help="time only the typing and checks of TABLE (see above)")
    args = ap.parse_args()
    args.realtime = args.realtime or args.sources_from_env
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench_etl_"))
    root.mkdir(parents=True, exist_ok=True)
    if args.sources_from_env:
        urls = {s: os.environ[f"SOURCE_{s.upper()}_URL"] for s in SOURCE_NAMES}
        side = Path(os.environ["DATA_DIR"])
        built = 0.0
    else:
        built = build(root, args.scale, args.days)
        urls = {s: f"sqlite:///{root / f'source_{s}.db'}" for s in SOURCE_NAMES}
        side = root
    env = {"DATA_DIR": str(root / f"data_{args.kind}"), "ETL_PARALLEL": args.parallel,
           "ETL_METER_REREAD_S": args.meter_reread_s, "ETL_METER_REREAD_ROWS": args.meter_reread_rows,
           **{f"SOURCE_{s.upper()}_URL": u for s, u in urls.items()}}
    settings = load_settings(env)
    if args.incremental_only:
        if not settings.warehouse_path.exists():
            sys.exit(f"--incremental-only: no warehouse at {settings.warehouse_path}")
    else:
        for p in settings.warehouse_path.parent.glob("warehouse.duckdb*"):
            p.unlink()
    force = "sqlalchemy" if args.kind == "sqlalchemy" else None
    repro = ("python bench/bench_etl.py" + (" --sources-from-env" if args.sources_from_env else
                                            f" --scale {args.scale} --days {args.days} --dir DIR")
             + f" --kind {args.kind} --minutes {args.minutes} --parallel {args.parallel}"
             + f" --meter-reread-s {args.meter_reread_s} --meter-reread-rows {args.meter_reread_rows}"
             + (" --realtime" if args.realtime else "")
             + (" --incremental-only" if args.incremental_only else "")
             + (f" --staging {args.staging}" if args.staging else ""))
    print(f"sources: {', '.join(sorted({u.split(':')[0] for u in urls.values()}))}; "
          f"build {built:.1f} s (0 = reused); {os.cpu_count()} cores, threads={THREADS}")
    print(f"reproduce: {repro}")

    if args.staging:
        staging(settings, settings.warehouse_path.parent / "duckdb_extensions", args.staging)
        return
    with Warehouse(settings.warehouse_path, threads=THREADS, memory_limit="4GB") as wh:
        wh.migrate()
        if not args.incremental_only:
            initial(args, settings, wh, force)
        if args.minutes:
            incremental(args, settings, wh, force, urls, side)


def initial(args: argparse.Namespace, settings, wh: Warehouse, force: str | None) -> None:
    floor_rows, ft = floor(settings, settings.warehouse_path.parent / "duckdb_extensions")
    print(f"floor, raw scanner read of every table: {floor_rows:,} rows in {ft} "
          f"= {floor_rows / ft.wall:,.0f} rows/s")
    with Timer() as t:
        r = run_pass(settings, wh, force_kind=force)
    rows = sum(x.rows_read for s in r for x in s.tables)
    print(f"initial load [{args.kind}]: {rows:,} rows in {t} = {rows / t.wall:,.0f} rows/s "
          f"= {(rows / t.wall) / (floor_rows / ft.wall):.2f} x the floor's rate, ok={r.ok}")
    slow = sorted(((x.duration_ms, x.table_name, x.rows_read) for s in r for x in s.tables), reverse=True)[:4]
    print("  slowest tables: " + ", ".join(f"{n} {ms} ms ({rr:,} rows)" for ms, n, rr in slow))
    print("  per source (sum of its tables): " + ", ".join(
        f"{s.source} {sum(x.duration_ms for x in s.tables) / 1000:.1f} s" for s in r))


def incremental(args: argparse.Namespace, settings, wh: Warehouse, force: str | None, urls: dict[str, str],
                side: Path) -> None:
    from simulator.live import Live, catch_up, wall_clock
    live = Live(urls, side=side)
    if args.realtime:
        with Timer() as t:
            caught = catch_up(live)
        print(f"  simulator caught up {caught:,} simulated seconds with the wall clock in {t}")
    else:
        live.step(60)
    with Timer() as t:
        r = run_pass(settings, wh, force_kind=force)       # the backlog of the catch-up (or first step)
    print(f"  first pass (backlog): {t}, ok={r.ok}")
    tick = time.monotonic()
    for i in range(args.minutes):
        if args.realtime:       # ETL_INTERVAL_S = 60: the sources moved one real minute
            tick += 60
            time.sleep(max(0.0, tick - time.monotonic()))
            written = sum(live.step(max(1, wall_clock() - live.state.clock)).values())
        else:
            written = sum(live.step(60).values())
        with Timer() as t:
            r = run_pass(settings, wh, force_kind=force)
        read = sum(x.rows_read for s in r for x in s.tables)
        merged = sum(x.rows_merged for s in r for x in s.tables)
        busy = sum(1 for s in r for x in s.tables if x.rows_read)
        print(f"incremental pass {i + 1} [{args.kind}] after one simulated minute ({written:,} rows "
              f"written): {t}; {busy} tables with rows in their window, {read:,} rows in the windows "
              f"(overlap incl.), {merged:,} merged, ok={r.ok}")
        for s in r:
            if not s.ok:
                print(f"  source {s.source} failed: {s.error}")
        print("  per source: " + ", ".join(
            f"{s.source} {sum(x.duration_ms for x in s.tables) / 1000:.2f} s" for s in r))
        slow = sorted(((x.duration_ms, x.table_name, x.rows_read) for s in r for x in s.tables), reverse=True)[:3]
        print("  slowest tables: " + ", ".join(f"{n} {ms} ms ({rr:,} rows)" for ms, n, rr in slow))


if __name__ == "__main__":
    main()
