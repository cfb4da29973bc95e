"""Nightly reconciliation: per table and creation day over the last N days, compare key count
and a hash of (key, updated_at) between source and warehouse; reload the days that differ.

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
from etl.load import TableResult
from etl.pipeline import _drop_temps, merge_from, new_run_id
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


def _day_sums(cur: duckdb.DuckDBPyConnection, table: Table, from_sql: str, typed: bool) -> dict:
    keys = ", ".join(q(k) if typed else f"TRY_CAST({q(k)} AS {table.column(k).duckdb_type})" for k in table.key)
    upd = "updated_at" if typed else "TRY_CAST(updated_at AS TIMESTAMP)"
    day = "CAST(created_at AS DATE)" if typed else "TRY_CAST(TRY_CAST(created_at AS TIMESTAMP) AS DATE)"
    rows = cur.execute(f"SELECT {day} AS d, count(*), sum(hash({keys}, {upd}))::HUGEINT "
                       f"FROM ({from_sql}) GROUP BY 1").fetchall()
    return {d: (n, h) for d, n, h in rows}


def reconcile_table(cur: duckdb.DuckDBPyConnection, source: Source, table: Table, cutoff: date,
                    run_id: int, settings: Settings, contract: Contract) -> TableRecon:
    """Compare one table day by day since `cutoff` and reload the differing days."""
    since = f"created_at >= '{cutoff.isoformat()}'"        # our own date, never user text
    src = _day_sums(cur, table, source.where_sql(table, since), typed=False)
    wh = _day_sums(cur, table, f"SELECT * FROM {q(table.name)} WHERE {since}", typed=True)
    differ = sorted(d for d in set(src) | set(wh) if d is not None and src.get(d) != wh.get(d))
    out = TableRecon(source.name, table.name, len(set(src) | set(wh)), differ)
    if not differ:
        return out
    days = " OR ".join(f"(created_at >= '{d.isoformat()}' AND created_at < '{(d + timedelta(days=1)).isoformat()}')"
                       for d in differ)
    wm = cur.execute("SELECT max(high) FROM etl_watermark WHERE source = ? AND table_name = ?",
                     [source.name, table.name]).fetchone()[0]
    res = TableResult(source.name, table.name, None, wm)
    merge_from(cur, source, table, source.where_sql(table, days), res, run_id, settings, contract,
               timed=False, started=time.monotonic())
    out.rows_merged = res.rows_merged
    # keys the warehouse holds for those days that the source no longer has
    keys = ", ".join(q(k) for k in table.key)
    src_keys = ", ".join(f"TRY_CAST({q(k)} AS {table.column(k).duckdb_type}) AS {q(k)}" for k in table.key)
    key_text = " || '|' || ".join(f"CAST(w.{q(k)} AS VARCHAR)" for k in table.key)
    cur.execute(f"""CREATE OR REPLACE TEMP TABLE _gone AS
        SELECT {key_text} AS row_key FROM (SELECT {keys} FROM {q(table.name)} WHERE {days}) w
        ANTI JOIN (SELECT {src_keys} FROM ({source.where_sql(table, days)})) s
        ON {' AND '.join(f'w.{q(k)} = s.{q(k)}' for k in table.key)}""")
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
    cutoff = local_now(settings.timezone).date() - timedelta(days=days)
    results: list[TableRecon] = []
    cur = warehouse.cursor()
    for name in sources:
        source = open_source(name, settings.source_url(name), settings.source_timeout_s, settings.timezone)
        try:
            source.open(cur, warehouse.extension_dir)
            for table in contract.system_tables(name):
                try:
                    results.append(reconcile_table(cur, source, table, cutoff, run_id, settings, contract))
                except (duckdb.Error, NotImplementedError) as exc:
                    _drop_temps(cur)
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
