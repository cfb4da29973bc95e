"""Ordinary incremental passes without the live simulator: what a one-minute pass costs the KPI
engine, at any scale, in minutes of wall time.

Usage: python bench/bench_kpi_minute.py --data-dir DIR [--minutes 4] [--as-of 'YYYY-MM-DD HH:MM:SS']
                                        [--template county|all] [--top 25] [--per-kpi] [--sweep]
                                        [--cycle] [--dates today|rows|rows-any]
DIR holds warehouse.duckdb (and simulator_state.json) as `app.py worker` or `python -m etl run
--once` leaves them; the run writes into the warehouse: use a copy.

bench_kpis.py (b) measures real minutes: the live simulator writes a minute, the ETL merges it,
the engine evaluates. At city scale the live simulator needs ~9 minutes of start-up and minutes
per simulated minute on this machine, so a city figure took an hour. Here each "minute" instead
records in etl_dirty / etl_changed what an ETL pass records after a live minute (the template:
the tables and changed columns of a county live minute at 10:0x, recorded in session 9; a new
row is '*', all columns), dated today, moves as_of on by 60 s and times
kpis.evaluate.evaluate_incremental. The data itself does not change, so the engine does the work
of a minute (the same KPIs woken, the same periods re-read, the same kept tables refreshed, with
no keys to re-derive) while the values stay as they were; `--template all` marks every table the
engine reads with every column (a worst case: every KPI woken). Because the data stays as it
was, the fingerprints of small tables (kpis/wake.py, tables up to FP_MAX_ROWS rows) would find
them unchanged and skip KPIs that a real minute's rows wake: they are off here (the skips by the
ETL's changed columns stay on).

--dates rows records, besides today, the dates a real pass records for the rows of the
template's tables whose updated_at falls in the minute (an order accepted days ago and closed
now dirties its acceptance day; day-additive KPIs read such days again in an ordinary pass):
at 22:3x of the 10-day city month a minute's orders, tasks and applications name 6-9 past days.
Each date carries the columns changed on it, as the ETL records them from session 22 on: any
column for a row created in the minute; for an older row, the columns a later event of the
simulator changes in its table (LATER_EVENTS, a union: an upper bound of a real event's).
--dates rows-any records every date with any column (what the ETL recorded before).

The first pass after the state is set (as_of - 60 s, last sweep in the same hour) builds what
the worker keeps between passes (kept prelude tables, stored days): it is printed, not counted.
as_of defaults to 90 minutes before the simulator's clock (22:30 for a fresh build), so that
today holds most of a day and the measured minutes stay inside one hour (a new hour is a sweep).
--per-kpi times the facts KPI by KPI (kpis.batch.CHUNK = 1: more statements, so a larger total).
--planning reads DuckDB's detailed profile of each statement (binding, optimizers, physical plan
against the statement's latency: what planning, not running, costs a pass); profiling adds its
own time, so the pass times of such a run are not comparable with a plain one.
--cycle runs the rest of the worker's cycle after each pass, as kpis.worker does: the alarm step
(kpis.alerting.process, in its transaction) and the publish of the serving snapshot (into
DIR/serving_bench; the warm-up's is the first, full one; with 3 versions kept the 5th publish on
is written into the spare, kpis/publish.py). Run --minutes 6 or more to see both kinds.
--sweep makes every measured pass a sweep (the last sweep set SWEEP_EVERY back before each):
the worker's recurring full evaluation, every KPI for today, its hours and the running month
(days re-read for the months summed from stored days), with the kept tables as a pass keeps them.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_kpis import Timed, load, print_kinds, sim_clock  # noqa: E402
from etl.warehouse import AUTO_CHECKPOINT  # noqa: E402
from kpis import batch, wake  # noqa: E402
from kpis.dependencies import tables_read  # noqa: E402
from kpis.evaluate import SWEEP_EVERY, ensure_schema, evaluate_incremental  # noqa: E402
from kpis.registry import load_registry  # noqa: E402

# What the ETL recorded after one county live minute (etl_changed of runs 15-17, session 9):
# table -> the columns changed ('*': new rows).
COUNTY_MINUTE = {
    "cs_agent_state": ("*",), "cs_queue_snapshot": ("*",), "cs_wo_step": ("*",), "cs_call": ("*",),
    "mis_payment": ("*",), "mis_rcved_flow": ("*",),
    "cs_visit": ("visit_time", "visit_result", "satisfaction", "resolved_flag", "updated_at"),
    "cs_work_order": ("*", "audit_time", "reply_time", "status_code", "handle_opinion", "updated_at"),
    "dist_repair_task": ("crew_id", "dispatch_time", "crew_accept_time", "depart_time", "arrive_time",
                         "status_code", "updated_at"),
    "dist_crew": ("status_code", "status_time", "updated_at"),
    "meter_terminal": ("last_online_time", "updated_at"),
    "mis_bill": ("rcved_amt", "settle_flag", "settle_time", "invoice_type", "invoice_time", "updated_at"),
}
_KPI = re.compile(r"-- (\S+) \(named")


class PerStatement(Timed):
    """Timed, and each statement's time kept with its text (for the per-KPI table); with a
    profile file (--planning), what DuckDB's detailed profile says planning each one cost."""

    def __init__(self, con: duckdb.DuckDBPyConnection, profile: Path | None = None) -> None:
        super().__init__(con)
        self.statements: list[tuple[float, str]] = []
        self.profile = profile
        # [statements profiled, binding, optimizers, physical planning, latency]
        self.planning = [0, 0.0, 0.0, 0.0, 0.0]
        self.optimizers: dict[str, float] = {}

    def execute(self, sql: str, *args: object) -> duckdb.DuckDBPyConnection:
        t = time.perf_counter()
        try:
            return super().execute(sql, *args)
        finally:
            self.statements.append((time.perf_counter() - t, sql))
            if self.profile is not None:
                self._read_profile(sql)

    def _read_profile(self, sql: str) -> None:
        try:
            d = json.loads(self.profile.read_text())
        except (OSError, ValueError):
            return
        if d.get("query_name") != sql:     # a statement DuckDB does not profile left the last one
            return
        for i, key in enumerate(("planner", "all_optimizers", "physical_planner", "latency"), 1):
            self.planning[i] += d.get(key, 0.0)
        self.planning[0] += 1
        for name, v in d.items():
            if name.startswith("optimizer_"):
                self.optimizers[name[10:]] = self.optimizers.get(name[10:], 0.0) + v

    def print_planning(self) -> None:
        n, bind, opt, phys, latency = self.planning
        top = sorted(self.optimizers.items(), key=lambda x: -x[1])[:5]
        print(f"    planning of {n} profiled statements: {bind + opt + phys:.3f} s (binding {bind:.3f}, "
              f"optimizers {opt:.3f}, physical plan {phys:.3f}) of {latency:.3f} s latency; "
              f"slowest optimizers: {', '.join(f'{k} {v:.3f}' for k, v in top)}")


