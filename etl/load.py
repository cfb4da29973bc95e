"""Validate, dedupe and merge one staged table into the warehouse in one transaction.

Steps: type the raw stage with TRY_CAST (a value that does not cast is a rejected row with its
reason, never a crash) → keep the newest version per key (`QUALIFY row_number()`) → rows newer
than the warehouse's version → one transaction: rejects, DELETE+INSERT of the changed rows,
business-rule flags, dirty business dates, run log row, watermark.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime

import duckdb

from etl.contract import Column, Table
from etl.rules import TableRules
from etl.schema import quote_ident as q


@dataclass
class TableResult:
    """What one table's load did; also the etl_run row."""
    source: str
    table_name: str
    window_low: datetime | None
    window_high: datetime | None
    rows_read: int = 0
    rows_merged: int = 0
    rows_rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rows_flagged: int = 0
    duration_ms: int = 0
    status: str = "ok"
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _raw(c: Column) -> str:
    return f"r.{q(c.name)}"


def _typed(c: Column) -> str:
    return f"TRY_CAST(r.{q(c.name)} AS {c.duckdb_type})"


def _reason_exprs(table: Table) -> list[str]:
    """One CASE per check; each yields '<reason>:<column>' or NULL."""
    out = []
    for c in table.columns:
        raw, typed = _raw(c), _typed(c)
        if c.name in table.key:
            out.append(f"CASE WHEN {raw} IS NULL OR CAST({raw} AS VARCHAR) = '' "
                       f"THEN 'missing_key:{c.name}' END")
        elif c.not_null:
            # an empty string is no value either (sources write '' where a code is missing)
            out.append(f"CASE WHEN {raw} IS NULL OR CAST({raw} AS VARCHAR) = '' "
                       f"THEN 'missing_required:{c.name}' END")
        kind = {"TIMESTAMP": "bad_timestamp", "DATE": "bad_date"}.get(c.base_type, "bad_number")
        if c.base_type != "VARCHAR":
            out.append(f"CASE WHEN {raw} IS NOT NULL AND CAST({raw} AS VARCHAR) <> '' AND {typed} IS NULL "
                       f"THEN '{kind}:{c.name}' END")
        if c.base_type in ("SMALLINT", "INTEGER", "BIGINT"):
            # TRY_CAST('1.5' AS INTEGER) rounds to 2: a fraction is not a faithful integer
            out.append(f"CASE WHEN {typed} IS NOT NULL AND TRY_CAST({raw} AS DOUBLE) <> {typed} "
                       f"THEN 'bad_number:{c.name}' END")
        if c.base_type == "VARCHAR" and "(" in c.type:
            n = int(c.type.split("(")[1].rstrip(")"))
            out.append(f"CASE WHEN length(CAST({raw} AS VARCHAR)) > {n} THEN 'too_long:{c.name}' END")
    return out


def _key_text(table: Table, alias: str) -> str:
    parts = [f"coalesce(CAST({alias}.{q(k)} AS VARCHAR), '')" for k in table.key]
    return parts[0] if len(parts) == 1 else "concat_ws('|', " + ", ".join(parts) + ")"


def _key_join(table: Table, a: str, b: str) -> str:
    return " AND ".join(f"{a}.{q(k)} = {b}.{q(k)}" for k in table.key)


