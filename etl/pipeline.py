"""One ETL pass: every source, every contract table, incremental by updated_at.

Per source, the windows of all tables are counted at the source in one query; empty windows
cost no DuckDB statement. The changed tables of a source are merged in one transaction together
with their run rows, watermarks and the source's freshness, so a crash at any point re-reads the
same windows and converges. A first (full) load of a table commits on its own. When a statement
fails inside the source's transaction, the source is loaded again table by table so that the
failing table fails alone. A source that is down or too slow fails alone (etl_run, etl_freshness);
the next pass catches up from its saved watermarks.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb

from etl import dims
from etl.contract import Contract, Table, load_contract
from etl.errors import SchemaDrift, SourceUnavailable
from etl.extensions import load_scanner
from etl.load import (IMAGE_PREFIX, RuleInputs, TableResult, advance_watermarks, held_counts,
                      insert_run_row, insert_run_rows, merge_batch, open_counts, probe_window,
                      read_rereads, read_sweeps, read_watermarks, record_rereads, record_sweeps,
                      stage_full, stage_window)
from etl.rules import table_rules
from etl.schema import quote_ident as q
from etl.settings import SOURCE_NAMES, Settings
from etl.sources import Source, deadline, local_now, open_source, parse_ts, ts_literal
from etl.warehouse import Warehouse

log = logging.getLogger(__name__)
TEMP_VIEWS = ("_chg",)
TEMP_TABLES = ("_raw", "_keys", "_win", "_batch", "_flags", "_moved")
# a window with more rows than this is probed by key first (etl.load.probe_window)
PROBE_ROWS = 5_000


@dataclass
class SourceResult:
    """The outcome of one source in a pass."""
    source: str
    status: str = "ok"                     # ok | failed (down, or some table failed)
    high: datetime | None = None
    error: str | None = None
    tables: list[TableResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class PassResult:
    """The outcome of a pass over all sources; iterating yields the per-source results."""
    run_id: int
    sources: dict[str, SourceResult]
    dims_rebuilt: bool = False

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sources.values())

    def __iter__(self) -> Iterator[SourceResult]:
        return iter(self.sources.values())


class _BatchFailed(Exception):
    """A statement failed inside the source's shared transaction (which is now rolled back)."""


def is_nightly(table: Table) -> bool:
    """Metering tables filled by the nightly collection run (longer overlap)."""
    return table.system == "meter" and any(k in ("data_date", "data_time") for k in table.key)


# etl_changed, etl_keys and etl_added_keys rows are kept for this many runs (a day of minute passes): the KPI
# worker reads those of the runs since its last pass, and treats a run without them as "any
# column changed" and "keys unknown".
CHANGED_KEEP_RUNS = 1440
# Row images (etl/load.py _keep_images) are kept for this many runs: an ordinary KPI pass reads
# those of the runs since its last pass (a few); one that finds a run without them reads the
# dates in place.
IMAGE_KEEP_RUNS = 60


def new_run_id(warehouse: Warehouse, now: datetime) -> int:
    """Allocate the pass's run id (committed at once so a crashed pass keeps its number)."""
    with warehouse.transaction() as cur:
        run_id = cur.execute("SELECT coalesce(max(run_id), 0) + 1 FROM etl_pass").fetchone()[0]
        cur.execute("INSERT INTO etl_pass VALUES (?, ?, NULL, NULL)", [run_id, now])
        cur.execute("DELETE FROM etl_changed WHERE run_id <= ?", [run_id - CHANGED_KEEP_RUNS])
        cur.execute("DELETE FROM etl_keys WHERE run_id <= ?", [run_id - CHANGED_KEEP_RUNS])
        cur.execute("DELETE FROM etl_added_keys WHERE run_id <= ?", [run_id - CHANGED_KEEP_RUNS])
        drop_images(cur, run_id - IMAGE_KEEP_RUNS)
    return int(run_id)