def add_statements(per: dict[str, float], statements: Sequence[tuple[float, str]]) -> None:
    """Add each statement's seconds to `per` under its key: facts by the KPIs they name, other
    statements by their first 100 characters."""
    for dt, sql in statements:
        names = _KPI.findall(sql)
        key = (("facts of " + ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else ""))
               if names else " ".join(sql.split())[:100])
        per[key] = per.get(key, 0.0) + dt


class Cycle:
    """The worker's cycle after a pass (kpis.worker.Worker.cycle): the alarm step, then the publish."""

    def __init__(self, data_dir: Path) -> None:
        import os  # noqa: PLC0415
        os.environ["DATA_DIR"] = str(data_dir)
        from etl.settings import load_settings  # noqa: PLC0415  (reads DATA_DIR)
        self.settings = load_settings()
        self.serving = data_dir / "serving_bench"
        self.rows: list[tuple[float, float, float, bool]] = []

    def after(self, con: duckdb.DuckDBPyConnection, registry: object, as_of: datetime, evaluation: float,
              counted: bool) -> None:
        from kpis.alerting import process  # noqa: PLC0415
        from kpis.publish import publish  # noqa: PLC0415
        t = time.perf_counter()
        con.execute("BEGIN TRANSACTION")
        s = process(con, registry, None, as_of, self.settings)
        con.execute("COMMIT")
        alarm = time.perf_counter() - t
        t = time.perf_counter()
        res = publish(con, self.serving, published_at=as_of)
        pub = time.perf_counter() - t
        # getattr: the same script times the code before session 20 (no spare, no states count)
        recycled = getattr(res, "recycled", False)
        kind = ("full" if "kpi_value" in res.tables else
                "on the spare" if recycled else "copy of the previous")
        print(f"    cycle: evaluation {evaluation:.2f} s + alarm step {alarm:.2f} s ({s.stepped} stepped, "
              f"{getattr(s, 'written', '?')} written, {s.events} events) + publish {pub:.2f} s ({kind}) = "
              f"{evaluation + alarm + pub:.2f} s")
        if counted:
            self.rows.append((evaluation, alarm, pub, recycled))

    def summary(self) -> None:
        for label, rows in (("publishing a copy", [r for r in self.rows if not r[3]]),
                            ("publishing into the spare", [r for r in self.rows if r[3]])):
            if rows:
                med = [statistics.median(r[j] for r in rows) for j in range(3)]
                print(f"cycles {label}: {len(rows)}, medians: evaluation {med[0]:.2f} s, alarm step "
                      f"{med[1]:.2f} s, publish {med[2]:.2f} s; total median "
                      f"{statistics.median(sum(r[:3]) for r in rows):.2f} s")


