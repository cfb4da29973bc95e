"""Validate, dedupe and merge one staged table into the warehouse.

Staging types the raw rows with TRY_CAST (a value that does not cast is a rejected row with its
reason, never a crash) into temp table `_batch`, keeping the newest version per key. A window
read also drops stale re-reads first (the warehouse already holds that version or a newer one),
so what is left of `_batch` is exactly the rejects plus the changed rows; most of an overlap
re-read ends there. The merge statements run inside the caller's transaction (one per source
in an incremental pass, see `etl.pipeline`): rejects and their release, dirty business dates,
DELETE+INSERT of the changed rows, business-rule flags and their release.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

import duckdb

from etl.contract import Column, Table
from etl.rules import TableRules
from etl.schema import quote_ident as q

CHANGED_VIEW = "CREATE OR REPLACE TEMP VIEW _chg AS SELECT * FROM _batch WHERE NOT _bad"


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
    reread: bool = False      # a sweep of the whole long overlap ended (or the table loaded in full)
    # the periodic sweep of the long overlap: whether this pass moved it, and up to which
    # updated_at it has re-read (None: no sweep in progress)
    sweep_moved: bool = False
    sweep_cursor: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def add(self, other: TableResult) -> None:
        """Fold in a second read of the same table in the same pass (the long overlap)."""
        self.rows_read += other.rows_read
        self.rows_merged += other.rows_merged
        self.rows_rejected += other.rows_rejected
        self.rows_flagged += other.rows_flagged
        for k, n in other.rejected_by_reason.items():
            self.rejected_by_reason[k] = self.rejected_by_reason.get(k, 0) + n


@dataclass
class RuleInputs:
    """Code lists and org units the flags check against, read once per source and transaction."""
    code_lists: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    orgs: list[str] | None = None
    orgs_read: bool = False
    open_rejects: dict[str, int] | None = None
    open_flags: dict[str, int] | None = None
    # tables whose images a batch of this transaction kept: a later batch of the same run meets
    # them (etl/load.py _keep_images)
    imaged: set[str] = field(default_factory=set)

    def forget_after(self, table: Table) -> None:
        """A merge of a code table or of mis_org changes what later tables are checked against."""
        if table.name.endswith("_code"):
            self.code_lists.pop(table.system, None)
        if table.name == "mis_org":
            self.orgs_read = False


def _raw(c: Column) -> str:
    return f"r.{q(c.name)}"


def _typed(c: Column) -> str:
    return f"TRY_CAST(r.{q(c.name)} AS {c.duckdb_type})"


def _cast_name(c: Column) -> str:
    return q(f"_t_{c.name}")


def _checks(table: Table) -> list[tuple[str, str]]:
    """One (condition, reason) per check; the reason is '<kind>:<column>'. The typed values are
    columns `_t_<name>` of `r` already (each TRY_CAST computed once per row, see _batch_sql)."""
    out = []
    for c in table.columns:
        raw, typed = _raw(c), f"r.{_cast_name(c)}"
        if c.name in table.key:
            out.append((f"{raw} IS NULL OR CAST({raw} AS VARCHAR) = ''", f"missing_key:{c.name}"))
        elif c.not_null:
            # an empty string is no value either (sources write '' where a code is missing)
            out.append((f"{raw} IS NULL OR CAST({raw} AS VARCHAR) = ''", f"missing_required:{c.name}"))
        kind = {"TIMESTAMP": "bad_timestamp", "DATE": "bad_date"}.get(c.base_type, "bad_number")
        if c.base_type != "VARCHAR":
            out.append((f"{raw} IS NOT NULL AND CAST({raw} AS VARCHAR) <> '' AND {typed} IS NULL",
                        f"{kind}:{c.name}"))
        if c.base_type in ("SMALLINT", "INTEGER", "BIGINT"):
            # TRY_CAST('1.5' AS INTEGER) rounds to 2: a fraction is not a faithful integer
            out.append((f"{typed} IS NOT NULL AND TRY_CAST({raw} AS DOUBLE) <> {typed}", f"bad_number:{c.name}"))
        if c.base_type == "VARCHAR" and "(" in c.type:
            n = int(c.type.split("(")[1].rstrip(")"))
            out.append((f"length(CAST({raw} AS VARCHAR)) > {n}", f"too_long:{c.name}"))
    return out


def _reason_exprs(table: Table) -> list[str]:
    """One CASE per check; each yields '<reason>:<column>' or NULL."""
    return [f"CASE WHEN {cond} THEN '{reason}' END" for cond, reason in _checks(table)]


def _bad_expr(table: Table) -> str:
    """True when any check fails (a NULL condition fails no check, as in CASE WHEN)."""
    conds = [f"({cond})" for cond, _ in _checks(table)]
    return "coalesce(" + " OR ".join(conds) + ", false)" if conds else "false"


def _key_text(table: Table, alias: str) -> str:
    parts = [f"coalesce(CAST({alias}.{q(k)} AS VARCHAR), '')" for k in table.key]
    return parts[0] if len(parts) == 1 else "concat_ws('|', " + ", ".join(parts) + ")"


def _key_join(table: Table, a: str, b: str) -> str:
    return " AND ".join(f"{a}.{q(k)} = {b}.{q(k)}" for k in table.key)


def _newest_per_key(table: Table) -> str:
    # rows without a usable key are all kept (they are rejects)
    key_ok = " AND ".join(f"{q(k)} IS NOT NULL" for k in table.key)
    part = ", ".join(q(k) for k in table.key)
    return (f"QUALIFY NOT ({key_ok}) "
            f"OR row_number() OVER (PARTITION BY {part} ORDER BY updated_at DESC NULLS LAST) = 1")


def _batch_sql(table: Table, rows_sql: str, where: str = "", dedupe: bool = True) -> str:
    casts = ", ".join(f"{_typed(c)} AS {_cast_name(c)}" for c in table.columns)
    cols = ", ".join(f"r.{_cast_name(c)} AS {q(c.name)}" for c in table.columns)
    reasons = "list_filter([" + ", ".join(_reason_exprs(table)) + "], x -> x IS NOT NULL)"
    raw_struct = "{" + ", ".join(f"'{c.name}': r.{q(c.name)}" for c in table.columns) + "}"
    # Each value is cast once (innermost query) and the checks read the cast column: written
    # inline, the checks' TRY_CASTs ran a second time. One boolean per row decides; the list
    # of reasons and the raw values as JSON are built only for the rows it marks (CASE
    # evaluates its branch for those rows alone).
    # The newest version per key decides (an older clean version never hides a newer bad one).
    return f"""CREATE OR REPLACE TEMP TABLE _batch AS
        SELECT * FROM (
            SELECT {_key_text(table, 'r')} AS _row_key, r._bad,
                   CASE WHEN r._bad THEN {reasons} END AS _reasons,
                   CASE WHEN r._bad THEN CAST(to_json({raw_struct}) AS VARCHAR) END AS _raw_json,
                   {cols}
            FROM (SELECT r.*, {_bad_expr(table)} AS _bad
                  FROM (SELECT r.*, {casts} FROM ({rows_sql}) r) r) r {where}) b
        {_newest_per_key(table) if dedupe else ''}"""


def stage_full(cur: duckdb.DuckDBPyConnection, table: Table, from_sql: str) -> int:
    """First load into an empty table: `_batch` in one pass over the source; the window
    function that keeps the newest version per key runs only when a key is duplicated (a
    sort of millions of rows otherwise spent on nothing). Returns the rows read."""
    read = cur.execute(_batch_sql(table, from_sql, dedupe=False)).fetchone()[0]
    keys = ", ".join(q(k) for k in table.key)
    key_ok = " AND ".join(f"{q(k)} IS NOT NULL" for k in table.key)
    dup = cur.execute(f"SELECT count(*) FROM (SELECT 1 FROM _batch WHERE {key_ok} GROUP BY {keys} "
                      "HAVING count(*) > 1 LIMIT 1)").fetchone()[0]
    if dup:
        cur.execute(f"CREATE OR REPLACE TEMP TABLE _batch AS SELECT * FROM _batch {_newest_per_key(table)}")
    cur.execute(CHANGED_VIEW)
    return read


def _fresh(table: Table, rows: str) -> str:
    """Rows of `rows` (alias w, raw values) that are not stale: the warehouse holds neither this
    version nor a newer one; an untyped updated_at is never stale."""
    match = " AND ".join(f"t.{q(k)} = TRY_CAST(w.{q(k)} AS {table.column(k).duckdb_type})" for k in table.key)
    return (f"SELECT * FROM {rows} w WHERE NOT EXISTS (SELECT 1 FROM {q(table.name)} t WHERE {match} "
            "AND t.updated_at >= TRY_CAST(w.updated_at AS TIMESTAMP))")


def probe_window(cur: duckdb.DuckDBPyConnection, table: Table, keys_sql: str, source: str) -> tuple[int, int, object]:
    """Read only key and updated_at of a window: (rows, rows still to load, smallest raw
    updated_at of those). A long overlap re-read (26 h of nightly readings every minute) mostly
    ends here. A version already rejected and still open (same key, same updated_at text) needs
    no second look either: re-reading it would only find its rejection open."""
    read = cur.execute(f"CREATE OR REPLACE TEMP TABLE _keys AS {keys_sql}").fetchone()[0]
    key_given = " AND ".join(f"coalesce(CAST(w.{q(k)} AS VARCHAR), '') <> ''" for k in table.key)
    rejected = (f"{key_given} AND EXISTS (SELECT 1 FROM etl_reject e WHERE e.source = ? AND e.table_name = ? "
                f"AND e.resolved_at IS NULL AND e.row_key = {_key_text(table, 'w')} "
                "AND json_extract_string(e.raw, '$.updated_at') = CAST(w.updated_at AS VARCHAR))")
    fresh, first = cur.execute(f"SELECT count(*), min(updated_at) FROM ({_fresh(table, '_keys')}) w "
                               f"WHERE NOT ({rejected})", [source, table.name]).fetchone()
    return read, fresh, first


def stage_window(cur: duckdb.DuckDBPyConnection, table: Table, from_sql: str) -> int:
    """A window (or any read into a table that has rows): the raw rows are materialised once,
    stale re-reads are dropped before typing, the rest is typed and deduplicated into `_batch`.
    Returns the rows read from the source."""
    read = cur.execute(f"CREATE OR REPLACE TEMP TABLE _win AS {from_sql}").fetchone()[0]
    if read == 0:
        cur.execute(_batch_sql(table, "SELECT * FROM _win"))
        cur.execute(CHANGED_VIEW)
        return 0
    cur.execute(_batch_sql(table, _fresh(table, "_win")))
    cur.execute(CHANGED_VIEW)
    return read


def batch_counts(cur: duckdb.DuckDBPyConnection, res: TableResult) -> None:
    """Changed and rejected rows of `_batch` (one statement)."""
    rows = cur.execute("SELECT split_part(_reasons[1], ':', 1), count(*) FROM _batch GROUP BY 1").fetchall()
    res.rejected_by_reason = {r: n for r, n in sorted(rows, key=lambda x: x[0] or "") if r}
    res.rows_rejected = sum(res.rejected_by_reason.values())
    res.rows_merged = sum(n for r, n in rows if r is None)


def flag_rows(cur: duckdb.DuckDBPyConnection, table: Table, rules: TableRules,
              code_lists: dict[str, list[str]], org_list: list[str] | None) -> int:
    """Build temp table _flags (row_key, rule, detail) for the changed rows; return its size."""
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
        # NOT EXISTS, not NOT IN: NOT IN built a hash table of the whole parent (3.5 M customers at
        # city, 0.55 s a table a pass); the anti join builds on the changed rows and scans one column
        parts.append(f"SELECT _row_key, 'orphan:{col}', {q(col)} FROM _chg c WHERE {q(col)} IS NOT NULL "
                     f"AND NOT EXISTS (SELECT 1 FROM {q(parent)} p WHERE p.{q(pcol)} = c.{q(col)}){self_ref}")
    for start, end in rules.intervals:
        parts.append(f"SELECT _row_key, 'end_before_start:{start}>{end}', "
                     f"CAST({q(start)} AS VARCHAR) || ' > ' || CAST({q(end)} AS VARCHAR) FROM _chg "
                     f"WHERE {q(end)} < {q(start)}")
    for col in rules.nonneg:
        parts.append(f"SELECT _row_key, 'negative:{col}', CAST({q(col)} AS VARCHAR) FROM _chg WHERE {q(col)} < 0")
    body = " UNION ALL ".join(parts) if parts else "SELECT NULL, NULL, NULL WHERE false"
    return cur.execute("CREATE OR REPLACE TEMP TABLE _flags AS SELECT CAST(c0 AS VARCHAR) AS row_key, "
                       "CAST(c1 AS VARCHAR) AS rule, CAST(c2 AS VARCHAR) AS detail "
                       f"FROM ({body}) f(c0, c1, c2)", params).fetchone()[0]


def _dirty_sql(rules: TableRules, old: str | None) -> str:
    """Business dates of the changed rows and of the versions they replace (table `old`), when
    the versions are not compared: every column counts as changed (NULL)."""
    dates = "[" + ", ".join(rules.business_dates) + "]"
    parts = [f"SELECT unnest({dates}) AS d FROM _chg"]
    if old:
        parts.append(f"SELECT unnest({dates}) FROM {old}")
    return (f"SELECT DISTINCT d, CAST(NULL AS VARCHAR[]) FROM ({' UNION ALL '.join(parts)}) "
            "WHERE d IS NOT NULL")


def _flags_sql(rules: TableRules, table: Table) -> str:
    """Per business date of the changed rows and of the versions they replace (temp table _old;
    NULL: rows whose dates are all NULL), whether a row carrying it is new (n) and, per
    non-key column, whether a row carrying it changed it (f0, f1, ...). Both records of the ETL
    read it: the dirty dates with their columns, and the run's changed columns (etl_changed).
    One flag per column and row, ORed per date: lists of names built per row cost 1.7 us a row
    (0.17 s for a city minute's 100 k terminal heartbeats). A register's update (rules.archive)
    carries fewer dates: see below."""
    dates = "[" + ", ".join(rules.business_dates) + "]"
    found = f"o.{q(table.key[0])} IS NOT NULL"
    cols = [c.name for c in table.columns if c.name not in table.key]
    per_row = "".join(f", o.{q(c)} IS DISTINCT FROM c.{q(c)} AS f{i}" for i, c in enumerate(cols))
    per_date = "".join(f", bool_or(f{i}) FILTER (WHERE found) AS f{i}" for i in range(len(cols)))
    both = "list_concat(c._ds, o._ds)"
    if rules.archive:
        # A register's row is the current state of a thing: an update that leaves it deleted or
        # not is dated by the day of the update (updated_at) and by the dates it moves, old and
        # new. A new row, and one deleted or restored, keep every date of both versions.
        moved = ", ".join(f"CASE WHEN o._ds[{i}] IS DISTINCT FROM c._ds[{i}] "
                          f"THEN [o._ds[{i}], c._ds[{i}]] ELSE CAST([] AS DATE[]) END"
                          for i in range(1, len(rules.business_dates) + 1))
        both = (f"CASE WHEN o.is_deleted IS NOT DISTINCT FROM c.is_deleted "
                f"THEN list_concat([CAST(c.updated_at AS DATE)], flatten([{moved}])) ELSE {both} END")
    return f"""SELECT d, bool_or(NOT found) AS n{per_date}
        FROM (SELECT unnest(CASE WHEN {found} THEN {both} ELSE c._ds END) AS d,
                     {found} AS found{per_row}
              FROM (SELECT *, {dates} AS _ds FROM _chg) c
              LEFT JOIN (SELECT *, {dates} AS _ds FROM _old) o ON {_key_join(table, 'o', 'c')})
        GROUP BY d"""


# Above this many changed rows a batch's replaced versions are not copied aside (a restatement
# of millions of readings): its dates are read in place and every column counts as changed.
TRACK_MAX_ROWS = 200_000
# Above this many merged rows a run records no keys of the table (etl_keys holds one NULL key):
# readers of etl_keys fall back to the rows' updated_at. A minute pass merges tens of rows.
KEYS_MAX_ROWS = 20_000
# Up to this many merged rows a batch of a dated table keeps their images (etl_image__<table>:
# the versions it replaced and the versions it merged); above it (a night's batch of readings,
# 100 k terminal heartbeats at city) none, and a KPI pass reads the dates in place. Either way
# etl_image_run says so. A minute's retries of collection readings are tens of rows.
IMAGE_MAX_ROWS = 20_000
IMAGE_PREFIX = "etl_image__"
# etl_changed markers: TRACKED is written for every dirty table of a run (so that "no column
# changed" differs from "not tracked"), ANY when rows were added or not compared.
TRACKED, ANY = "", "*"


def _old_versions(table: Table) -> str:
    """The stored versions of the changed rows (one probe of the table)."""
    keys = ", ".join(q(k) for k in table.key)
    return (f"SELECT t.* FROM {q(table.name)} t "
            f"SEMI JOIN (SELECT {keys} FROM _chg) c ON {_key_join(table, 't', 'c')}")


def _column_names(table: Table, flag: str) -> str:
    """The list of the non-key columns whose flag (_flags_sql's f0, f1, ... through `flag`, a
    format with {i}) is true."""
    cols = [c.name for c in table.columns if c.name not in table.key]
    names = ", ".join(f"CASE WHEN {flag.format(i=i)} THEN '{c}' END" for i, c in enumerate(cols))
    return f"list_filter([{names}], x -> x IS NOT NULL)"


def _dirty_flagged_sql(table: Table) -> str:
    """The dirty dates with the columns changed on them, from _dflags (_flags_sql)."""
    return (f"SELECT d, CASE WHEN n THEN NULL ELSE {_column_names(table, 'COALESCE(f{i}, FALSE)')} END "
            "FROM _dflags WHERE d IS NOT NULL")


def _changed_sql(table: Table) -> str:
    """The etl_changed markers of a merge (parameters run, source, table), from _dflags: the
    columns in which a changed row differs from the version it replaces, and ANY when a row is
    new (a new row can change any aggregate). The KPI worker leaves a KPI alone when none of the
    columns it reads changed (kpis/wake.py)."""
    cols = [c.name for c in table.columns if c.name not in table.key]
    flags = "".join(f", bool_or(f{i}) AS f{i}" for i in range(len(cols)))
    marks = (f"list_concat(['{TRACKED}'], CASE WHEN n THEN ['{ANY}'] ELSE [] END, "
             f"{_column_names(table, 'f{i}')})")
    return f"SELECT ?, ?, ?, unnest({marks}) FROM (SELECT bool_or(n) AS n{flags} FROM _dflags)"


def _keep_images(cur: duckdb.DuckDBPyConnection, table: Table, run_id: int, src: str,
                 again: bool = True) -> None:
    """The run's images of the table: the versions it replaces (_old, _after false) and the
    versions it merges (_chg, _after true), with the run in etl_image_run. A KPI pass compares a
    past day's facts over the versions before and after its runs (kpis/images.py): a collection
    reading retried after 09:00 of the next day leaves its day's success rate as it was, and
    re-reading the day's 3.5 M readings to find that out was 1.7 s of a real city minute."""
    names = ", ".join(q(c.name) for c in table.columns)
    image = q(IMAGE_PREFIX + table.name)
    cur.execute(f"CREATE TABLE IF NOT EXISTS {image} AS SELECT CAST(NULL AS BIGINT) AS _run_id, "
                f"CAST(NULL AS BOOLEAN) AS _after, {names} FROM {q(table.name)} LIMIT 0")
    if not again:     # the run's first batch of the table (5.1 -> 2.6 ms for 20 readings)
        cur.execute(f"INSERT INTO {image} SELECT ?, FALSE, {names} FROM _old "
                    f"UNION ALL SELECT ?, TRUE, {names} FROM _chg", [run_id, run_id])
        cur.execute("INSERT INTO etl_image_run VALUES (?, ?, ?, TRUE)", [run_id, src, table.name])
        return
    # A nightly table is merged in several batches a run, and a key may come in two of them
    # (again: an earlier batch of this run kept images of the table): the run keeps one image
    # a side per key, the version before its first batch (none when that batch added the key)
    # and the version after its last.
    mine = f"(SELECT * FROM {image} WHERE _run_id = ?) i"
    cur.execute(f"INSERT INTO {image} SELECT ?, FALSE, {names} FROM _old o "
                f"WHERE NOT EXISTS (SELECT 1 FROM {mine} WHERE {_key_join(table, 'i', 'o')})",
                [run_id, run_id])
    cur.execute(f"DELETE FROM {image} t USING _chg c WHERE t._run_id = ? AND t._after "
                f"AND {_key_join(table, 't', 'c')}", [run_id])
    cur.execute(f"INSERT INTO {image} SELECT ?, TRUE, {names} FROM _chg", [run_id])
    cur.execute("INSERT INTO etl_image_run VALUES (?, ?, ?, TRUE)", [run_id, src, table.name])


def _record_added(cur: duckdb.DuckDBPyConnection, table: Table, run_id: int, src: str,
                  compared: bool) -> None:
    """The keys a batch too large for etl_keys added (no stored version in _old), in
    etl_added_keys; one NULL key when they are unknown (the versions not compared) or more than
    KEYS_MAX_ROWS. A city minute merges ~90 k terminal heartbeats, a column no kept table reads:
    a terminal new among them made the KPI worker rebuild k_settle_mp whole (kpis/prelude.py),
    ~6 s one city minute in four, where its key alone says which points to re-derive."""
    if not compared:
        cur.execute("INSERT INTO etl_added_keys VALUES (?, ?, ?, NULL)", [run_id, src, table.name])
        return
    key = q(table.key[0])
    added = cur.execute(f"SELECT CAST(c.{key} AS VARCHAR) FROM _chg c ANTI JOIN _old o ON o.{key} = c.{key} "
                        f"LIMIT {KEYS_MAX_ROWS + 1}").fetchall()
    if len(added) > KEYS_MAX_ROWS:
        cur.execute("INSERT INTO etl_added_keys VALUES (?, ?, ?, NULL)", [run_id, src, table.name])
    elif added:
        cur.execute("INSERT INTO etl_added_keys SELECT ?, ?, ?, unnest(?)",
                    [run_id, src, table.name, [k for (k,) in added]])


def merge_batch(cur: duckdb.DuckDBPyConnection, table: Table, rules: TableRules, res: TableResult,
                run_id: int, now: datetime, inputs: RuleInputs, code_lists: dict[str, list[str]],
                org_list: list[str] | None, target_had_rows: bool) -> None:
    """The statements of one staged table, inside the caller's transaction: rejects, dirty
    dates, rows, flags. The run row and watermark are the caller's (they commit together)."""
    src, tname = res.source, res.table_name
    batch_counts(cur, res)
    if res.rows_rejected:
        # one open rejection per (key, reason, raw values): a re-read window does not duplicate it
        cur.execute("""INSERT INTO etl_reject
            SELECT ?, ?, ?, b._row_key, b._reasons[1], b._raw_json, ?, NULL, NULL FROM _batch b
            WHERE b._bad AND NOT EXISTS (SELECT 1 FROM etl_reject e
                WHERE e.source = ? AND e.table_name = ? AND e.resolved_at IS NULL
                  AND e.row_key = b._row_key AND e.reason = b._reasons[1] AND e.raw = b._raw_json)""",
                    [run_id, src, tname, now, src, tname])
    if not res.rows_merged:
        return
    if inputs.open_rejects.get(tname):
        cur.execute("""UPDATE etl_reject SET resolved_at = ?, resolved_run_id = ?
            WHERE source = ? AND table_name = ? AND resolved_at IS NULL
              AND row_key IN (SELECT _row_key FROM _chg)""", [now, run_id, src, tname])
    if rules.business_dates:    # before the DELETE: the replaced versions count too
        old = None
        if target_had_rows and res.rows_merged <= TRACK_MAX_ROWS:
            cur.execute(f"CREATE OR REPLACE TEMP TABLE _old AS {_old_versions(table)}")
            old = "_old"
        elif target_had_rows:
            old = f"({_old_versions(table)})"
        dirty = "INSERT INTO etl_dirty (run_id, source, table_name, business_date, changed_columns) "
        if old == "_old":
            cur.execute(f"CREATE OR REPLACE TEMP TABLE _dflags AS {_flags_sql(rules, table)}")
            cur.execute(f"{dirty} SELECT ?, ?, ?, * FROM ({_dirty_flagged_sql(table)})",
                        [run_id, src, tname])
            cur.execute(f"INSERT INTO etl_changed {_changed_sql(table)}", [run_id, src, tname])
            if res.rows_merged <= IMAGE_MAX_ROWS:
                _keep_images(cur, table, run_id, src, again=tname in inputs.imaged)
                inputs.imaged.add(tname)
            else:
                cur.execute("INSERT INTO etl_image_run VALUES (?, ?, ?, FALSE)", [run_id, src, tname])
        else:   # a first load adds every row; a huge restatement is not compared
            cur.execute(f"{dirty} SELECT ?, ?, ?, * FROM ({_dirty_sql(rules, old)})",
                        [run_id, src, tname])
            cur.execute("INSERT INTO etl_changed SELECT ?, ?, ?, unnest([?, ?])",
                        [run_id, src, tname, TRACKED, ANY])
            cur.execute("INSERT INTO etl_image_run VALUES (?, ?, ?, FALSE)", [run_id, src, tname])
    if len(table.key) == 1:
        if res.rows_merged <= KEYS_MAX_ROWS:
            cur.execute(f"INSERT INTO etl_keys SELECT ?, ?, ?, CAST({q(table.key[0])} AS VARCHAR) "
                        "FROM _chg", [run_id, src, tname])
        else:
            cur.execute("INSERT INTO etl_keys VALUES (?, ?, ?, NULL)", [run_id, src, tname])
            _record_added(cur, table, run_id, src, compared=old == "_old" if rules.business_dates else False)
    names = ", ".join(q(c.name) for c in table.columns)
    tgt = q(table.name)
    if target_had_rows:
        cur.execute(f"DELETE FROM {tgt} t USING _chg c WHERE {_key_join(table, 't', 'c')}")
    cur.execute(f"INSERT INTO {tgt} ({names}) SELECT {names} FROM _chg")
    res.rows_flagged = flag_rows(cur, table, rules, code_lists, org_list)
    if inputs.open_flags.get(tname):
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


def open_counts(cur: duckdb.DuckDBPyConnection, source: str) -> tuple[dict[str, int], dict[str, int]]:
    """Open rejections and open flags per table of a source (UPDATEs are skipped where none)."""
    rows = cur.execute("""SELECT 'reject', table_name, count(*) FROM etl_reject
            WHERE source = ? AND resolved_at IS NULL GROUP BY 2
        UNION ALL SELECT 'dq', table_name, count(*) FROM etl_dq
            WHERE source = ? AND resolved_at IS NULL GROUP BY 2""", [source, source]).fetchall()
    return ({t: n for k, t, n in rows if k == "reject"}, {t: n for k, t, n in rows if k == "dq"})


def _run_values(run_id: int, res: TableResult, now: datetime) -> list[object]:
    return [run_id, res.source, res.table_name, res.window_low, res.window_high, res.rows_read,
            res.rows_merged, res.rows_rejected, json.dumps(res.rejected_by_reason, sort_keys=True),
            res.duration_ms, res.status, res.error, now]


def insert_run_rows(cur: duckdb.DuckDBPyConnection, run_id: int, results: list[TableResult],
                    now: datetime) -> None:
    """Append the etl_run rows of tables (or of a failed source, table_name '*') in one statement."""
    if not results:
        return
    one = "(" + ", ".join("?" * 13) + ")"
    params = [v for res in results for v in _run_values(run_id, res, now)]
    cur.execute(f"INSERT INTO etl_run VALUES {', '.join([one] * len(results))}", params)


def insert_run_row(cur: duckdb.DuckDBPyConnection, run_id: int, res: TableResult, now: datetime) -> None:
    """Append the etl_run row of one table (or of a failed source, table_name '*')."""
    insert_run_rows(cur, run_id, [res], now)


def _replace_highs(cur: duckdb.DuckDBPyConnection, table: str, source: str, results: list[TableResult]) -> None:
    """Replace the (source, table_name) rows of a bookkeeping table with each result's high."""
    if not results:
        return
    cur.execute(f"DELETE FROM {table} WHERE source = ? AND list_contains(?, table_name)",
                [source, [r.table_name for r in results]])
    cur.execute(f"INSERT INTO {table} VALUES {', '.join(['(?, ?, ?)'] * len(results))}",
                [v for r in results for v in (source, r.table_name, r.window_high)])


def advance_watermarks(cur: duckdb.DuckDBPyConnection, source: str, results: list[TableResult]) -> None:
    """Set the watermark of each loaded table to its window's high (caller's transaction)."""
    _replace_highs(cur, "etl_watermark", source, results)


def record_rereads(cur: duckdb.DuckDBPyConnection, source: str, results: list[TableResult]) -> None:
    """Remember the high of each table whose whole long overlap was read (caller's transaction)."""
    _replace_highs(cur, "etl_reread", source, results)


def read_rereads(cur: duckdb.DuckDBPyConnection, source: str) -> dict[str, datetime]:
    """The high of the last full re-read of the long overlap, per table."""
    return dict(cur.execute("SELECT table_name, max(high) FROM etl_reread WHERE source = ? GROUP BY 1",
                            [source]).fetchall())


def record_sweeps(cur: duckdb.DuckDBPyConnection, source: str, results: list[TableResult]) -> None:
    """Save where each moved sweep stands: its cursor, or no row once it ended (caller's transaction)."""
    if not results:
        return
    cur.execute("DELETE FROM etl_reread_sweep WHERE source = ? AND list_contains(?, table_name)",
                [source, [r.table_name for r in results]])
    going = [r for r in results if r.sweep_cursor is not None]
    if going:
        cur.execute(f"INSERT INTO etl_reread_sweep VALUES {', '.join(['(?, ?, ?)'] * len(going))}",
                    [v for r in going for v in (source, r.table_name, r.sweep_cursor)])


def read_sweeps(cur: duckdb.DuckDBPyConnection, source: str) -> dict[str, datetime]:
    """The cursor of every sweep in progress, per table."""
    return dict(cur.execute("SELECT table_name, max(sweep_cursor) FROM etl_reread_sweep WHERE source = ? "
                            "GROUP BY 1", [source]).fetchall())


def held_counts(cur: duckdb.DuckDBPyConnection, table: Table, source: str, edges: list[datetime],
                moved: str | None) -> list[int]:
    """What the warehouse knows of the source's rows per bucket `(edges[i], edges[i + 1]]`: the
    rows it holds plus the keys rejected there and still open (a rejected row is at the source, not
    here), less the keys in temp table `moved` (raw key values): their newer version is at the
    source above the window's high, so the source no longer counts them in any bucket."""
    low, high, n = edges[0], edges[-1], len(edges) - 1
    step_us = int((edges[1] - edges[0]).total_seconds() * 1_000_000)
    bucket = "least((epoch_us({u}) - epoch_us($low::TIMESTAMP) - 1) // $step, $last)"
    in_range = "{u} > $low AND {u} <= $high"
    parts = [f"""SELECT {bucket.format(u='t.updated_at')} AS b, count(*) AS n FROM {q(table.name)} t
                 WHERE {in_range.format(u='t.updated_at')} GROUP BY b"""]
    reject_ts = "TRY_CAST(json_extract_string(e.raw, '$.updated_at') AS TIMESTAMP)"
    not_moved_key = ""
    if moved:
        # subtracted by a semi join that builds on the few moved keys: a NOT EXISTS per held row
        # cost 2.0 s at city (3.5 M readings in the range) against 0.3 s
        typed = ", ".join(f"TRY_CAST({q(k)} AS {table.column(k).duckdb_type}) AS {q(k)}" for k in table.key)
        parts.append(f"""SELECT {bucket.format(u='t.updated_at')} AS b, -count(*) AS n FROM {q(table.name)} t
                          SEMI JOIN (SELECT {typed} FROM {moved}) m ON {_key_join(table, 't', 'm')}
                          WHERE {in_range.format(u='t.updated_at')} GROUP BY b""")
        not_moved_key = f"AND e.row_key NOT IN (SELECT {_key_text(table, 'm')} FROM {moved} m)"
    parts.append(f"""SELECT {bucket.format(u='u')} AS b, count(*) AS n FROM (
                         SELECT any_value({reject_ts}) AS u FROM etl_reject e
                         WHERE e.source = $source AND e.table_name = $table AND e.resolved_at IS NULL
                           {not_moved_key} AND {in_range.format(u=reject_ts)}
                         GROUP BY e.row_key)
                     GROUP BY b""")
    rows = cur.execute(f"SELECT b, sum(n) FROM ({' UNION ALL '.join(parts)}) GROUP BY b",
                       {"low": low, "high": high, "step": step_us, "last": n - 1, "source": source,
                        "table": table.name}).fetchall()
    held = [0] * n
    for b, c in rows:
        held[int(b)] = int(c)
    return held


def read_watermarks(cur: duckdb.DuckDBPyConnection, source: str) -> dict[str, datetime]:
    """The saved high of every table of a source."""
    return dict(cur.execute("SELECT table_name, max(high) FROM etl_watermark WHERE source = ? GROUP BY 1",
                            [source]).fetchall())
