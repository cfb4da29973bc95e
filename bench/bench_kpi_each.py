"""Each KPI alone: where a full evaluation's time goes, KPI by KPI, and what the on-demand
prelude tables cost to build.

Usage: python bench/bench_kpi_each.py --data-dir DIR [--kpi 'billing.*,customer.tq_*'] [--top 40]
                                      [--periods full|minute] [--build k_bill,k_settle_mp]
                                      [--together N]
DIR holds warehouse.duckdb and simulator_state.json as `app.py worker` leaves them; the run
writes into the warehouse (prelude tables, temp results): use a copy.
--periods full: today, its hours, the current and the last closed month (bench_kpis (a));
minute: today, its hours and the current month (what an ordinary worker pass evaluates).
Each KPI is computed alone (kpis.batch.compute_plan), so the sum is more than a batched
evaluation: each pays its own roll-up. Prints wall and CPU seconds per KPI, slowest first.
--together N: instead, the chosen KPIs as one plan, N times (what a pass does with them: shared
subqueries computed once per statement, one roll-up), and a digest of the result rows, so that
two versions of the code can be compared for time and values on the same warehouse.
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kpis.batch import compute_plan  # noqa: E402
from kpis.evaluate import ensure_schema, on_demand_tables, periods_for  # noqa: E402
from kpis.periods import day, hours_of, month, previous_month  # noqa: E402
from kpis.prelude import apply_prelude, statements  # noqa: E402
from kpis.registry import load_registry  # noqa: E402


def load() -> str:
    return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--kpi", default="*", help="comma-separated id patterns")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--periods", choices=("full", "minute"), default="full")
    ap.add_argument("--build", default="", help="on-demand tables to time a build of, comma-separated")
    ap.add_argument("--together", type=int, default=0, help="time the KPIs as one plan, N runs")
    args = ap.parse_args()
    from simulator import state
    con = duckdb.connect(str(args.data_dir / "warehouse.duckdb"))
    con.execute("SET threads = 2")
    registry = load_registry()
    ensure_schema(con)
    for name in filter(None, args.build.split(",")):
        stmt = next(s for s in statements() if s.startswith(f"CREATE OR REPLACE TABLE {name} AS"))
        start = load()
        t, c = time.perf_counter(), time.process_time()
        con.execute(stmt)
        rows = con.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0]
        print(f"build {name}: {time.perf_counter() - t:.2f} s wall, {time.process_time() - c:.2f} s CPU, "
              f"{rows} rows; {start}")
    chosen = [k for k in registry.kpis.values()
              if any(fnmatch.fnmatch(k.id, p) for p in args.kpi.split(","))]
    t = time.perf_counter()
    apply_prelude(con, needed=on_demand_tables(chosen))
    print(f"prelude with the on-demand tables these KPIs read: {time.perf_counter() - t:.2f} s wall")
    as_of = datetime(2000, 1, 1) + timedelta(seconds=state.load(args.data_dir).clock - 1)
    today, cur = day(as_of.date()), month(as_of.year, as_of.month)
    requested = sorted({today, cur, *hours_of(today)}
                       | ({previous_month(cur)} if args.periods == "full" else set()))
    if args.together:
        plan = [(k, periods_for(k, requested, as_of)) for k in chosen]
        for _ in range(args.together):
            errors = {}
            start = load()
            t, c = time.perf_counter(), time.process_time()
            compute_plan(con, plan, as_of, errors)
            print(f"{len(chosen)} KPIs as one plan, periods {args.periods}: {time.perf_counter() - t:.2f} s wall, "
                  f"{time.process_time() - c:.2f} s CPU, errors {len(errors)}; {start}")
        digest = con.execute("SELECT COUNT(*), md5(string_agg(concat_ws('|', kpi_id, org_no, grain, "
                             "period_start, value, numerator, denominator, status), ';' ORDER BY kpi_id, "
                             "org_no, grain, period_start)) FROM _result").fetchone()
        print(f"result rows {digest[0]}, digest {digest[1]}")
        print(f"reproduce: python bench/bench_kpi_each.py --data-dir DIR --kpi '{args.kpi}' "
              f"--periods {args.periods} --together {args.together}")
        return
    rows = []
    start = load()
    for k in chosen:
        errors: dict[str, str] = {}
        t, c = time.perf_counter(), time.process_time()
        compute_plan(con, [(k, periods_for(k, requested, as_of))], as_of, errors)
        rows.append((time.perf_counter() - t, time.process_time() - c, k.id, errors.get(k.id, "")))
    rows.sort(reverse=True)
    print(f"{len(rows)} KPIs, periods {args.periods}, as_of {as_of}: {sum(r[0] for r in rows):.2f} s wall, "
          f"{sum(r[1] for r in rows):.2f} s CPU in all; {start} at the start, {load()} at the end")
    print("   wall     CPU  KPI")
    for wall, cpu, kid, err in rows[:args.top]:
        print(f"{wall:7.3f} {cpu:7.3f}  {kid}{'  ERROR ' + err.splitlines()[0][:120] if err else ''}")
    print(f"reproduce: python bench/bench_kpi_each.py --data-dir DIR --kpi '{args.kpi}' "
          f"--periods {args.periods}" + (f" --build {args.build}" if args.build else ""))


if __name__ == "__main__":
    main()
