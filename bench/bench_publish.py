"""The worker's publish (kpis.publish.publish) on a copy of a warehouse: what it adds to a cycle.

The worker publishes a serving snapshot after every cycle, incrementally: the spare (the newest
pruned version's file) or else a copy of the previous file is brought up to date; the nightly
job rebuilds it from scratch. Both grow with kpi_value's history and the alarm tables;
`bench_value_history.py --days N` and `bench_alarm_step.py` give a copy those.

    python bench/bench_publish.py --data-dir COPY [--rounds 7] [--touch 10000] [--etl-rows 500] [--top N]

The first publish is full. Each later round first marks `--touch` of the newest kpi_value rows
as computed now (what a minute's store leaves for the publish to carry: the changed rows and the
snapshots) and, with `--etl-rows`, that many rows of each of ETL_TABLES as updated by a new ETL
run (a minute's merge; `--city-minute`: the rows a city pass merges per table, CITY_MINUTE),
then publishes. With 3 versions kept, rounds 1-3 copy the previous file
(there is no spare yet: what every round did before session 20) and rounds 4 on are written
into the spare. Printed per publish: wall and CPU time, the file copy, the statements (with
--top, the slowest), the snapshot's size.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kpis import publish as pub  # noqa: E402


ETL_TABLES = ("cs_work_order", "cs_wo_step", "cs_call", "dist_repair_task", "mis_customer")
# Rows merged per table by a city ETL pass after one live minute (bench_etl.py --scale city,
# session 20, etl_run of 4 passes): every terminal's heartbeat, a few hundred business rows.
CITY_MINUTE = {"meter_terminal": 87584, "mis_bill": 190, "mis_payment": 190, "mis_rcved_flow": 190,
               "cs_wo_step": 115, "cs_work_order": 90, "cs_visit": 40, "meter_collection_daily": 30,
               "dist_repair_task": 25, "cs_call": 15, "cs_agent_state": 18, "cs_queue_snapshot": 12}


def merge_minute(con: duckdb.DuckDBPyConnection, rows: dict[str, int]) -> None:
    """What an ETL run leaves: rows[table] rows of each table updated a minute after the newest,
    and the run's etl_run rows (the window the publish refreshes from). The rows are the most
    recently updated ones, as a live minute's are (today's orders, the newest collection day)."""
    run = con.execute("SELECT COALESCE(MAX(run_id), 0) + 1 FROM etl_run").fetchone()[0]
    for table, n in rows.items():
        low = con.execute(f"SELECT MAX(updated_at) FROM {table}").fetchone()[0]
        con.execute(f"""UPDATE {table} SET updated_at = $low::TIMESTAMP + INTERVAL 1 MINUTE
                        WHERE rowid IN (SELECT rowid FROM {table} ORDER BY updated_at DESC LIMIT {n})""",
                    {"low": low})
        con.execute("""INSERT INTO etl_run BY NAME SELECT $run AS run_id, 'bench' AS source, $t AS table_name,
                       $low::TIMESTAMP AS window_low, $low::TIMESTAMP + INTERVAL 1 MINUTE AS window_high,
                       $n AS rows_read, $n AS rows_merged, 'ok' AS status, now()::TIMESTAMP AS started_at""",
                    {"run": run, "t": table, "low": low, "n": n})


class Timed:
    """The worker's connection, its statements' time summed (the publish's SQL)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con, self.seconds, self.each = con, 0.0, {}

    def execute(self, sql, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self._con.execute(sql, *args, **kwargs)
        finally:
            took = time.perf_counter() - t
            self.seconds += took
            head = " ".join(sql.split())[:90]
            self.each[head] = self.each.get(head, 0.0) + took

    def __getattr__(self, name):
        return getattr(self._con, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="a copy: the run writes into it")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--touch", type=int, default=10000, help="rows marked computed before each round")
    ap.add_argument("--etl-rows", type=int, default=0,
                    help="rows of each of ETL_TABLES marked merged by a new run before each round")
    ap.add_argument("--city-minute", action="store_true",
                    help="instead of --etl-rows: the rows a city ETL pass merges per table (CITY_MINUTE)")
    ap.add_argument("--top", type=int, default=0, help="print the N slowest statements of each publish")
    ap.add_argument("--serving-dir", type=Path, help="default: a temporary directory beside the copy")
    args = ap.parse_args()
    con = duckdb.connect(str(args.data_dir / "warehouse.duckdb"))
    con.execute("SET threads = 2")
    con.execute("SET memory_limit = '8GB'")
    rows = con.execute("SELECT COUNT(*) FROM kpi_value").fetchone()[0]
    serving = args.serving_dir or Path(tempfile.mkdtemp(prefix="serving_", dir=args.data_dir))
    print(f"{datetime.now():%Y-%m-%d %H:%M} duckdb {duckdb.__version__}; kpi_value {rows:,} rows")
    copy_s = [0.0]
    real_copy = shutil.copyfile

    def timed_copy(src, dst, *a, **k):
        t = time.perf_counter()
        try:
            return real_copy(src, dst, *a, **k)
        finally:
            copy_s[0] += time.perf_counter() - t

    pub.shutil.copyfile = timed_copy
    walls = []
    try:
        for i in range(args.rounds + 1):
            if i:
                con.execute("""UPDATE kpi_value SET computed_at = now()::TIMESTAMP
                               WHERE rowid IN (SELECT rowid FROM kpi_value
                                               ORDER BY computed_at DESC LIMIT $n)""", {"n": args.touch})
                if args.city_minute:
                    merge_minute(con, CITY_MINUTE)
                elif args.etl_rows:
                    merge_minute(con, dict.fromkeys(ETL_TABLES, args.etl_rows))
            timed, copy_s[0] = Timed(con), 0.0
            t, c = time.perf_counter(), time.process_time()
            res = pub.publish(timed, serving, full_every=10**9 if i else 1)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            size = res.path.stat().st_size / 2**20
            kind = "full" if i == 0 else f"incremental {i}" + (" (on the spare)" if res.recycled else "")
            if i:
                walls.append(wall)
            print(f"{kind}: {wall:.2f} s wall, {cpu:.2f} s CPU; file copy {copy_s[0]:.2f} s, "
                  f"statements {timed.seconds:.2f} s; snapshot {size:,.0f} MB")
            if args.top:
                for head, took in sorted(timed.each.items(), key=lambda x: -x[1])[:args.top]:
                    print(f"    {took:7.3f}  {head}")
    finally:
        pub.shutil.copyfile = real_copy
        if args.serving_dir is None:
            shutil.rmtree(serving, ignore_errors=True)
    if walls:
        print(f"incremental: median {statistics.median(walls):.2f} s")
    print(f"reproduce: python bench/bench_publish.py --data-dir COPY --rounds {args.rounds} --touch {args.touch} "
          f"--etl-rows {args.etl_rows}" + (" --city-minute" if args.city_minute else ""))


if __name__ == "__main__":
    main()
