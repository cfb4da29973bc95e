"""What a sweep's carry of a late event row costs the stocks over event tables (docs/decisions.md,
session 32): those stocks evaluated and stored, as a sweep does, for the days from N days back to
the warehouse's last evaluation and the month ends between (kpis.evaluate.stock_carried). And
what the sweep's own run of each restated_by since the last sweep costs
(kpis.day_store.restated_days, from the last sweep's ETL run and as_of).

    python bench/bench_stock_carry.py --data-dir COPY [--days-back 4 29] [--rounds 2]

COPY: a copy of a data directory after an evaluation (e.g. a bench_kpis.py run's); the run writes
kpi_value rows into it. A late row dated N days back makes a sweep do this work for every stock
that reads its table; the difference between two N is what the carry adds.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="a copy: the run writes into it")
    ap.add_argument("--days-back", type=int, nargs="+", default=[4, 29])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    os.environ["DATA_DIR"] = str(args.data_dir)
    from etl.contract import load_contract  # noqa: PLC0415
    from etl.rules import ARCHIVES, table_rules  # noqa: PLC0415
    from etl.settings import load_settings  # noqa: PLC0415  (reads DATA_DIR)
    from kpis import day_store  # noqa: PLC0415
    from kpis.dependencies import tables_read  # noqa: PLC0415
    from kpis.evaluate import evaluate_and_store, stock_carried  # noqa: PLC0415
    from kpis.registry import load_registry  # noqa: PLC0415

    contract = load_contract()
    dated = {t for t, tab in contract.tables.items()
             if t not in ARCHIVES and table_rules(tab, contract).business_dates}
    registry = load_registry()
    stocks = [k for k in registry.kpis.values() if k.shape == "stock" and tables_read(k) & dated]
    con = duckdb.connect(str(load_settings().warehouse_path))
    con.execute("SET threads = 2")
    as_of, swept, run = con.execute(
        "SELECT last_eval_at, last_sweep_at, COALESCE(last_past_run_id, last_dirty_run_id) "
        "FROM kpi_eval_state WHERE id = 1").fetchone()
    restated = [k for k in registry.kpis.values() if k.restated_by]
    for r in range(args.rounds):
        t0 = time.perf_counter()
        days = [day_store.restated_days(con, k, [run], [swept], as_of) for k in restated]
        print(f"round {r + 1}: restated_by of {len(restated)} KPIs since the last sweep "
              f"({swept}, run {run}): {time.perf_counter() - t0:.3f} s wall, "
              f"{sum(len(d or ()) for d in days)} days named")
    print(f"{len(stocks)} stocks over event tables, as of {as_of}: {', '.join(k.id for k in stocks)}")
    for r in range(args.rounds):
        for back in args.days_back:
            periods = sorted(stock_carried(as_of.date() - timedelta(days=back), as_of))
            t0, c0 = time.perf_counter(), time.process_time()
            s = evaluate_and_store(con, registry, periods, as_of, kpis=stocks, prelude=False)
            print(f"round {r + 1}, from {back} days back: {len(periods)} periods, "
                  f"{time.perf_counter() - t0:.2f} s wall, {time.process_time() - c0:.2f} s CPU, "
                  f"errors {len(s.errors)}; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("reproduce: python bench/bench_stock_carry.py --data-dir COPY --days-back "
          + " ".join(map(str, args.days_back)) + f" --rounds {args.rounds}")


if __name__ == "__main__":
    main()
