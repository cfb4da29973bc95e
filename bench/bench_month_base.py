"""What a month base saves at the end of a month (kpis/day_store.py, month bases).

Usage: python bench/bench_month_base.py --data-dir DIR [--day 2026-12-03] [--days 30]
DIR holds a warehouse.duckdb whose day store has rows (after `app.py worker` or a bench's
passes); it is opened read-only. The stored rows of one day are repeated for --days days of a
synthetic month in memory; printed: the best of 5 of summing the whole month per KPI, org and
grid (what every pass did before month bases) against summing a base of all days but the last
with the last day (what a pass does now).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import duckdb

AGG = "SUM(num) AS num, SUM(den) AS den, SUM(sample) AS sm, BOOL_OR(missing) AS missing"


def best(con: duckdb.DuckDBPyConnection, sql: str, n: int = 5) -> float:
    out = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        con.execute(sql)
        out = min(out, time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--day", default=None, help="the stored day repeated (default: the fullest)")
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    con = duckdb.connect(str(args.data_dir / "warehouse.duckdb"), read_only=True)
    con.execute("SET threads = 2")
    day = args.day or con.execute("SELECT day FROM kpi_day_fact GROUP BY day "
                                  "ORDER BY COUNT(*) DESC LIMIT 1").fetchone()[0]
    con.execute("""CREATE TEMP TABLE f AS
                   SELECT kpi_id, CAST(i AS INTEGER) AS d, org_no, grid_no, num, den, sample, missing
                   FROM kpi_day_fact, range($n) r(i) WHERE day = CAST($day AS DATE)""",
                {"n": args.days, "day": day})
    rows = con.execute("SELECT COUNT(*) FROM f").fetchone()[0]
    last = args.days - 1
    whole = best(con, f"CREATE OR REPLACE TEMP TABLE o AS SELECT kpi_id, org_no, grid_no, {AGG} "
                      "FROM f GROUP BY ALL")
    con.execute(f"CREATE TEMP TABLE b AS SELECT kpi_id, org_no, grid_no, {AGG} FROM f "
                f"WHERE d < {last} GROUP BY ALL")
    based = best(con, f"""CREATE OR REPLACE TEMP TABLE o2 AS
                         SELECT kpi_id, org_no, grid_no, SUM(num), SUM(den), SUM(sm), BOOL_OR(missing)
                         FROM (SELECT * FROM b UNION ALL
                               SELECT kpi_id, org_no, grid_no, num, den, sample, missing FROM f
                               WHERE d = {last})
                         GROUP BY ALL""")
    print(f"{args.days} days of the rows stored for {day} ({rows} rows): month summed from its days "
          f"{whole:.3f} s; from a base of {last} days and the last day {based:.3f} s")
    print(f"reproduce: python bench/bench_month_base.py --data-dir {args.data_dir} --day {day} "
          f"--days {args.days}")


if __name__ == "__main__":
    main()
