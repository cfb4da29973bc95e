"""Nightly reconciliation: per table and business day over the last N days, compare key count
and a hash of (key, updated_at) between source and warehouse; reload the days that differ.

The business day of a table is its first business date or time column (the KPIs' period:
accept_time of a work order, data_date of a daily reading; a month column `*_ym` counts as
its first day); tables without one (codes, orgs) are compared by creation day. "The last N
days" count back from the source's clock, like the ETL windows.

The incremental window covers bounded lateness only (a row stamped behind the overlap is never
read again); this catches such rows, clocks that moved backwards and rows missing at the source
(hard deletes, flagged `missing_at_source` in etl_dq, the warehouse row is kept).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date, timedelta

import duckdb

from etl.contract import Contract, Table, load_contract
from etl.errors import SourceUnavailable
from etl.load import RuleInputs, TableResult, advance_watermarks, insert_run_row
from etl.pipeline import drop_temps, merge_from, new_run_id
from etl.schema import quote_ident as q
from etl.settings import SOURCE_NAMES, Settings
from etl.sources import Source, local_now, open_source
from etl.warehouse import Warehouse

log = logging.getLogger(__name__)


@dataclass
class TableRecon:
    """Days that differed for one table and what the reload did."""
    source: str
    table_name: str
    days_checked: int
    days_differing: list[date]
    rows_merged: int = 0
    missing_at_source: int = 0
    error: str | None = None


def business_day(table: Table) -> tuple[str, bool]:
    """(column, is_month) the table is compared by: its first business date, else created_at."""
    for c in table.columns:
        if c.name in ("created_at", "updated_at"):
            continue
        if c.base_type in ("DATE", "TIMESTAMP"):
            return c.name, False
        if c.name.endswith("_ym"):
            return c.name, True
    return "created_at", False


def _day_expr(col: str, month: bool, typed: bool) -> str:
    if month:
        return f"CAST(TRY_STRPTIME(CAST({q(col)} AS VARCHAR) || '01', '%Y%m%d') AS DATE)"
    return f"CAST({q(col)} AS DATE)" if typed else f"TRY_CAST(TRY_CAST({q(col)} AS TIMESTAMP) AS DATE)"


def _source_filter(col: str, month: bool, first: date, last: date | None = None) -> str:
    """A condition the source runs on its own column (text in SQLite, typed in PostgreSQL);
    the bounds are our own dates, never user text."""
    if month:
        cond = f"{col} >= '{first:%Y%m}'"
        return cond if last is None else f"{cond} AND {col} <= '{last:%Y%m}'"
    cond = f"{col} >= '{first.isoformat()}'"
    return cond if last is None else f"{cond} AND {col} < '{(last + timedelta(days=1)).isoformat()}'"


def _day_sums(cur: duckdb.DuckDBPyConnection, table: Table, from_sql: str, typed: bool) -> dict:
    keys = ", ".join(q(k) if typed else f"TRY_CAST({q(k)} AS {table.column(k).duckdb_type})" for k in table.key)
    upd = "updated_at" if typed else "TRY_CAST(updated_at AS TIMESTAMP)"
    col, month = business_day(table)
    rows = cur.execute(f"SELECT {_day_expr(col, month, typed)} AS d, count(*), sum(hash({keys}, {upd}))::HUGEINT "
                       f"FROM ({from_sql}) GROUP BY 1").fetchall()
    return {d: (n, h) for d, n, h in rows}


def reconcile_table(cur: duckdb.DuckDBPyConnection, source: Source, table: Table, cutoff: date,
                    run_id: int, settings: Settings, contract: Contract) -> TableRecon:
    """Compare one table business day by business day since `cutoff` and reload the differing days."""
    col, month = business_day(table)
    if month:
        cutoff = cutoff.replace(day=1)
    since = _source_filter(col, month, cutoff)
    src = _day_sums(cur, table, source.where_sql(table, since), typed=False)
    wh_since = f"{_day_expr(col, month, True)} >= '{cutoff.isoformat()}'"
    wh = _day_sums(cur, table, f"SELECT * FROM {q(table.name)} WHERE {wh_since}", typed=True)
    differ = sorted(d for d in set(src) | set(wh) if d is not None and d >= cutoff and src.get(d) != wh.get(d))
    out = TableRecon(source.name, table.name, len(set(src) | set(wh)), differ)
    if not differ:
        return out
    days = " OR ".join(f"({_source_filter(col, month, d, d)})" for d in differ)
    wm = cur.execute("SELECT max(high) FROM etl_watermark WHERE source = ? AND table_name = ?",
                     [source.name, table.name]).fetchone()[0]
    res = TableResult(source.name, table.name, None, wm)
    with_rows = cur.execute(f"SELECT count(*) FROM (SELECT 1 FROM {q(table.name)} LIMIT 1)").fetchone()[0] > 0
    cur.execute("BEGIN TRANSACTION")
    try:
        merge_from(cur, table, source.where_sql(table, days), res, run_id, settings, contract, RuleInputs(),
                   full=not with_rows, started=time.monotonic())
        insert_run_row(cur, run_id, res, local_now(settings.timezone))
        if wm is not None:
            advance_watermarks(cur, source.name, [res])     # unchanged: the window goes on as before
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    out.rows_merged = res.rows_merged
    # keys the warehouse holds for those days that the source no longer has
    keys = ", ".join(q(k) for k in table.key)
    src_keys = ", ".join(f"TRY_CAST({q(k)} AS {table.column(k).duckdb_type}) AS {q(k)}" for k in table.key)
    key_text = " || '|' || ".join(f"CAST(w.{q(k)} AS VARCHAR)" for k in table.key)
    wh_days = f"list_contains(CAST(? AS DATE[]), {_day_expr(col, month, True)})"
    cur.execute(f"""CREATE OR REPLACE TEMP TABLE _gone AS
        SELECT {key_text} AS row_key FROM (SELECT {keys} FROM {q(table.name)} WHERE {wh_days}) w
        ANTI JOIN (SELECT {src_keys} FROM ({source.where_sql(table, days)})) s
        ON {' AND '.join(f'w.{q(k)} = s.{q(k)}' for k in table.key)}""", [differ])
    out.missing_at_source = cur.execute("SELECT count(*) FROM _gone").fetchone()[0]
    if out.missing_at_source:
        cur.execute("""INSERT INTO etl_dq SELECT ?, ?, ?, g.row_key, 'missing_at_source', NULL, ?, NULL
            FROM _gone g WHERE NOT EXISTS (SELECT 1 FROM etl_dq d WHERE d.source = ? AND d.table_name = ?
              AND d.row_key = g.row_key AND d.rule = 'missing_at_source' AND d.resolved_at IS NULL)""",
                    [run_id, source.name, table.name, local_now(settings.timezone), source.name, table.name])
    cur.execute("DROP TABLE IF EXISTS _gone")
    return out


def reconcile(settings: Settings, warehouse: Warehouse, days: int = 7,
              sources: tuple[str, ...] = SOURCE_NAMES) -> list[TableRecon]:
    """Reconcile every table of every reachable source over the last `days` creation days."""
    warehouse.migrate()
    contract = load_contract()
    run_id = new_run_id(warehouse, local_now(settings.timezone))
    results: list[TableRecon] = []
    cur = warehouse.cursor()
    for name in sources:
        source = open_source(name, settings.source_url(name), settings.source_timeout_s, settings.timezone)
        try:
            source.open(cur, warehouse.extension_dir)
            tables = contract.system_tables(name)
            cutoff = source.clock(tables).date() - timedelta(days=days)
            for table in tables:
                try:
                    results.append(reconcile_table(cur, source, table, cutoff, run_id, settings, contract))
                except (duckdb.Error, NotImplementedError) as exc:
                    drop_temps(cur)
                    results.append(TableRecon(name, table.name, 0, [], error=f"{exc.__class__.__name__}: {exc}"))
        except SourceUnavailable as exc:
            log.error("reconcile run %s: source %s unavailable: %s", run_id, name, exc)
            results.append(TableRecon(name, "*", 0, [], error=str(exc)))
        finally:
            try:
                source.close(cur)
            except duckdb.Error:
                pass
    cur.close()
    return results
