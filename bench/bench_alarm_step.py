"""The worker's alarm step (kpis.alerting.process) on a copy of a warehouse: what it adds to a cycle.

The worker runs it after every evaluation, over the current row of every (KPI, unit) with
thresholds (~78 k at city), in the transaction that writes the outbox. The first call creates
the states of every unit out of bounds; the following calls are what a minute costs.

    python bench/bench_alarm_step.py --data-dir COPY [--rounds 4]

COPY: a copy of a data directory after an evaluation (e.g. a bench_kpi_minute run's); the run
writes alarm states, events and outbox rows into it and an app.db beside it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="a copy: the run writes into it")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    os.environ["DATA_DIR"] = str(args.data_dir)
    from etl.settings import load_settings  # noqa: PLC0415  (reads DATA_DIR)
    from kpis.alerting import process  # noqa: PLC0415
    from kpis.registry import load_registry  # noqa: PLC0415
    settings = load_settings()
    registry = load_registry()
    con = duckdb.connect(str(settings.warehouse_path))
    con.execute("SET threads = 2")
    now = con.execute("SELECT MAX(period_start) FROM kpi_value WHERE grain = 'near-real-time'").fetchone()[0]
    now = now or datetime.now().replace(microsecond=0)
    print(f"{datetime.now():%Y-%m-%d %H:%M} duckdb {duckdb.__version__}; alarm step at {now:%Y-%m-%d %H:%M}")
    walls = []
    for i in range(args.rounds):
        con.execute("BEGIN TRANSACTION")
        t, c = time.perf_counter(), time.process_time()
        s = process(con, registry, None, now + timedelta(minutes=i), settings)
        con.execute("COMMIT")
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        if i:
            walls.append(wall)
        print(f"{'first (creates states)' if i == 0 else f'minute {i}'}: {wall:.2f} s wall, {cpu:.2f} s CPU, "
              f"{s.stepped} stepped, {s.written} states written, {s.events} events, "
              f"{s.notifications} notifications")
    if walls:
        print(f"following minutes: median {sorted(walls)[len(walls) // 2]:.2f} s")
    print(f"reproduce: python bench/bench_alarm_step.py --data-dir COPY --rounds {args.rounds}")


if __name__ == "__main__":
    main()