# What a later event of the simulator changes in a row it wrote earlier, per table (the union of
# the columns its Life.set calls name in simulator/*.py, with updated_at): --dates rows records
# these on the dates of the minute's rows created before it. A union, so more KPIs read a past
# day again than a real minute's events would make. A soft delete (is_deleted, a bad row of the
# simulator) is left out: with it every KPI reads every such day. Tables not named here: any
# column.
LATER_EVENTS = {
    "cs_call": ("ivr_satisfaction", "qa_score", "qa_time", "wo_no"),
    "cs_visit": ("dissatisfied_reason", "resolved_flag", "satisfaction", "visit_result", "visit_time"),
    "cs_work_order": ("audit_time", "call_count", "close_time", "complaint_valid", "dispatch_time",
                      "handle_opinion", "merged_into_wo_no", "receive_time", "reply_time",
                      "return_count", "status_code"),
    "dist_repair_task": ("arrive_backfill_flag", "arrive_time", "crew_accept_time", "crew_id",
                         "depart_time", "dispatch_time", "equip_owner", "fault_cause", "fault_type",
                         "lat", "lon", "reply_time", "restore_time", "status_code"),
    "mis_bill": ("invoice_time", "invoice_type", "rcved_amt", "settle_flag", "settle_time"),
    "mis_payment": ("status_code",),
}
Dates = dict[str, dict[object, "tuple[str, ...] | None"]]   # table -> date -> columns (None: any)


def mark(con: duckdb.DuckDBPyConnection, run_id: int, template: dict[str, tuple[str, ...]],
         day: object, dates: Dates | None = None) -> None:
    """Record run_id as an ETL pass that merged rows of today (and of `dates`, per table, with
    the columns changed there) into the template's tables."""
    for table, cols in sorted(template.items()):
        marks = dict((dates or {}).get(table, {}))
        marks[day] = None if "*" in cols else cols
        for d, changed in sorted(marks.items()):
            con.execute("INSERT INTO etl_dirty (run_id, source, table_name, business_date, "
                        "changed_columns) VALUES ($r, 'bench', $t, $d, $c)",
                        {"r": run_id, "t": table, "d": d, "c": None if changed is None else list(changed)})
        for c in ("", *cols):     # '' marks that the run recorded its changed columns
            con.execute("INSERT INTO etl_changed VALUES ($r, 'bench', $t, $c)",
                        {"r": run_id, "t": table, "c": c})