def drop_images(cur: duckdb.DuckDBPyConnection, upto: int) -> None:
    """Forget the row images of runs up to `upto` (their etl_image_run rows first: a run is
    either recorded with all its images or not at all)."""
    tables = [t for (t,) in cur.execute("SELECT DISTINCT table_name FROM etl_image_run "
                                        "WHERE run_id <= ? AND kept", [upto]).fetchall()]
    cur.execute("DELETE FROM etl_image_run WHERE run_id <= ?", [upto])
    for t in tables:
        cur.execute(f"DELETE FROM {q(IMAGE_PREFIX + t)} WHERE _run_id <= ?", [upto])


def _code_lists(cur: duckdb.DuckDBPyConnection, contract: Contract, system: str) -> dict[str, list[str]]:
    rows = cur.execute(f"SELECT code_type, list(code_value) FROM {system}_code "
                       "WHERE is_deleted = 0 GROUP BY 1").fetchall()
    if rows:
        return {t: list(v) for t, v in rows}
    lists: dict[str, list[str]] = {}     # code table not loaded yet: the contract's lists
    for (t, v) in contract.codes.get(f"{system}_code", {}):
        lists.setdefault(t, []).append(v)
    return lists


def _check_columns(source: Source, table: Table) -> None:
    present = source.columns(table.name)
    if present is None:
        raise SchemaDrift(f"source `{source.name}` ({source.describe()}): table `{table.name}` "
                          "of the contract does not exist at the source")
    missing = [c for c in table.column_names if c not in present]
    if missing:
        raise SchemaDrift(f"source `{source.name}` ({source.describe()}): table `{table.name}` lacks "
                          f"contract column(s) {', '.join(f'`{c}`' for c in missing)}; "
                          "the table is skipped until the source or contract/sources.sql is fixed")


def _rule_inputs(cur: duckdb.DuckDBPyConnection, table: Table, contract: Contract,
                 inputs: RuleInputs) -> tuple[dict[str, list[str]], list[str] | None]:
    if table.system not in inputs.code_lists:
        inputs.code_lists[table.system] = _code_lists(cur, contract, table.system)
    if not inputs.orgs_read:
        inputs.orgs = [r[0] for r in cur.execute("SELECT org_no FROM mis_org WHERE is_deleted = 0").fetchall()]
        inputs.orgs_read = True
    orgs = inputs.orgs
    if table.name == "mis_org":       # a parent arriving in the same batch is known
        orgs = sorted(set(orgs or ()) | {r[0] for r in cur.execute(
            "SELECT org_no FROM _chg WHERE is_deleted = 0").fetchall()})
    # before the first mis_org load every org would look unknown: no evidence, no flag
    return inputs.code_lists[table.system], orgs or None


def _narrowed_low(first: object, low: datetime) -> datetime | None:
    """An inclusive lower bound that still holds every non-stale row of a probed window, or None
    (read the whole window) when the smallest raw updated_at is not a plain timestamp."""
    ts = first if isinstance(first, datetime) else parse_ts(first)
    if ts is None or ts.tzinfo is not None:
        return None
    bound = ts.replace(microsecond=0)
    # SQLite compares the text: the bound's text must not sort after the row's own text
    if not isinstance(first, datetime) and ts_literal(bound)[1:-1] > str(first):
        return None
    return bound if bound > low else None


