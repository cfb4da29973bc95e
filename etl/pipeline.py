"""One ETL pass: every source, every contract table, incremental by updated_at.

A source that is down or too slow fails alone (recorded in etl_run and etl_freshness); the
next pass catches up from its saved watermarks. Each table commits in its own transaction
with its watermark, so a crash at any point re-reads the same window and converges.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb

from etl import dims
from etl.contract import Contract, Table, load_contract
from etl.errors import SchemaDrift, SourceUnavailable
from etl.load import TableResult, commit_table, flag_rows, insert_run_row, stage_batch, with_watermarks
from etl.rules import table_rules
from etl.schema import quote_ident as q
from etl.settings import SOURCE_NAMES, Settings
from etl.sources import Source, deadline, local_now, open_source
from etl.warehouse import Warehouse

log = logging.getLogger(__name__)
TEMP_VIEWS = ("_bad", "_good", "_chg")
TEMP_TABLES = ("_raw", "_batch", "_chgt", "_old", "_flags")


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


def is_nightly(table: Table) -> bool:
    """Metering tables filled by the nightly collection run (longer overlap)."""
    return table.system == "meter" and any(k in ("data_date", "data_time") for k in table.key)


def new_run_id(warehouse: Warehouse, now: datetime) -> int:
    """Allocate the pass's run id (committed at once so a crashed pass keeps its number)."""
    with warehouse.transaction() as cur:
        run_id = cur.execute("SELECT coalesce(max(run_id), 0) + 1 FROM etl_pass").fetchone()[0]
        cur.execute("INSERT INTO etl_pass VALUES (?, ?, NULL, NULL)", [run_id, now])
    return int(run_id)


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


def load_table(cur: duckdb.DuckDBPyConnection, source: Source, table: Table, high: datetime,
               run_id: int, settings: Settings, contract: Contract) -> TableResult:
    """Extract the window of one table and commit it; exceptions propagate to the caller."""
    started = time.monotonic()
    row = cur.execute("SELECT max(high) FROM etl_watermark WHERE source = ? AND table_name = ?",
                      [source.name, table.name]).fetchone()
    overlap = settings.etl_meter_overlap_s if is_nightly(table) else settings.etl_overlap_s
    low = None if row[0] is None else row[0] - timedelta(seconds=overlap)
    res = TableResult(source.name, table.name, low, high)
    _check_columns(source, table)
    # a full load may take minutes; only a window read is held to SOURCE_TIMEOUT_S
    return merge_from(cur, source, table, source.prepare(cur, table, low, high), res, run_id,
                      settings, contract, timed=low is not None, started=started)


def merge_from(cur: duckdb.DuckDBPyConnection, source: Source, table: Table, from_sql: str,
               res: TableResult, run_id: int, settings: Settings, contract: Contract,
               timed: bool, started: float) -> TableResult:
    """Validate, dedupe and merge the rows `from_sql` reads; the watermark becomes res.window_high."""
    target_empty = cur.execute(f"SELECT count(*) FROM (SELECT 1 FROM {q(table.name)} LIMIT 1)").fetchone()[0] == 0
    if timed:
        with deadline(cur, source.timeout_s, f"source `{source.name}` table `{table.name}`"):
            res.rows_read = stage_batch(cur, table, from_sql, target_empty)
    else:
        res.rows_read = stage_batch(cur, table, from_sql, target_empty)
    if res.rows_read == 0:
        # most tables most minutes: the run row and watermark are committed with the source's
        # other empty windows in one transaction (a crash before it only re-reads nothing)
        res.duration_ms = int((time.monotonic() - started) * 1000)
        res.status = "empty"
        _drop_temps(cur)
        return res
    org_sql = "SELECT org_no FROM mis_org WHERE is_deleted = 0"
    if table.name == "mis_org":       # a parent arriving in the same batch is known
        org_sql += " UNION SELECT org_no FROM _chg WHERE is_deleted = 0"
    orgs = [r[0] for r in cur.execute(org_sql).fetchall()]
    rules = table_rules(table, contract)
    # before the first mis_org load every org would look unknown: no evidence, no flag
    flag_rows(cur, table, rules, _code_lists(cur, contract, table.system), orgs or None)
    commit_table(cur, table, rules, res, run_id, started, local_now(settings.timezone))
    _drop_temps(cur)
    return res


