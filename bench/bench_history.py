"""What a long history costs the minute: KPIs' facts on a warehouse and on a copy aged with older
history, each statement timed alone.

Usage: python bench/bench_history.py --data-dir DIR [--copies 20] [--kpi 'order.*,repair.satisfaction']
                                     [--reps 5]
DIR holds warehouse.duckdb and simulator_state.json as `python -m etl run --once` leaves them
(read only: the run works on two copies in a temporary folder beside it).

The city builds hold days, not years, so a statement that reads a table's whole history looks
cheap in the other benches. Here the aged copy gets --copies older copies of the follow-up
visits (cs_visit) and work-order steps (cs_wo_step), each shifted back by the build's length
again (20 copies of a 10-day build: 200 days more), with new keys: rows of orders archived long
ago, which no period's population holds, so every KPI's values stay as they were (checked: a
digest of each KPI's facts on both copies). Each KPI's facts are computed alone for the periods
of an ordinary pass (today and the month to date at the simulator's clock minus 90 minutes, as
bench_kpi_minute.py), --reps times; the minimum is printed for both warehouses.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_kpis import sim_clock  # noqa: E402
from kpis.batch import Bounds, _bounded, load_periods  # noqa: E402
from kpis.evaluate import on_demand_tables, periods_for  # noqa: E402
from kpis.periods import day, month  # noqa: E402
from kpis.prelude import apply_prelude, refresh_on_demand  # noqa: E402
from kpis.registry import load_registry  # noqa: E402

AGED = ("cs_visit", "cs_wo_step")
# the key and the time columns shifted in each aged table
SHIFT = {"cs_visit": ("visit_id", ("plan_time", "visit_time", "created_at", "updated_at")),
         "cs_wo_step": ("step_id", ("step_time", "created_at", "updated_at"))}


def age(con: duckdb.DuckDBPyConnection, copies: int, span_days: int) -> None:
    for table, (key, times) in SHIFT.items():
        cols = [r[0] for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = $t ORDER BY column_index",
            {"t": table}).fetchall()]
        for k in range(copies, 0, -1):      # oldest first, as a history is loaded
            off = f"INTERVAL {span_days * k} DAY"
            exprs = [f"'H{k}-' || {c}" if c in (key, "wo_no") else f"{c} - {off}" if c in times else c
                     for c in cols]
            con.execute(f"INSERT INTO {table} SELECT {', '.join(exprs)} FROM {table} "
                        f"WHERE {key} NOT LIKE 'H%' ORDER BY {times[0]}")
    con.execute("CHECKPOINT")


def timed(con: duckdb.DuckDBPyConnection, sql: str, reps: int) -> tuple[float, tuple]:
    best, digest = float("inf"), ()
    for _ in range(reps):
        t = time.perf_counter()
        digest = con.execute(f"""SELECT COUNT(*), SUM(num), SUM(den), hash(list(x ORDER BY x)) FROM (
                                    SELECT num, den, CAST((pid, org_no, grid_no, CAST(item_key AS VARCHAR),
                                                           num, den) AS VARCHAR) AS x FROM ({sql}))""").fetchone()
        best = min(best, time.perf_counter() - t)
    return best, digest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--kpi", default="order.callback_completion_rate,order.complaint_contact_ontime_rate,"
                                     "order.callback_satisfaction,order.complaint_callback_satisfaction,"
                                     "repair.satisfaction")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    registry = load_registry()
    patterns = args.kpi.split(",")
    kpis = [k for k in registry.kpis.values() if any(fnmatch.fnmatchcase(k.id, p) for p in patterns)]
    as_of = sim_clock(args.data_dir) - timedelta(minutes=90)
    asked = [day(as_of.date()), month(as_of.year, as_of.month)]
    with tempfile.TemporaryDirectory(prefix="bench-history-", dir=args.data_dir.parent) as tmp:
        cons = {}
        for name in ("as built", "aged"):
            path = Path(tmp) / name.replace(" ", "_") / "warehouse.duckdb"
            path.parent.mkdir()
            shutil.copy(args.data_dir / "warehouse.duckdb", path)
            con = duckdb.connect(str(path))
            con.execute("SET threads = 2")
            apply_prelude(con, needed=())
            refresh_on_demand(con, on_demand_tables(kpis))
            if name == "aged":
                span = json.loads((args.data_dir / "simulator_state.json").read_text())["days"]
                t = time.perf_counter()
                age(con, args.copies, span)
                rows = {t_: con.execute(f"SELECT COUNT(*) FROM {t_}").fetchone()[0] for t_ in AGED}
                print(f"aged: {args.copies} older copies of {span} days of {', '.join(AGED)} "
                      f"({rows}) in {time.perf_counter() - t:.1f} s")
            cons[name] = con
        print(f"as_of {as_of}; facts of each KPI alone for today and the month to date, best of "
              f"{args.reps}")
        print(f"{'KPI':45s} {'as built':>9s} {'aged':>9s}  same facts")
        for k in kpis:
            ps = periods_for(k, asked, as_of)
            if not ps:
                continue
            out = []
            for con in cons.values():
                load_periods(con, "_periods", range(len(ps)), ps, as_of)
                lo = Bounds(min(p.ws for p in ps), min(p.te(as_of) for p in ps))
                out.append(timed(con, _bounded(k.values_sql, lo), args.reps))
            print(f"{k.id:45s} {out[0][0]:8.3f}s {out[1][0]:8.3f}s  {out[0][1] == out[1][1]}")
        for con in cons.values():
            con.close()
    print(f"reproduce: python bench/bench_history.py --data-dir {args.data_dir} --copies {args.copies}")


if __name__ == "__main__":
    main()