def _stage_source_window(cur: duckdb.DuckDBPyConnection, source: Source, table: Table,
                         low: datetime, high: datetime, count: int | None,
                         new: int | None = None) -> tuple[int, bool]:
    """Stage a window read from the source; a large one is probed by key first, and only the
    part from its first non-stale row on is read in full. Returns the rows in the window and
    whether `_batch` was staged (not when the probe found only stale re-reads). `new`: the rows
    above the previous high; when they are most of the window the probe would find little to
    drop, so it is skipped (city: 87 k terminals re-stamped every minute, a 1 s probe for nothing)."""
    mostly_new = count is not None and new is not None and 2 * new >= count
    if count is None or count <= PROBE_ROWS or not source.can_probe or mostly_new:
        return stage_window(cur, table, source.prepare(cur, table, low, high)), True
    read, fresh, first = probe_window(cur, table, source.select_sql(table, low, high, [*table.key, "updated_at"]),
                                      source.name)
    if fresh == 0:
        return read, False
    bound = _narrowed_low(first, low)
    from_sql = source.select_sql(table, bound, high, from_incl=True) if bound else source.prepare(cur, table, low, high)
    stage_window(cur, table, from_sql)
    return read, True


def merge_from(cur: duckdb.DuckDBPyConnection, table: Table, from_sql: str | None, res: TableResult,
               run_id: int, settings: Settings, contract: Contract, inputs: RuleInputs,
               full: bool, started: float, source: Source | None = None, count: int | None = None,
               new: int | None = None) -> TableResult:
    """Stage the rows `from_sql` reads (None: the window of `res` from `source`, `count` rows)
    and run the merge statements (caller's transaction). `full`: the target is empty (first
    load). A window read is held to SOURCE_TIMEOUT_S; a full load may take minutes."""
    if from_sql is None:
        with deadline(cur, source.timeout_s, f"source `{source.name}` table `{table.name}`"):
            res.rows_read, staged = _stage_source_window(cur, source, table, res.window_low,
                                                         res.window_high, count, new)
        if not staged:
            res.duration_ms = int((time.monotonic() - started) * 1000)
            return res
    else:
        res.rows_read = stage_full(cur, table, from_sql) if full else stage_window(cur, table, from_sql)
    if inputs.open_rejects is None:
        inputs.open_rejects, inputs.open_flags = open_counts(cur, res.source)
    rules = table_rules(table, contract)
    codes, orgs = _rule_inputs(cur, table, contract, inputs) if res.rows_read else ({}, None)
    merge_batch(cur, table, rules, res, run_id, local_now(settings.timezone), inputs, codes, orgs,
                target_had_rows=not full)
    if res.rows_merged:
        inputs.forget_after(table)
    res.duration_ms = int((time.monotonic() - started) * 1000)
    return res


def drop_temps(cur: duckdb.DuckDBPyConnection) -> None:
    for v in TEMP_VIEWS:
        cur.execute(f"DROP VIEW IF EXISTS {v}")
    for t in TEMP_TABLES:
        cur.execute(f"DROP TABLE IF EXISTS {t}")


class _SourceWriter:
    """The open transaction of a source and the run rows and watermarks that commit with it."""

    def __init__(self, cur: duckdb.DuckDBPyConnection, source: str, run_id: int, settings: Settings) -> None:
        self.cur, self.source, self.run_id, self.settings = cur, source, run_id, settings
        self.pending: list[TableResult] = []
        self.open = False

    def begin(self) -> None:
        if not self.open:
            self.cur.execute("BEGIN TRANSACTION")
            self.open = True

    def commit(self, freshness: SourceResult | None = None) -> None:
        """Run rows, watermarks of the loaded tables (and the source's freshness) with the rows."""
        if not (self.open or self.pending or freshness):
            return
        self.begin()
        try:
            now = local_now(self.settings.timezone)
            insert_run_rows(self.cur, self.run_id, self.pending, now)
            advance_watermarks(self.cur, self.source, [r for r in self.pending if r.ok])
            record_rereads(self.cur, self.source, [r for r in self.pending if r.ok and r.reread])
            record_sweeps(self.cur, self.source, [r for r in self.pending if r.ok and (r.sweep_moved or r.reread)])
            if freshness is not None:
                _write_freshness(self.cur, freshness, now)
            self.cur.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        self.open = False
        self.pending.clear()

    def rollback(self) -> None:
        if self.open:
            self.open = False
            self.cur.execute("ROLLBACK")


