"""A real ordinary pass replayed: the KPI evaluation that followed an ETL run of the live
simulator, evaluated again on copies of the warehouse, with its slowest statements.

Usage: python bench/bench_kpi_replay.py --data-dir DIR [--run R] [--rounds 3] [--top 25]
                                         [--profile N [--operators M]] [--keep-fingerprints]
DIR holds a warehouse.duckdb in which ordinary passes ran after live ETL runs (as
`bench_kpis.py --data-dir DIR --minutes N` or the worker leave it); it is only read. R is the
ETL run whose pass is replayed (default: the newest, whose pass was the last one evaluated).

bench_kpi_minute.py marks synthetic minutes on a still warehouse; a live city minute needs the
live simulator (~2-3 minutes of wall time a simulated minute here, after its start-up). This
takes what one live pass had to do, the dirty dates and changed columns the ETL recorded for run
R, and evaluates it again: each round on a fresh copy, with kpi_eval_state set back to just
before that pass (last_dirty_run_id R - 1, last_eval_at one minute before; the last sweep and
restatement marks as they were) and as_of the pass's own, the engine's per-process caches of
the KPIs' column lists warmed first (as in a worker past its first pass). The kept state (stored days, month
bases, fact markers, the kept prelude tables) is as that pass left it: the replay plans and reads
what the pass read, finds its facts as kept and writes less; the kept prelude tables' build state
is set back to run R - 1, so the pass re-derives the keys run R merged as the live pass did
(before session 23 it did not: that kind was missing here). So it is a lower bound
of the live pass, closer than the synthetic minute; print both beside each other.
A live bench's backfill leaves ~23 M rows of kpi_value unsorted, which the store's lookups scan
(0.2-0.3 s of a replayed city pass); the worker's nightly job sorts them (kpis/value_layout.py).
To replay as after that night, run value_layout.sort_recent and a CHECKPOINT on a copy once and
replay that copy (sorting each round's copy just before the pass left it slower, 4.6-5.8 s
against 3.3 s, the sort's memory still held).
The fingerprints of small tables (kpis/wake.py) in the copy are those the replayed pass
recorded, of the very data it reads again: with them every KPI woken only by small tables was
skipped (the city 00:02 pass: 88 KPIs, 53 skipped, against the live pass's 130 and 11). So each
round starts without any, as a sweep leaves them: the 00:02 pass (the first after the 00:01
sweep) then evaluates what the live one did (130 KPIs, 11 skipped, 36 days as stored, 627
KPI-periods). A later pass had the previous pass's, which in live city minutes skip little (a
sweep that took them left the next pass's counts as they were: docs/decisions.md, session 29);
--keep-fingerprints keeps them (the replays of sessions 22-28, which thus ran lower).
--profile N: one more round after the timed ones, with DuckDB's JSON profile of each statement
(bench_kpi_profile.py), printing the N slowest with their slowest operators: where the time of a
real pass goes (the synthetic pass of bench_kpi_profile.py does not read what a live one does).
Profiling adds its own cost: compare operators within that round, time passes without it.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_kpi_minute import PerStatement, add_statements  # noqa: E402
from bench_kpi_profile import Profiled, print_profiles  # noqa: E402
from bench_kpis import load, print_kinds  # noqa: E402
from etl.warehouse import AUTO_CHECKPOINT  # noqa: E402
from kpis import wake  # noqa: E402
from kpis.batch import _note_integral, fact_columns  # noqa: E402
from kpis.evaluate import ensure_schema, evaluate_incremental  # noqa: E402
from kpis.registry import load_registry  # noqa: E402


def dirty_of(con: duckdb.DuckDBPyConnection, run: int) -> list[tuple]:
    try:
        return con.execute("SELECT table_name, list(business_date ORDER BY business_date), "
                           "bool_or(changed_columns IS NULL) FROM etl_dirty WHERE run_id = $r "
                           "GROUP BY 1 ORDER BY 1", {"r": run}).fetchall()
    except duckdb.BinderException:     # an etl_dirty from before session 22
        return con.execute("SELECT table_name, list(business_date ORDER BY business_date), TRUE "
                           "FROM etl_dirty WHERE run_id = $r GROUP BY 1 ORDER BY 1", {"r": run}).fetchall()


def warm(con: duckdb.DuckDBPyConnection, registry) -> None:
    """Fill the engine's per-process caches of each KPI's facts columns and integer columns
    (kpis/batch.py fact_columns, _note_integral), as a worker past its first pass has them: cold,
    a replayed city pass spent ~0.2-0.3 s on ~500 DESCRIBE and _periods statements."""
    for k in registry.kpis.values():
        try:
            fact_columns(con, k)
        except duckdb.Error:
            pass
        _note_integral(con, k)
    con.execute("DROP TABLE IF EXISTS _periods")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="read only: each round gets a copy")
    ap.add_argument("--run", type=int, help="the ETL run whose pass is replayed (default: newest)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="one more round, profiled: the N slowest statements with their operators")
    ap.add_argument("--operators", type=int, default=10, help="operators shown per profiled statement")
    ap.add_argument("--keep-fingerprints", action="store_true",
                    help="keep the small tables' fingerprints the replayed pass recorded")
    args = ap.parse_args()
    src = duckdb.connect(str(args.data_dir / "warehouse.duckdb"), read_only=True)
    run = args.run or src.execute("SELECT MAX(run_id) FROM etl_pass").fetchone()[0]
    state = src.execute("SELECT last_dirty_run_id, last_eval_at FROM kpi_eval_state").fetchone()
    if args.run is None and state[0] != run:
        raise SystemExit(f"the newest ETL run is {run} but the last pass evaluated up to run "
                         f"{state[0]}: give --run and make sure its pass is the last one evaluated")
    as_of = state[1]
    print(f"ETL run {run}, its pass at as_of {as_of:%Y-%m-%d %H:%M:%S}; dirty dates it recorded "
          "(* = a date with a new row or uncompared versions: any column):")
    for table, dates, anyc in dirty_of(src, run):
        print(f"    {table}: {', '.join(f'{d:%m-%d}' for d in dates if d is not None)}{' *' if anyc else ''}")
    src.close()
    registry = load_registry()
    work = Path(tempfile.mkdtemp(prefix="kpi_replay_"))
    walls, cpus, per = [], [], {}
    try:
        for i in range(args.rounds + (1 if args.profile else 0)):
            profiled = i == args.rounds
            shutil.copy2(args.data_dir / "warehouse.duckdb", work / "warehouse.duckdb")
            con = duckdb.connect(str(work / "warehouse.duckdb"),
                                 config={"checkpoint_threshold": AUTO_CHECKPOINT})
            con.execute("SET threads = 2")
            con.execute("SET memory_limit = '8GB'")
            con.execute("SET enable_progress_bar = false")
            ensure_schema(con)
            con.execute("UPDATE kpi_eval_state SET last_dirty_run_id = $r, last_eval_at = $e",
                        {"r": run - 1, "e": as_of - timedelta(seconds=60)})
            # the kept prelude tables as before run R: the pass re-derives the keys R merged
            con.execute("UPDATE kpi_prelude_state SET run_id = $r WHERE run_id > $r", {"r": run - 1})
            if not args.keep_fingerprints:
                con.execute(wake.DDL)
                con.execute("DELETE FROM kpi_wake_fp")
            if i == 0:
                warm(con, registry)
            if profiled:
                prof = Profiled(con, work)
                con.execute("SET enable_profiling = 'json'")
                prof.on = True
                evaluate_incremental(prof, registry, as_of)
                con.close()
                print(f"profiled round (not timed), the {args.profile} slowest statements:")
                print_profiles(prof, args.profile, args.operators)
                break
            timed = PerStatement(con)
            start = load()
            t, c = time.perf_counter(), time.process_time()
            s = evaluate_incremental(timed, registry, as_of)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            con.close()
            print(f"round {i + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU, {s.kpis} KPIs, {s.skipped} skipped "
                  f"by columns, {len(getattr(s, 'as_stored', ()))} days as stored, {s.periods} KPI-periods, "
                  f"{s.rows} rows, errors {len(s.errors)}; "
                  f"{start} at the start")
            print_kinds(timed.kinds)
            walls.append(wall)
            cpus.append(cpu)
            add_statements(per, timed.statements)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"replayed pass: median {statistics.median(walls):.2f} s wall "
          f"({statistics.median(cpus):.2f} s CPU) over {len(walls)} rounds; {load()} at the end")
    print("slowest statements (mean seconds per round):")
    for key, total in sorted(per.items(), key=lambda x: -x[1])[:args.top]:
        print(f"  {total / len(walls):.3f}  {key}")
    print(f"reproduce: python bench/bench_kpi_replay.py --data-dir {args.data_dir} --run {run} "
          f"--rounds {args.rounds}" + (f" --profile {args.profile}" if args.profile else "")
          + (" --keep-fingerprints" if args.keep_fingerprints else ""))


if __name__ == "__main__":
    main()