def row_dates(con: duckdb.DuckDBPyConnection, tables: Sequence[str], lo: datetime,
              hi: datetime, any_column: bool = False) -> Dates:
    """The business dates an ETL pass records for the rows whose updated_at falls in (lo, hi]
    (etl.rules: every DATE / TIMESTAMP column but created_at and updated_at), from the rows as
    the warehouse holds them: a real minute's dirty dates, less those of rows changed again
    later and of the versions the rows replaced. A date of a row created in the minute changed
    any column; one of an older row, what a later event changes (LATER_EVENTS), or any column
    with any_column (what the ETL recorded before session 22)."""
    from etl.contract import load_contract  # noqa: PLC0415
    from etl.rules import table_rules  # noqa: PLC0415
    contract = load_contract()
    out: Dates = {}
    for t in tables:
        dates = table_rules(contract.tables[t], contract).business_dates
        if not dates:
            continue
        rows = con.execute(f"SELECT created_at > $lo, list_distinct(flatten(list([{', '.join(dates)}]))) "
                           f"FROM {t} WHERE updated_at > $lo AND updated_at <= $hi GROUP BY 1",
                           {"lo": lo, "hi": hi}).fetchall()
        later = (*LATER_EVENTS[t], "updated_at") if t in LATER_EVENTS and not any_column else None
        marks: dict[object, tuple[str, ...] | None] = {}
        for new, ds in rows:
            for d in ds or ():
                if d is None:
                    continue
                if new or later is None or marks.get(d, ()) is None:
                    marks[d] = None
                else:
                    marks[d] = tuple(sorted({*marks.get(d, ()), *later}))
        out[t] = marks
    return out


def data_dir_wal(data_dir: Path) -> int:
    wal = data_dir / "warehouse.duckdb.wal"
    return wal.stat().st_size if wal.exists() else 0