def _write_freshness(cur: duckdb.DuckDBPyConnection, result: SourceResult, now: datetime) -> None:
    prev = cur.execute("SELECT last_good_high FROM etl_freshness WHERE source = ?", [result.source]).fetchone()
    good = result.high if result.ok else (prev[0] if prev else None)
    cur.execute("DELETE FROM etl_freshness WHERE source = ?", [result.source])
    cur.execute("INSERT INTO etl_freshness VALUES (?, ?, ?, ?, ?)",
                [result.source, good, now, result.status, result.error])


def _fail(result: SourceResult, res: TableResult, exc: BaseException) -> None:
    msg = f"{exc.__class__.__name__}: {exc}"
    log.error("source %s table %s failed: %s", result.source, res.table_name, msg)
    res.status, res.error = "failed", msg
    result.status, result.error = "failed", msg


def _lows(settings: Settings, tables: list[Table], marks: dict[str, datetime]
          ) -> tuple[dict[str, datetime | None], dict[str, tuple[datetime, datetime]]]:
    """Each table's window low (None: full load), and for nightly tables the older part of their
    long overlap, (long low, short low]: read only where the guard's counts differ, or by the sweep."""
    lows: dict[str, datetime | None] = {}
    older: dict[str, tuple[datetime, datetime]] = {}
    for t in tables:
        mark = marks.get(t.name)
        if mark is None:
            lows[t.name] = None
            continue
        short = mark - timedelta(seconds=settings.etl_overlap_s)
        long = mark - timedelta(seconds=settings.etl_meter_overlap_s)
        if not is_nightly(t) or long >= short:
            lows[t.name] = short
        elif settings.etl_meter_reread_s == 0:
            lows[t.name] = long
        else:
            lows[t.name] = short
            older[t.name] = (long, short)
    return lows, older


def _edges(rng: tuple[datetime, datetime], bucket_s: int) -> list[datetime]:
    """Bucket edges of the older range: (e[0], e[1]], ..., (e[n-1], e[n]], the last one shorter."""
    low, high = rng
    step = timedelta(seconds=bucket_s)
    edges = [low]
    while edges[-1] + step < high:
        edges.append(edges[-1] + step)
    return [*edges, high]


@dataclass
class _Guard:
    """The older range of one nightly table, bucketed, with the source's count per bucket."""
    edges: list[datetime]
    counts: list[int | None]

    @staticmethod
    def label(table_name: str, i: int) -> str:
        return f"{table_name} older {i}"

    def windows(self, table: Table) -> list[tuple[Table, datetime, datetime]]:
        return [(table, lo, hi) for lo, hi in zip(self.edges, self.edges[1:])]


def _stage_moved(cur: duckdb.DuckDBPyConnection, source: Source, table: Table, high: datetime) -> str:
    """Temp table `_moved`: the raw keys of the rows the source holds above the window's high (a 补采
    version written within the safety lag). Small: seconds of writes."""
    far = datetime(9999, 12, 31, 23, 59, 59)
    if source.can_probe:
        cur.execute(f"CREATE OR REPLACE TEMP TABLE _moved AS {source.select_sql(table, high, far, table.key)}")
    else:
        cur.execute(f"CREATE OR REPLACE TEMP TABLE _moved AS {source.prepare(cur, table, high, far)}")
    return "_moved"


