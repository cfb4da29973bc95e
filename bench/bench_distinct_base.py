"""What reading the repeat callers' month base per day saves (kpis/distinct_month.py).

Usage: python bench/bench_distinct_base.py --data-dir DIR [--rounds 5]
DIR holds a warehouse.duckdb with calls (a city build after `etl run --once`, or a bench's
directory); it is copied to a temporary folder, DIR is only read. as_of is the start of the
newest call's day; the month base of call.repeat_caller_rate_24h holds the month's days before
it. Printed, best of --rounds each:
  (a) the base as it was built before session 26, the month before today as one period
      (every pass after midnight while yesterday's calls still changed, and the first pass of
      each day);
  (b) the base read whole per day (a new month, a changed definition, the older layout);
  (c) yesterday alone read again (a dirty date of yesterday, or the day's first pass), the
      month's counts counted again over every day's keys.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_kpis import load  # noqa: E402
from kpis import day_store, distinct_month, fact_diff  # noqa: E402
from kpis.evaluate import ensure_schema  # noqa: E402
from kpis.periods import Period, month  # noqa: E402
from kpis.prelude import apply_prelude  # noqa: E402
from kpis.registry import load_registry  # noqa: E402

KPI = "call.repeat_caller_rate_24h"


def best(rounds: int, run) -> float:
    out = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        run()
        out = min(out, time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    k = load_registry().get(KPI)
    with tempfile.TemporaryDirectory(prefix="distinct_base_") as tmp:
        path = Path(tmp) / "warehouse.duckdb"
        shutil.copy2(args.data_dir / "warehouse.duckdb", path)
        con = duckdb.connect(str(path))
        con.execute("SET threads = 2")
        ensure_schema(con)
        apply_prelude(con, needed=())
        newest = con.execute("SELECT MAX(answer_time) FROM cs_call").fetchone()[0]
        today = datetime.combine(newest.date(), datetime.min.time())
        m = month(today.year, today.month)
        yesterday = (today - timedelta(days=1)).date()
        h, tree = day_store.facts_hash(k), fact_diff.tree_signature(con)
        calls = con.execute("SELECT COUNT(*) FROM cs_call WHERE answer_time >= $a AND answer_time < $b",
                            {"a": m.ws, "b": today}).fetchone()[0]
        print(f"{datetime.now():%Y-%m-%d %H:%M}, {load()}; today {today:%Y-%m-%d}, "
              f"{(today - m.ws).days} days of the month before it, {calls} calls in them")

        # the statements of the earlier _build, into tables of the same shape
        con.execute("CREATE TABLE bench_old_key AS SELECT kpi_id, month, unit_no, is_num, k "
                    "FROM kpi_distinct_key LIMIT 0")
        con.execute("CREATE TABLE bench_old_count AS SELECT * FROM kpi_distinct_count LIMIT 0")

        def one_period() -> None:
            distinct_month._load(con, [Period(m.grain, m.ws, today)], today)
            con.execute("BEGIN TRANSACTION")
            con.execute("DELETE FROM bench_old_key WHERE kpi_id = $k", {"k": KPI})
            con.execute("DELETE FROM bench_old_count WHERE kpi_id = $k", {"k": KPI})
            con.execute(f"INSERT INTO bench_old_key SELECT $k, $m, * FROM ({distinct_month._keys_sql(k)})",
                        {"k": KPI, "m": m.ws.date()})
            con.execute("""INSERT INTO bench_old_count
                           SELECT kpi_id, month, unit_no, COUNT(DISTINCT k) FILTER (WHERE is_num),
                                  COUNT(DISTINCT k) FILTER (WHERE NOT is_num)
                           FROM bench_old_key WHERE kpi_id = $k GROUP BY kpi_id, month, unit_no""",
                        {"k": KPI})
            con.execute("COMMIT")

        def whole() -> None:
            distinct_month._build(con, k, m, today, None, h, tree, 1, datetime.now())

        def yesterday_only() -> None:
            distinct_month._build(con, k, m, today, {yesterday}, h, tree, 1, datetime.now())

        a = best(args.rounds, one_period)
        b = best(args.rounds, whole)
        c = best(args.rounds, yesterday_only)
        keys = con.execute("SELECT COUNT(*) FROM kpi_distinct_key WHERE kpi_id = $k", {"k": KPI}).fetchone()[0]
        old_keys = con.execute("SELECT COUNT(*) FROM bench_old_key").fetchone()[0]
        con.close()
    print(f"(a) the month before today as one period (before): {a:.3f} s ({old_keys} key rows)")
    print(f"(b) read whole, per day: {b:.3f} s ({keys} key rows)")
    print(f"(c) yesterday alone, the counts again: {c:.3f} s; {load()} at the end")
    print(f"reproduce: python bench/bench_distinct_base.py --data-dir {args.data_dir} --rounds {args.rounds}")


if __name__ == "__main__":
    main()
