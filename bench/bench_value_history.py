"""kpi_value as a worker leaves it after days of running, and what that history costs a minute.

A bench copy of the warehouse holds only the periods one evaluation wrote; a worker that has run
for weeks holds every past day, hour and month, and the snapshots of every pass. This writes that
history into a copy (the copy's own rows shifted back, appended in time order as the store appends
them), optionally runs the nightly layout (kpis/retention.py, kpis/value_layout.py), and times the
alarm step's read of the current rows (kpis.alerting._driving_rows). The minute itself is then
`python bench/bench_kpi_minute.py --data-dir COPY` on the same copy (its store statements read
kpi_value by key).

    python bench/bench_value_history.py --data-dir COPY --days 120 --snapshots hourly --nightly

COPY: a copy of a warehouse after one evaluation (e.g. a bench_kpi_minute run's data dir).
--snapshots minute: one snapshot per minute for --snapshot-days (what the store kept before
session 19); hourly: the last snapshot of each hour, and of each 5 minutes for the KPIs whose
baseline reads the same clock time days before, over those days (what it keeps now).
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kpis.alerting import _driving_rows, ensure_schema  # noqa: E402
from kpis.evaluate import fine_snapshots  # noqa: E402
from kpis.registry import load_registry  # noqa: E402
from kpis.retention import thin_history  # noqa: E402
from kpis.value_layout import sort_recent  # noqa: E402


def write_history(con: duckdb.DuckDBPyConnection, days: int, snapshots: str, snapshot_days: int,
                  fine: dict[str, int]) -> None:
    step, span = (1, 24 * 60 * snapshot_days) if snapshots == "minute" else (60, 24 * 60 * days)
    # hourly: the KPIs whose baseline reads the same clock time keep one per 5 minutes too
    fine_rows = "" if snapshots == "minute" or not fine else "".join(
        f"""
        UNION ALL
        SELECT n.* REPLACE (period_start - INTERVAL (k) MINUTE AS period_start, period_end - INTERVAL (k) MINUTE
               AS period_end, computed_at - INTERVAL (k) MINUTE AS computed_at)
        FROM n, range(5, {24 * 60 * min(d, days)}, 5) t(k) WHERE n.kpi_id = '{kid}' AND k % 60 <> 0"""
        for kid, d in sorted(fine.items()))
    con.execute(f"""CREATE TEMP TABLE _hist AS
        WITH d AS (SELECT * FROM kpi_value WHERE grain = 'daily'),
             h AS (SELECT * FROM kpi_value WHERE grain = 'hourly' AND period_start =
                       (SELECT MIN(period_start) FROM kpi_value WHERE grain = 'hourly')),
             n AS (SELECT * FROM kpi_value WHERE grain = 'near-real-time' AND period_start =
                       (SELECT MIN(period_start) FROM kpi_value WHERE grain = 'near-real-time')),
             m AS (SELECT * FROM kpi_value WHERE grain = 'monthly')
        SELECT d.* REPLACE (period_start - INTERVAL (k) DAY AS period_start, period_end - INTERVAL (k) DAY
               AS period_end, computed_at - INTERVAL (k) DAY AS computed_at, TRUE AS is_final)
        FROM d, range(1, {days}) t(k)
        UNION ALL
        SELECT h.* REPLACE (period_start - INTERVAL (k) HOUR AS period_start, period_end - INTERVAL (k) HOUR
               AS period_end, computed_at - INTERVAL (k) HOUR AS computed_at, TRUE AS is_final)
        FROM h, range(1, 24 * {days}) t(k)
        UNION ALL
        SELECT n.* REPLACE (period_start - INTERVAL (k) MINUTE AS period_start, period_end - INTERVAL (k) MINUTE
               AS period_end, computed_at - INTERVAL (k) MINUTE AS computed_at)
        FROM n, range({step}, {span}, {step}) t(k){fine_rows}
        UNION ALL
        SELECT m.* REPLACE (period_start - INTERVAL (k) MONTH AS period_start, period_end - INTERVAL (k) MONTH
               AS period_end, computed_at - INTERVAL (k * 30) DAY AS computed_at, TRUE AS is_final)
        FROM m, range(1, {days // 30 + 1}) t(k)""")
    # appended in the order the store would have written them
    con.execute("CREATE TEMP TABLE _all AS SELECT * FROM (SELECT * FROM _hist UNION ALL "
                "SELECT * FROM kpi_value) ORDER BY computed_at")
    con.execute("DELETE FROM kpi_value")
    con.execute("INSERT INTO kpi_value SELECT * FROM _all")
    con.execute("DROP TABLE _hist")
    con.execute("DROP TABLE _all")
    con.execute("CHECKPOINT")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="a copy: the run writes into it")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--snapshots", choices=("minute", "hourly"), default="hourly")
    ap.add_argument("--snapshot-days", type=int, default=1, help="with --snapshots minute")
    ap.add_argument("--nightly", action="store_true", help="then run the nightly thinning and layout")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    con = duckdb.connect(str(args.data_dir / "warehouse.duckdb"))
    con.execute("SET threads = 2")
    con.execute("SET enable_progress_bar = false")
    before = con.execute("SELECT COUNT(*) FROM kpi_value").fetchone()[0]
    registry = load_registry()
    t = time.perf_counter()
    write_history(con, args.days, args.snapshots, args.snapshot_days, fine_snapshots(registry.kpis.values()))
    rows = con.execute("SELECT COUNT(*) FROM kpi_value").fetchone()[0]
    print(f"{datetime.now():%Y-%m-%d %H:%M} duckdb {duckdb.__version__}: kpi_value {before:,} -> {rows:,} rows "
          f"({args.days} days, {args.snapshots} snapshots) in {time.perf_counter() - t:.1f} s")
    now = con.execute("SELECT MAX(period_start) FROM kpi_value WHERE grain = 'near-real-time'"
                      ).fetchone()[0] + timedelta(minutes=3)
    if args.nightly:
        t = time.perf_counter()
        thinned = thin_history(con, now, fine_snapshots(registry.kpis.values()))
        t1 = time.perf_counter()
        moved = sort_recent(con)
        t2 = time.perf_counter()
        con.execute("CHECKPOINT")
        print(f"nightly: {thinned:,} snapshot rows thinned in {t1 - t:.2f} s, {moved:,} rows re-appended "
              f"in period order in {t2 - t1:.2f} s, checkpoint {time.perf_counter() - t2:.2f} s")
    kdefs = {k: d for k, d in registry.kpis.items() if d.warning not in (None, "") or d.critical not in (None, "")}
    ensure_schema(con)
    times = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        n = len(_driving_rows(con, kdefs, None, now))
        times.append(time.perf_counter() - t)
    print(f"alarm step's read of the current rows ({n:,} rows at {now:%Y-%m-%d %H:%M}): "
          + " / ".join(f"{x:.3f}" for x in times) + " s")
    con.close()
    print(f"reproduce: python bench/bench_value_history.py --data-dir COPY --days {args.days} "
          f"--snapshots {args.snapshots}" + (f" --snapshot-days {args.snapshot_days}" if args.snapshots == "minute" else "")
          + (" --nightly" if args.nightly else "")
          + f"; then python bench/bench_kpi_minute.py --data-dir COPY --minutes 3 --top 40")


if __name__ == "__main__":
    main()