def _pick_buckets(guard: _Guard, held: list[int], cursor: datetime | None, sweep_due: bool,
                  budget: int) -> tuple[list[int], datetime | None, bool]:
    """The buckets to re-read this pass, within `budget` source rows (at least one when any is
    wanted): those whose counts differ first, then the sweep's next slice. Returns them, the
    sweep's cursor after this pass and whether the sweep moved."""
    counts = [c if c is not None else budget for c in guard.counts]   # unknown: assume the worst
    differ = [i for i, (c, h) in enumerate(zip(guard.counts, held)) if c is None or c != h]
    chosen: list[int] = []
    used = 0
    for i in differ:
        if chosen and used + counts[i] > budget:
            return chosen, cursor, False        # the rest differs still next pass, and is read then
        chosen.append(i)
        used += counts[i]
    if cursor is None and not sweep_due:
        return chosen, None, False
    start = guard.edges[0] if cursor is None else cursor
    n = len(guard.edges) - 1
    i = next((j for j in range(n) if guard.edges[j + 1] > start), n)
    while i < n and (used == 0 or used + counts[i] <= budget):
        if i not in chosen:
            chosen.append(i)
            used += counts[i]
        i += 1
    return sorted(chosen), (None if i >= n else guard.edges[i]), True


def _guard_older(cur: duckdb.DuckDBPyConnection, source: Source, table: Table, res: TableResult,
                 guard: _Guard, cursor: datetime | None, sweep_due: bool, run_id: int, settings: Settings,
                 contract: Contract, inputs: RuleInputs) -> None:
    """The count guard of a nightly table's long overlap, after its short window was merged (so a
    version that moved from the older range into the short window is counted where the source has
    it now, and one that moved above the window's high is left out of the warehouse's counts).
    Buckets whose counts differ are read as before the guard (probed by key, stale re-reads
    dropped); so is the sweep's next slice, which re-reads the whole range bucket by bucket every
    ETL_METER_REREAD_S (it catches what counts cannot: a removed row hiding a late one). Every
    read is folded into `res`, whose window then starts at the lowest bucket read."""
    with deadline(cur, source.timeout_s, f"source `{source.name}` table `{table.name}` (keys above high)"):
        moved = _stage_moved(cur, source, table, res.window_high)
    held = held_counts(cur, table, source.name, guard.edges, moved)
    chosen, new_cursor, moved_sweep = _pick_buckets(guard, held, cursor, sweep_due,
                                                    settings.etl_meter_reread_rows)
    if moved_sweep:
        res.sweep_moved, res.sweep_cursor = True, new_cursor
        res.reread = new_cursor is None
    for lo, hi in _runs([i for i in chosen if guard.counts[i] != 0]):   # known empty: nothing to read
        part = TableResult(source.name, table.name, guard.edges[lo], guard.edges[hi + 1])
        count = sum(c for c in guard.counts[lo:hi + 1] if c is not None)
        merge_from(cur, table, None, part, run_id, settings, contract, inputs, False, time.monotonic(),
                   source, count)
        res.add(part)
        res.window_low = min(res.window_low, part.window_low)