def _drop_temps(cur: duckdb.DuckDBPyConnection) -> None:
    for v in TEMP_VIEWS:
        cur.execute(f"DROP VIEW IF EXISTS {v}")
    for t in TEMP_TABLES:
        cur.execute(f"DROP TABLE IF EXISTS {t}")


def _record_failure(cur: duckdb.DuckDBPyConnection, run_id: int, res: TableResult, now: datetime) -> None:
    _drop_temps(cur)
    insert_run_row(cur, run_id, res, now)      # autocommit: the failure is evidence on its own


def _update_freshness(cur: duckdb.DuckDBPyConnection, result: SourceResult, now: datetime) -> None:
    prev = cur.execute("SELECT last_good_high FROM etl_freshness WHERE source = ?", [result.source]).fetchone()
    good = result.high if result.ok else (prev[0] if prev else None)
    cur.execute("BEGIN TRANSACTION")
    try:
        cur.execute("DELETE FROM etl_freshness WHERE source = ?", [result.source])
        cur.execute("INSERT INTO etl_freshness VALUES (?, ?, ?, ?, ?)",
                    [result.source, good, now, result.status, result.error])
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise


def _commit_empty(cur: duckdb.DuckDBPyConnection, run_id: int, result: SourceResult,
                  settings: Settings) -> None:
    empty = [t for t in result.tables if t.status == "empty"]
    for t in empty:
        t.status = "ok"
    if empty:
        with_watermarks(cur, run_id, empty, local_now(settings.timezone))


def run_source(settings: Settings, warehouse: Warehouse, name: str, run_id: int,
               contract: Contract | None = None, force_kind: str | None = None) -> SourceResult:
    """Load every contract table of one source; never raises for source or table problems."""
    contract = contract or load_contract()
    cur = warehouse.cursor()
    result = SourceResult(name)
    tables = contract.system_tables(name)
    source = open_source(name, settings.source_url(name), settings.source_timeout_s,
                         settings.timezone, force_kind)
    try:
        source.open(cur, warehouse.extension_dir)
        result.high = source.clock(tables) - timedelta(seconds=settings.etl_safety_lag_s)
        for table in tables:
            try:
                result.tables.append(load_table(cur, source, table, result.high, run_id, settings, contract))
            except SourceUnavailable:
                raise
            except (SchemaDrift, duckdb.Error, ValueError) as exc:
                msg = f"{exc.__class__.__name__}: {exc}"
                log.error("run %s: source %s table %s failed: %s", run_id, name, table.name, msg)
                res = TableResult(name, table.name, None, result.high, status="failed", error=msg)
                _record_failure(cur, run_id, res, local_now(settings.timezone))
                result.tables.append(res)
                result.status, result.error = "failed", msg
        _commit_empty(cur, run_id, result, settings)
    except SourceUnavailable as exc:
        log.error("run %s: source %s unavailable: %s", run_id, name, exc)
        _commit_empty(cur, run_id, result, settings)
        result.status, result.error = "failed", str(exc)
        _record_failure(cur, run_id, TableResult(name, "*", None, result.high, status="failed",
                                                 error=str(exc)), local_now(settings.timezone))
    finally:
        try:
            source.close(cur)
        except duckdb.Error:
            pass
    _update_freshness(cur, result, local_now(settings.timezone))
    cur.close()
    return result


def run_pass(settings: Settings, warehouse: Warehouse, sources: tuple[str, ...] = SOURCE_NAMES,
             force_kind: str | None = None) -> PassResult:
    """One pass over the sources; a down source fails alone. Dimensions follow their inputs."""
    warehouse.migrate()
    contract = load_contract()
    run_id = new_run_id(warehouse, local_now(settings.timezone))
    result = PassResult(run_id, {})
    for name in sources:
        result.sources[name] = run_source(settings, warehouse, name, run_id, contract, force_kind)
        log.info("run %s: source %s %s (%s rows merged)", run_id, name, result.sources[name].status,
                 sum(t.rows_merged for t in result.sources[name].tables))
    cur = warehouse.cursor()
    result.dims_rebuilt = dims.rebuild_if_changed(cur)
    cur.execute("UPDATE etl_pass SET finished_at = ?, ok = ? WHERE run_id = ?",
                [local_now(settings.timezone), result.ok, run_id])
    cur.close()
    return result