def stage_batch(cur: duckdb.DuckDBPyConnection, table: Table, from_sql: str,
                target_empty: bool) -> int:
    """Read the window once into temp table _batch (typed, reasons, newest per key); views
    _good, _bad, _chg and table _old follow. Returns the rows read from the source."""
    cols = ", ".join(f"{_typed(c)} AS {q(c.name)}" for c in table.columns)
    reasons = "list_filter([" + ", ".join(_reason_exprs(table)) + "], x -> x IS NOT NULL)"
    raw_struct = "{" + ", ".join(f"'{c.name}': r.{q(c.name)}" for c in table.columns) + "}"
    key_ok = " AND ".join(f"{q(k)} IS NOT NULL" for k in table.key)
    part = ", ".join(q(k) for k in table.key)
    # one pass over the source rows; the newest version per key decides (an older clean
    # version never hides a newer bad one); rows without a usable key are all kept (rejected)
    cur.execute(f"""CREATE OR REPLACE TEMP TABLE _batch AS
        SELECT * FROM (
            SELECT {_key_text(table, 'r')} AS _row_key, {reasons} AS _reasons,
                   CASE WHEN len(_reasons) > 0 THEN CAST(to_json({raw_struct}) AS VARCHAR) END AS _raw_json,
                   {cols}
            FROM ({from_sql}) r) b
        QUALIFY NOT ({key_ok})
             OR row_number() OVER (PARTITION BY {part} ORDER BY updated_at DESC NULLS LAST) = 1""")
    read = cur.execute("SELECT count(*) FROM _batch").fetchone()[0]
    cur.execute("CREATE OR REPLACE TEMP VIEW _bad AS SELECT _row_key, _reasons[1] AS reason, _raw_json "
                "FROM _batch WHERE len(_reasons) > 0")
    names = ", ".join(q(c.name) for c in table.columns)
    cur.execute(f"CREATE OR REPLACE TEMP VIEW _good AS SELECT _row_key, {names} FROM _batch "
                "WHERE len(_reasons) = 0")
    tgt = q(table.name)
    if target_empty:
        cur.execute("CREATE OR REPLACE TEMP VIEW _chg AS SELECT * FROM _good")
        cur.execute(f"CREATE OR REPLACE TEMP TABLE _old AS SELECT * FROM {tgt} LIMIT 0")
        return read
    first = q(table.key[0])
    # stale re-reads (warehouse already as new or newer) are not changes
    cur.execute(f"""CREATE OR REPLACE TEMP TABLE _chgt AS
        SELECT g.* FROM _good g LEFT JOIN {tgt} t ON {_key_join(table, 'g', 't')}
        WHERE t.{first} IS NULL OR t.updated_at < g.updated_at""")
    cur.execute("CREATE OR REPLACE TEMP VIEW _chg AS SELECT * FROM _chgt")
    cur.execute(f"""CREATE OR REPLACE TEMP TABLE _old AS
        SELECT t.* FROM {tgt} t SEMI JOIN _chg c ON {_key_join(table, 't', 'c')}""")
    return read


def flag_rows(cur: duckdb.DuckDBPyConnection, table: Table, rules: TableRules,
              code_lists: dict[str, list[str]], org_list: list[str] | None) -> None:
    """Build temp table _flags (row_key, rule, detail) for the changed rows."""
    parts: list[str] = []
    params: list[object] = []
    for col, ctype in rules.codes:
        parts.append(f"SELECT _row_key, 'unknown_code:{col}', {q(col)} FROM _chg "
                     f"WHERE {q(col)} IS NOT NULL AND NOT list_contains(CAST(? AS VARCHAR[]), {q(col)})")
        params.append(code_lists.get(ctype, []))
    for col in rules.orgs if org_list is not None else ():
        parts.append(f"SELECT _row_key, 'unknown_org:{col}', {q(col)} FROM _chg "
                     f"WHERE {q(col)} IS NOT NULL AND NOT list_contains(CAST(? AS VARCHAR[]), {q(col)})")
        params.append(org_list)
    for col, parent, pcol in rules.refs:
        self_ref = f" AND {q(col)} NOT IN (SELECT {q(pcol)} FROM _chg)" if parent == table.name else ""
        parts.append(f"SELECT _row_key, 'orphan:{col}', {q(col)} FROM _chg WHERE {q(col)} IS NOT NULL "
                     f"AND {q(col)} NOT IN (SELECT {q(pcol)} FROM {q(parent)}){self_ref}")
    for start, end in rules.intervals:
        parts.append(f"SELECT _row_key, 'end_before_start:{start}>{end}', "
                     f"CAST({q(start)} AS VARCHAR) || ' > ' || CAST({q(end)} AS VARCHAR) FROM _chg "
                     f"WHERE {q(end)} < {q(start)}")
    for col in rules.nonneg:
        parts.append(f"SELECT _row_key, 'negative:{col}', CAST({q(col)} AS VARCHAR) FROM _chg WHERE {q(col)} < 0")
    body = " UNION ALL ".join(parts) if parts else "SELECT NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR WHERE false"
    cur.execute("CREATE OR REPLACE TEMP TABLE _flags (row_key VARCHAR, rule VARCHAR, detail VARCHAR)")
    cur.execute(f"INSERT INTO _flags {body}", params)


def _dirty_sql(rules: TableRules) -> str | None:
    if not rules.business_dates:
        return None
    dates = "[" + ", ".join(rules.business_dates) + "]"
    return (f"SELECT DISTINCT d FROM (SELECT unnest({dates}) AS d FROM _chg "
            f"UNION ALL SELECT unnest({dates}) FROM _old) WHERE d IS NOT NULL")