def _runs(indexes: list[int]) -> list[tuple[int, int]]:
    """Sorted indexes as (first, last) runs of consecutive ones."""
    out: list[tuple[int, int]] = []
    for i in indexes:
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def _load_tables(cur: duckdb.DuckDBPyConnection, source: Source, tables: list[Table], result: SourceResult,
                 writer: _SourceWriter, run_id: int, settings: Settings, contract: Contract,
                 batched: bool) -> None:
    """Load every table; `batched`: the windowed tables share one transaction."""
    marks = read_watermarks(cur, source.name)
    lows, older = _lows(settings, tables, marks)
    last_sweeps, cursors = read_rereads(cur, source.name), read_sweeps(cur, source.name)
    drift: dict[str, SchemaDrift] = {}
    for t in tables:
        try:
            _check_columns(source, t)
        except SchemaDrift as exc:
            drift[t.name] = exc
    loaded = [t for t in tables if lows[t.name] is not None and t.name not in drift]
    windowed = [(t, lows[t.name], result.high) for t in loaded]
    labels = [t.name for t in loaded]
    guards: dict[str, _Guard] = {}
    for t in loaded:
        if marks[t.name] > lows[t.name]:      # the part above the previous high: rows not seen yet
            windowed.append((t, marks[t.name], result.high))
            labels.append(f"{t.name} new")
        if t.name in older:
            guards[t.name] = g = _Guard(_edges(older[t.name], settings.etl_meter_bucket_s), [])
            windowed += g.windows(t)
            labels += [g.label(t.name, i) for i in range(len(g.edges) - 1)]
    counts = source.window_counts(windowed, labels) if windowed else {}
    for name, g in guards.items():
        g.counts = [counts.get(g.label(name, i)) for i in range(len(g.edges) - 1)]
    inputs = RuleInputs()
    for table in tables:
        started = time.monotonic()
        low = lows[table.name]
        res = TableResult(source.name, table.name, low, result.high)
        result.tables.append(res)
        if table.name in drift:
            _fail(result, res, drift[table.name])
            writer.pending.append(res)
            continue
        guard = guards.get(table.name)
        empty = low is not None and counts.get(table.name) == 0
        if empty and guard is None:
            res.duration_ms = int((time.monotonic() - started) * 1000)
            writer.pending.append(res)
            continue
        full = low is None and cur.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {q(table.name)} LIMIT 1)").fetchone()[0] == 0
        res.reread = is_nightly(table) and guard is None
        if full or not batched:
            writer.commit()              # a full load, or one table per transaction, stands alone
        writer.begin()
        try:
            if not empty:
                merge_from(cur, table, source.prepare(cur, table, low, result.high) if low is None else None, res,
                           run_id, settings, contract, inputs, full, started, source, counts.get(table.name),
                           counts.get(f"{table.name} new"))
            if guard is not None:
                last = last_sweeps.get(table.name)
                due = last is None or (result.high - last).total_seconds() >= settings.etl_meter_reread_s
                _guard_older(cur, source, table, res, guard, cursors.get(table.name), due, run_id,
                             settings, contract, inputs)
                res.duration_ms = int((time.monotonic() - started) * 1000)
        except SourceUnavailable:
            raise
        except (duckdb.Error, ValueError) as exc:
            writer.rollback()
            inputs = RuleInputs()          # what it read may include the rolled-back rows
            if batched:
                raise _BatchFailed(str(exc)) from exc
            _fail(result, res, exc)
            drop_temps(cur)
            insert_run_row(cur, run_id, res, local_now(settings.timezone))  # the failure is evidence on its own
            continue
        writer.pending.append(res)
        if full or not batched:
            writer.commit()


def run_source(settings: Settings, warehouse: Warehouse, name: str, run_id: int,
               contract: Contract | None = None, force_kind: str | None = None,
               cur: duckdb.DuckDBPyConnection | None = None) -> SourceResult:
    """Load every contract table of one source on its own cursor (`cur`, taken from the
    warehouse when None, closed at the end); never raises for source or table problems."""
    contract = contract or load_contract()
    cur = cur or warehouse.cursor()
    tables = contract.system_tables(name)
    source = open_source(name, settings.source_url(name), settings.source_timeout_s,
                         settings.timezone, force_kind)
    result = SourceResult(name)
    writer = _SourceWriter(cur, name, run_id, settings)
    try:
        source.open(cur, warehouse.extension_dir)
        result.high = source.clock(tables) - timedelta(seconds=settings.etl_safety_lag_s)
        try:
            _load_tables(cur, source, tables, result, writer, run_id, settings, contract, batched=True)
        except _BatchFailed as exc:
            log.warning("run %s: source %s: %s; loading its tables one by one", run_id, name, exc)
            writer = _SourceWriter(cur, name, run_id, settings)
            result = SourceResult(name, high=result.high)
            _load_tables(cur, source, tables, result, writer, run_id, settings, contract, batched=False)
        writer.commit(freshness=result)
    except SourceUnavailable as exc:
        log.error("run %s: source %s unavailable: %s", run_id, name, exc)
        writer.rollback()
        for t in writer.pending:
            if t.ok and t.rows_read:
                t.status, t.error = "failed", f"rolled back: {exc}"
        result.status, result.error = "failed", str(exc)
        writer.pending.append(TableResult(name, "*", None, result.high, status="failed", error=str(exc)))
        drop_temps(cur)
        writer.commit(freshness=result)
    finally:
        try:
            drop_temps(cur)
            source.close(cur)
        except duckdb.Error:
            pass
    cur.close()
    return result