def open_at(data_dir: Path, as_of: datetime) -> tuple[duckdb.DuckDBPyConnection, int]:
    """The warehouse, its evaluation state set to a pass a minute before as_of in the same hour
    (so the next pass is ordinary); and the newest ETL run id, after which mark() counts."""
    # as the worker's connection (etl.warehouse.Warehouse): the WAL is folded after a cycle, not
    # inside whichever commit crosses DuckDB's default 16 MB (that folding is printed apart)
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"),
                         config={"checkpoint_threshold": AUTO_CHECKPOINT})
    con.execute("SET threads = 2")
    con.execute("SET memory_limit = '8GB'")
    ensure_schema(con)
    # a warehouse an older ETL built: the column mark() fills
    con.execute("ALTER TABLE etl_dirty ADD COLUMN IF NOT EXISTS changed_columns VARCHAR[]")
    run = con.execute("SELECT COALESCE(MAX(run_id), 0) FROM etl_dirty").fetchone()[0]
    con.execute("DELETE FROM kpi_eval_state")
    con.execute("INSERT INTO kpi_eval_state (id, last_dirty_run_id, last_full_at, last_eval_at, "
                "last_sweep_at, last_past_run_id) VALUES (1, $r, $a, $a, $a, $r)",
                {"r": run, "a": as_of - timedelta(seconds=60)})
    return con, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="a copy: the run writes into it")
    ap.add_argument("--minutes", type=int, default=4, help="measured passes (after the warm one)")
    ap.add_argument("--as-of", default=None)
    ap.add_argument("--template", choices=("county", "all"), default="county")
    ap.add_argument("--top", type=int, default=25, help="statements (or KPIs) listed, slowest first")
    ap.add_argument("--per-kpi", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="every measured pass a sweep")
    ap.add_argument("--planning", action="store_true", help="print what planning the statements cost")
    ap.add_argument("--cycle", action="store_true", help="also the alarm step and the publish after each pass")
    ap.add_argument("--dates", choices=("today", "rows", "rows-any"), default="today",
                    help="dirty dates recorded per minute: today only, or also those of the rows "
                         "whose updated_at falls in the minute (as a real pass records them), "
                         "with the columns a later event changes, or with any column (rows-any)")
    args = ap.parse_args()
    cycle = Cycle(args.data_dir) if args.cycle else None
    if args.per_kpi:
        batch.CHUNK = 1
    wake.FP_MAX_ROWS = -1       # no table is fingerprinted: the data does not change (above)
    registry = load_registry()
    as_of = (datetime.fromisoformat(args.as_of) if args.as_of
             else sim_clock(args.data_dir) - timedelta(minutes=90))
    template = COUNTY_MINUTE
    if args.template == "all":
        template = {t: ("*",) for k in registry.kpis.values() for t in tables_read(k)}
    cmd = (f"python bench/bench_kpi_minute.py --data-dir {args.data_dir} --minutes {args.minutes} "
           f"--as-of '{as_of:%Y-%m-%d %H:%M:%S}' --template {args.template}"
           + (" --per-kpi" if args.per_kpi else "") + (" --sweep" if args.sweep else "")
           + (" --planning" if args.planning else "") + (" --cycle" if args.cycle else "")
           + (f" --dates {args.dates}" if args.dates != "today" else ""))
    con, run = open_at(args.data_dir, as_of)
    profile = None
    if args.planning:
        profile = Path(tempfile.mkdtemp()) / "profile.json"
        con.execute("PRAGMA enable_profiling = 'json'")
        con.execute("PRAGMA profiling_mode = 'detailed'")
        con.execute(f"PRAGMA profiling_output = '{profile}'")
    print(f"{datetime.now():%Y-%m-%d %H:%M} duckdb {duckdb.__version__}; template {args.template} "
          f"({len(template)} tables); {len(registry.kpis)} KPIs")
    walls, cpus, per = [], [], {}
    for i in range(args.minutes + 1):
        run += 1
        dates = (row_dates(con, sorted(template), as_of - timedelta(seconds=60), as_of,
                           any_column=args.dates == "rows-any")
                 if args.dates != "today" else None)
        if dates is not None:
            past = sorted({d for ds in dates.values() for d in ds if d < as_of.date()})
            print(f"    dirty dates before today from the minute's rows: {', '.join(map(str, past)) or 'none'}")
        mark(con, run, template, as_of.date(), dates)
        if args.sweep and i:
            con.execute("UPDATE kpi_eval_state SET last_sweep_at = $a", {"a": as_of - SWEEP_EVERY})
        timed = PerStatement(con, profile)
        start = load()
        t, c = time.perf_counter(), time.process_time()
        s = evaluate_incremental(timed, registry, as_of)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        if i == 0:
            wal0 = data_dir_wal(args.data_dir)
        label = "warm-up (not counted)" if i == 0 else f"minute {i}"
        print(f"{label} as_of {as_of:%H:%M}: {wall:.2f} s wall, {cpu:.2f} s CPU, {s.kpis} KPIs, "
              f"{s.skipped} skipped by columns, {len(getattr(s, 'as_stored', ()))} days as stored, {s.rows} rows, "
              f"errors {len(s.errors)}; "
              f"{start} at the start")
        print_kinds(timed.kinds)
        if cycle is not None:
            cycle.after(con, registry, as_of, wall, counted=bool(i))
        if profile is not None:
            timed.print_planning()
        if i:
            walls.append(wall)
            cpus.append(cpu)
            add_statements(per, timed.statements)
        as_of += timedelta(seconds=60)
    if profile is not None:
        con.execute("PRAGMA disable_profiling")
        shutil.rmtree(profile.parent, ignore_errors=True)
    wal = data_dir_wal(args.data_dir)
    t = time.perf_counter()
    con.execute("CHECKPOINT")
    print(f"WAL written by the measured passes {(wal - wal0) / 1e6:.1f} MB ({wal / 1e6:.1f} MB with the "
          f"warm-up); folding it (the worker does it after a cycle once past 64 MB): "
          f"{time.perf_counter() - t:.2f} s")
    print(f"{'sweeps' if args.sweep else 'ordinary passes'}: {len(walls)}, median {statistics.median(walls):.2f} s wall "
          f"({statistics.median(cpus):.2f} s CPU), slowest {max(walls):.2f} s; {load()} at the end")
    if cycle is not None:
        cycle.summary()
    print("slowest statements (mean seconds per pass):")
    for key, total in sorted(per.items(), key=lambda x: -x[1])[:args.top]:
        print(f"  {total / len(walls):.3f}  {key}")
    print(f"reproduce: {cmd}")


if __name__ == "__main__":
    main()