def commit_table(cur: duckdb.DuckDBPyConnection, table: Table, rules: TableRules, res: TableResult,
                 run_id: int, started: float, now: datetime) -> None:
    """The one transaction of a table: rows, rejects, flags, dirty dates, run row, watermark."""
    src, tname = res.source, res.table_name
    res.rows_rejected = cur.execute("SELECT count(*) FROM _bad").fetchone()[0]
    res.rejected_by_reason = dict(cur.execute(
        "SELECT split_part(reason, ':', 1), count(*) FROM _bad GROUP BY 1 ORDER BY 1").fetchall())
    res.rows_merged = cur.execute("SELECT count(*) FROM _chg").fetchone()[0]
    res.rows_flagged = cur.execute("SELECT count(*) FROM _flags").fetchone()[0]
    names = ", ".join(q(c.name) for c in table.columns)
    tgt = q(table.name)
    open_rejects = cur.execute("SELECT count(*) FROM etl_reject WHERE source = ? AND table_name = ? "
                               "AND resolved_at IS NULL", [src, tname]).fetchone()[0]
    open_flags = cur.execute("SELECT count(*) FROM etl_dq WHERE source = ? AND table_name = ? "
                             "AND resolved_at IS NULL", [src, tname]).fetchone()[0]
    cur.execute("BEGIN TRANSACTION")
    try:
        if res.rows_rejected:
            # one open rejection per (key, reason, raw values): a re-read window does not duplicate it
            cur.execute("""INSERT INTO etl_reject
                SELECT ?, ?, ?, b._row_key, b.reason, b._raw_json, ?, NULL, NULL FROM _bad b
                WHERE NOT EXISTS (SELECT 1 FROM etl_reject e WHERE e.source = ? AND e.table_name = ?
                    AND e.resolved_at IS NULL AND e.row_key = b._row_key AND e.reason = b.reason
                    AND e.raw = b._raw_json)""", [run_id, src, tname, now, src, tname])
        if open_rejects:
            cur.execute("""UPDATE etl_reject SET resolved_at = ?, resolved_run_id = ?
                WHERE source = ? AND table_name = ? AND resolved_at IS NULL
                  AND row_key IN (SELECT _row_key FROM _good)""", [now, run_id, src, tname])
        if res.rows_merged:
            cur.execute(f"DELETE FROM {tgt} t USING _chg c WHERE {_key_join(table, 't', 'c')}")
            cur.execute(f"INSERT INTO {tgt} ({names}) SELECT {names} FROM _chg")
            if open_flags:
                cur.execute("""UPDATE etl_dq SET resolved_at = ?
                    WHERE source = ? AND table_name = ? AND resolved_at IS NULL
                      AND row_key IN (SELECT _row_key FROM _chg)
                      AND NOT EXISTS (SELECT 1 FROM _flags f
                                      WHERE f.row_key = etl_dq.row_key AND f.rule = etl_dq.rule)""",
                            [now, src, tname])
            if res.rows_flagged:
                cur.execute("""INSERT INTO etl_dq SELECT ?, ?, ?, f.row_key, f.rule, f.detail, ?, NULL
                    FROM _flags f WHERE NOT EXISTS (SELECT 1 FROM etl_dq d WHERE d.source = ?
                      AND d.table_name = ? AND d.resolved_at IS NULL AND d.row_key = f.row_key
                      AND d.rule = f.rule)""", [run_id, src, tname, now, src, tname])
            dirty = _dirty_sql(rules)
            if dirty:
                cur.execute(f"INSERT INTO etl_dirty SELECT ?, ?, ?, d FROM ({dirty})", [run_id, src, tname])
        res.duration_ms = int((time.monotonic() - started) * 1000)
        _run_and_watermark(cur, run_id, res, now)
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise


def _run_and_watermark(cur: duckdb.DuckDBPyConnection, run_id: int, res: TableResult, now: datetime) -> None:
    insert_run_row(cur, run_id, res, now)
    cur.execute("DELETE FROM etl_watermark WHERE source = ? AND table_name = ?", [res.source, res.table_name])
    cur.execute("INSERT INTO etl_watermark VALUES (?, ?, ?)", [res.source, res.table_name, res.window_high])


def with_watermarks(cur: duckdb.DuckDBPyConnection, run_id: int, results: list[TableResult],
                    now: datetime) -> None:
    """Commit empty windows: their run rows and advanced watermarks together."""
    cur.execute("BEGIN TRANSACTION")
    try:
        for res in results:
            _run_and_watermark(cur, run_id, res, now)
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise


def insert_run_row(cur: duckdb.DuckDBPyConnection, run_id: int, res: TableResult, now: datetime) -> None:
    """Append the etl_run row of a table (or of a failed source, table_name '*')."""
    cur.execute("INSERT INTO etl_run VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, res.source, res.table_name, res.window_low, res.window_high, res.rows_read,
                 res.rows_merged, res.rows_rejected, json.dumps(res.rejected_by_reason, sort_keys=True),
                 res.duration_ms, res.status, res.error, now])