# flags of the other systems read the MIS customers, org tree and code tables: MIS goes first
FIRST = ("mis",)
# the metering tables are most of a load; the other sources run beside them on the second core
LANES = (("meter",), ("cs", "dist"))
SCANNER_OF_KIND = {"sqlite": "sqlite_scanner", "postgres": "postgres_scanner"}


def _lanes(names: list[str]) -> list[list[str]]:
    lanes = [[n for n in lane if n in names] for lane in LANES]
    lanes[-1] += [n for n in names if not any(n in lane for lane in LANES)]
    return [lane for lane in lanes if lane]


def _preload_scanners(settings: Settings, warehouse: Warehouse, names: list[str], force_kind: str | None) -> None:
    """LOAD the scanners before the threads start (loading is per database, not per cursor)."""
    kinds = {force_kind or open_source(n, settings.source_url(n), settings.source_timeout_s).kind for n in names}
    cur = warehouse.cursor()
    try:
        for kind in kinds:
            if kind in SCANNER_OF_KIND:
                load_scanner(cur, SCANNER_OF_KIND[kind], warehouse.extension_dir)
    except Exception as exc:   # noqa: BLE001 -- only a head start: the source's own open() reports it
        log.warning("scanner preload: %s", exc)
    finally:
        cur.close()


def run_pass(settings: Settings, warehouse: Warehouse, sources: tuple[str, ...] = SOURCE_NAMES,
             force_kind: str | None = None) -> PassResult:
    """One pass over the sources; a down source fails alone. Dimensions follow their inputs.

    MIS first; then, with ETL_PARALLEL=1 (off by default: no gain measured on 2 cores), meter
    in one thread and cs, dist in another, each source on its own cursor and in its own
    transactions exactly as when run one after the other (the sources write disjoint rows:
    their own tables, and their own source's rows of the bookkeeping tables), so the
    crash-safety contract is unchanged."""
    warehouse.migrate()
    contract = load_contract()
    run_id = new_run_id(warehouse, local_now(settings.timezone))
    result = PassResult(run_id, {})

    def one(name: str, cur: duckdb.DuckDBPyConnection | None = None) -> None:
        result.sources[name] = run_source(settings, warehouse, name, run_id, contract, force_kind, cur)
        log.info("run %s: source %s %s (%s rows merged)", run_id, name, result.sources[name].status,
                 sum(t.rows_merged for t in result.sources[name].tables))

    for name in [n for n in sources if n in FIRST]:
        one(name)
    rest = [n for n in sources if n not in FIRST]
    lanes = _lanes(rest) if settings.etl_parallel else [rest]
    if len(lanes) > 1:
        _preload_scanners(settings, warehouse, rest, force_kind)
        curs = {n: warehouse.cursor() for lane in lanes for n in lane}    # cursors made on this thread

        def lane_run(lane: list[str]) -> None:
            for name in lane:
                one(name, curs[name])
        with ThreadPoolExecutor(max_workers=len(lanes), thread_name_prefix="etl") as pool:
            for f in [pool.submit(lane_run, lane) for lane in lanes]:
                f.result()
    else:
        for name in rest:
            one(name)
    result.sources = {n: result.sources[n] for n in sources}     # the caller's order
    cur = warehouse.cursor()
    result.dims_rebuilt = dims.rebuild_if_changed(cur)
    cur.execute("UPDATE etl_pass SET finished_at = ?, ok = ? WHERE run_id = ?",
                [local_now(settings.timezone), result.ok, run_id])
    cur.close()
    return result
