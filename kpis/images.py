"""Past days a change did not alter, found from the ETL's row images instead of the day's rows.

An ordinary pass reads a past day of a day-additive KPI again when the ETL marked it dirty in a
column the KPI reads (kpis/evaluate.py). At city the night's collection retries change
`coll_status` and `success_time` of tens of readings a minute, spread over the last three or
four data dates: both collection success rates read those days' 3.5 M readings each again,
every minute (1.7 s of a real city minute pass), to find the rates as they were, since a
reading retried after 09:00 of the next day does not count on its day.

The ETL keeps, per run and dated table up to etl/load.py IMAGE_MAX_ROWS merged rows, the
versions the run replaced and the versions it merged (etl_image__<table>, listed in
etl_image_run). For a day that only one such table opened, the KPI's own reduced facts
(kpis/batch.py _fr_sql) are computed twice over those rows alone: once over each changed row's
version before the first of the pass's runs, once over its version after the last. The rows
that did not change contribute to both alike, so when the two agree, per (org, grid), in every
sum and flag, the day's facts are those stored, and the day is not read. The other tables the
KPI joins are read as they are now on both sides: a change of theirs reaches the day as before
(its own dirty dates, or the sweep).

Only where that argument holds (`eligible`): a day-additive KPI (each fact placed by one time,
summed), reading the table once, by name in its own SQL (not through a prelude object, whose
rows would not follow the images; docs/decisions.md, session 23, on k_wo), each fact row from one
row of each table (`row_local`: no window, grouping, aggregate, set operation or subquery test,
which would make a fact of an unchanged row depend on a changed one), a presence query over the
table only one that asks for a row of it (compared the same way: presence is an OR over rows),
no pending items or restatement query; a day opened by that table alone; the day stored
complete and settled with the KPI's current SQL; every run since the last pass with images of
the table. Anything else is read as before. The pass refreshes its on-demand prelude tables
before it judges, so that the other tables a KPI reads are those the day would be read with.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta

import duckdb

from etl.contract import load_contract
from etl.schema import quote_ident as q
from kpis.periods import Period, day
from kpis.spec import KpiDef

log = logging.getLogger(__name__)

IMAGE_PREFIX = "etl_image__"      # etl/load.py IMAGE_PREFIX (the KPI side reads, never writes)

_COMMENT_OR_STRING = re.compile(r"'(?:[^']|'')*'|--[^\n]*")


def _code(sql: str) -> str:
    """The SQL without comments and string literals."""
    return _COMMENT_OR_STRING.sub(" ", sql)


def _word(table: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.]){re.escape(table)}(?!\w)", re.IGNORECASE)


def _rename(sql: str, table: str, to: str) -> str:
    """The SQL reading `to` wherever it names `table`, string literals left as they are."""
    out, last = [], 0
    for m in _COMMENT_OR_STRING.finditer(sql):
        out += [_word(table).sub(to, sql[last:m.start()]), m[0]]
        last = m.end()
    return "".join(out) + _word(table).sub(to, sql[last:])


# What lets one fact row depend on more than one row of the table, or on the absence of one: a
# window (call.fcr_rate counts a caller's later calls), a grouping, a distinct or aggregate, a
# set operation or a subquery test. Over the changed rows alone such facts are not the changed
# rows' share of the day's. Any of them in the KPI's SQL (conservative: also where it reads only
# another table) keeps the KPI out.
_NOT_ROW_LOCAL = re.compile(
    r"\bover\s*\(|\bgroup\s+by\b|\bdistinct\b|\bqualify\b|\bunion\b|\bexcept\b|"
    r"\bintersect\b|\bexists\b|\bin\s*\(\s*select\b|\blateral\b|\brecursive\b|"
    r"\b(?:count|sum|min|max|avg|bool_or|bool_and|list|array_agg|string_agg|arg_min|arg_max|"
    r"any_value|first|last|median|quantile\w*|mode|stddev\w*|var_\w+|variance|bit_or|bit_and|"
    r"bit_xor|histogram|approx_\w+)\s*\(",
    re.IGNORECASE)


# A presence query says whether any row of the period exists: over a table split into changed
# and unchanged rows it is the OR of the two parts, so the changed rows' presence before and after
# can be compared like the facts, as long as it asks for a row (EXISTS), not for its absence.
_NOT_ROW_PRESENCE = re.compile(_NOT_ROW_LOCAL.pattern.replace(r"\bexists\b|", "")
                               + r"|\bnot\s+exists\b", re.IGNORECASE)


# A guard: `EXISTS (SELECT 1 AS guard FROM <table> ...)`, written in a scope (kpis/sql/shared.sql
# k_coll_day) to empty a large side before DuckDB builds its hash table when no row of <table>
# falls in the periods. Uncorrelated, it is one truth value for the whole statement, and it holds
# whenever the statement has a fact row (every fact row is such a row of <table>): so the facts
# over any rows are the same with and without it, over the images too, where it is renamed with
# the table like the rest. That makes it neither a second reading of the table nor a subquery
# test that ties one fact row to others; `_unguarded` takes it out before those checks. It may
# read no table but <table> (`_guards_valid`; _periods and the prelude's macros aside): a guard
# over another table would hold or not by that table's rows, which the images do not follow.
_GUARD = re.compile(r"(\bnot\s+)?\bexists\s*\(\s*select\s+1\s+as\s+guard\s+from\s+(\w+)\b",
                    re.IGNORECASE)


def _guards(code: str) -> list[tuple[int, int, str]]:
    """(start, end, table) of each guard of the code (comments and strings taken out), NOT EXISTS
    left out (that asks for an absence: not a guard)."""
    out = []
    for m in _GUARD.finditer(code):
        if m[1]:
            continue
        depth, i = 0, code.index("(", m.start())
        for j in range(i, len(code)):
            depth += {"(": 1, ")": -1}.get(code[j], 0)
            if depth == 0:
                out.append((m.start(), j + 1, m[2]))
                break
    return out


def _unguarded(code: str) -> str:
    """The code with each guard written as TRUE."""
    for start, end, _ in reversed(_guards(code)):
        code = code[:start] + "TRUE" + code[end:]
    return code


_ALIASED = re.compile(r"\b(?:from|join)\s+(\w+)(?:\s+(?:as\s+)?(\w+))?", re.IGNORECASE)
_QUALIFIER = re.compile(r"\b(\w+)\.\w")


def _guards_valid(code: str) -> bool:
    """Whether every guard reads no table but its own (_periods and the prelude's macros aside)
    and qualifies columns only by its own tables and aliases (no outer alias: uncorrelated, as
    far as the text shows; an unqualified outer column is not caught)."""
    return all(_guard_valid(code[start:end], table) for start, end, table in _guards(code))


def _guard_valid(text: str, table: str) -> bool:
    from kpis import shared  # noqa: PLC0415
    from kpis.dependencies import _contract_tables, _prelude_tables  # noqa: PLC0415
    words = set(re.findall(r"\w+", text.lower()))
    through = _prelude_tables()
    reads = ({w for w in words if w in _contract_tables() or w in shared.definitions()}
             | {t for w in words for t in through.get(w, ())})       # a shared subquery: refused
    own = {w.lower() for m in _ALIASED.finditer(text) for w in m.groups() if w}
    return reads <= {table} and {q.lower() for q in _QUALIFIER.findall(text)} <= own


def row_local(sql: str) -> bool:
    """Whether each fact row of the SQL comes from one row of each table it reads (as far as the
    text shows: _NOT_ROW_LOCAL; a guard aside)."""
    code = _code(sql)
    return _guards_valid(code) and not _NOT_ROW_LOCAL.search(_unguarded(code))


_ELIGIBLE: dict[tuple[str, str, str], bool] = {}


def eligible(k: KpiDef, table: str) -> bool:
    """Whether the KPI's day can be judged from the table's images (module docstring). Kept by
    (id, SQL, table): a minute pass asks it for every woken KPI and opened past day."""
    key = (k.id, k.sql_text, table)
    if key not in _ELIGIBLE:
        _ELIGIBLE[key] = _eligible(k, table)
    return _ELIGIBLE[key]


def _eligible(k: KpiDef, table: str) -> bool:
    from kpis.dependencies import (_prelude_objects, _prelude_tables, _tables_read,  # noqa: PLC0415
                                   prelude_objects)
    from kpis.registry import day_additive  # noqa: PLC0415

    if (not day_additive(k) or k.settles_when_none_pending or k.restated_by
            or k.resolved_or_due or not row_local(k.values_sql)):
        return False
    through = _prelude_tables()
    if k.presence and table in _tables_read(k.presence):
        # read by name once, for a row (_NOT_ROW_PRESENCE), not through a prelude object
        code = _code(k.presence)
        if (len(_word(table).findall(code)) != 1 or _NOT_ROW_PRESENCE.search(code)
                or any(table in through.get(o, ()) for o in _prelude_objects(k.presence))):
            return False
    if any(table in through.get(o, ()) for o in prelude_objects(k)):
        return False
    return len(_word(table).findall(_unguarded(_code(k.values_sql)))) == 1


def covered(con: duckdb.DuckDBPyConnection, since: int, top: int, tables: Iterable[str]) -> set[str]:
    """Of `tables`, those whose every batch merged by a run in (since, top] (etl_run, or its
    dirty marks) kept its images (none when the warehouse has no image record)."""
    names = sorted(set(tables))
    if not names:
        return set()
    merged = """SELECT run_id, table_name FROM etl_run WHERE run_id > $since AND run_id <= $top
                  AND rows_merged > 0 AND list_contains($t, table_name) UNION """
    for runs in (merged, ""):
        try:
            rows = con.execute(f"""
                SELECT d.table_name
                FROM ({runs}SELECT run_id, table_name FROM etl_dirty
                      WHERE run_id > $since AND run_id <= $top AND list_contains($t, table_name)) d
                LEFT JOIN (SELECT run_id, table_name, bool_and(kept) AS kept FROM etl_image_run
                           GROUP BY run_id, table_name) i
                       ON i.run_id = d.run_id AND i.table_name = d.table_name
                GROUP BY d.table_name HAVING bool_and(COALESCE(i.kept, FALSE))""",
                               {"since": since, "top": top, "t": names}).fetchall()
            return {t for (t,) in rows}
        except duckdb.CatalogException:    # no run log (a test filled by hand) / no images
            continue
    return set()


def _after_sql(table: str) -> str:
    """Each key's version after the last run in ($since, $top] that merged it."""
    key = ", ".join(q(c) for c in load_contract().tables[table].key)
    return f"""SELECT * EXCLUDE (_run_id, _after) FROM {q(IMAGE_PREFIX + table)}
               WHERE _after AND _run_id > $since AND _run_id <= $top
               QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY _run_id DESC) = 1"""


def _stored_final(con: duckdb.DuckDBPyConnection, cands: Sequence[tuple[KpiDef, date]],
                  as_of: datetime) -> set[tuple[str, date]]:
    """The (KPI, day) pairs stored complete, kept (not pending) and settled, with the KPI's
    current SQL: what the day's value and the months built from it were computed from."""
    from kpis.day_store import facts_hash  # noqa: PLC0415

    ids = sorted({k.id for k, _ in cands})
    days = sorted({d for _, d in cands})
    rows = con.execute("""SELECT kpi_id, day, te, facts_hash, as_of FROM kpi_day
                          WHERE kpi_id IN (SELECT unnest($ids)) AND day IN (SELECT unnest($days))
                            AND pending IS FALSE""", {"ids": ids, "days": days}).fetchall()
    stored = {(kid, d): (te, h, at) for kid, d, te, h, at in rows}
    out = set()
    for k, d in cands:
        got = stored.get((k.id, d))
        if got is None:
            continue
        te, h, at = got
        p = day(d)
        settle = k.settles or timedelta(0)
        if (te == p.we and h == facts_hash(k) and at is not None and at >= p.we + settle
                and as_of >= p.we + settle):
            out.add((k.id, d))
    return out


def merged_rows(con: duckdb.DuckDBPyConnection, table: str, since: int, top: int,
                into: str) -> bool:
    """The rows that the runs in (since, top] merged into the table, each as the last of them
    left it, into temp table `into` (the table's columns), when every batch of those runs kept
    its images; False (nothing made) when one did not or there is no image record. The kept
    prelude table k_clock_off (kpis/prelude.py _marked) re-derives its rows from them instead of
    scanning the readings updated within a day (3.5 M after the night's collection, 0.23 s)."""
    if table not in covered(con, since, top, [table]):
        return False
    con.execute(f"CREATE OR REPLACE TEMP TABLE {into} AS {_after_sql(table)}",
                {"since": since, "top": top})
    return True


def versions(con: duckdb.DuckDBPyConnection, table: str, since: int, top: int, after: str,
             before: str) -> bool:
    """The rows that the runs in (since, top] merged into the table, each as the last of them
    left it (temp table `after`) and as it was before the first (`before`; a row the first run
    added has no such version), with the table's columns; False (nothing made) when a batch of
    those runs kept no images. The kept customer groups (kpis/prelude.py OVER_IMAGED) follow the
    customers by difference from them."""
    if table not in covered(con, since, top, [table]):
        return False
    _versions(con, table, since, top)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {after} AS SELECT * FROM _img_after")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {before} AS SELECT * FROM _img_before")
    return True


def _versions(con: duckdb.DuckDBPyConnection, table: str, since: int, top: int) -> None:
    """_img_after: each changed row's version after the last run in (since, top]; _img_before:
    its version before the first, where it had one (a row the first run added has none)."""
    key = ", ".join(q(c) for c in load_contract().tables[table].key)
    image = q(IMAGE_PREFIX + table)
    rng = "_run_id > $since AND _run_id <= $top"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _img_after AS {_after_sql(table)}",
                {"since": since, "top": top})
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _img_before AS
                    SELECT * EXCLUDE (_run_id, _after, _first) FROM (
                        SELECT *, min(_run_id) OVER (PARTITION BY {key}) AS _first
                        FROM {image} WHERE {rng})
                    WHERE NOT _after AND _run_id = _first""",
                {"since": since, "top": top})


def unchanged(con: duckdb.DuckDBPyConnection, cands: Sequence[tuple[KpiDef, str, date]],
              since: int, top: int, as_of: datetime) -> set[tuple[str, date]]:
    """Of the candidates (KPI, the one table that opened the day, day), the (KPI id, day) pairs
    whose facts over the table's changed rows are the same before and after the runs in
    (since, top]: the day is as stored. The caller checked `eligible` and `covered`."""
    final = _stored_final(con, [(k, d) for k, _, d in cands], as_of)
    cands = [(k, t, d) for k, t, d in cands if (k.id, d) in final]
    out: set[tuple[str, date]] = set()
    for table in sorted({t for _, t, _ in cands}):
        mine = [(k, d) for k, t, d in cands if t == table]
        try:
            out |= _judge(con, table, mine, since, top, as_of)
        except duckdb.Error as exc:
            # a KPI whose SQL fails here fails (alone) in the pass's own statements too; the
            # days are read as before
            log.warning("the days of %s could not be judged from its row images: %s", table, exc)
    return out


def _judge(con: duckdb.DuckDBPyConnection, table: str, mine: Sequence[tuple[KpiDef, date]],
           since: int, top: int, as_of: datetime) -> set[tuple[str, date]]:
    """unchanged() for the candidates of one table."""
    from kpis.batch import (Bounds, _bounded, _facts_sql, _note_integral, _presence_union,  # noqa: PLC0415
                            fact_columns, load_periods)

    kpis = sorted({k.id: k for k, _ in mine}.values(), key=lambda k: k.id)
    days = sorted({d for _, d in mine})
    periods: list[Period] = [day(d) for d in days]
    pid_of = {d: i for i, d in enumerate(days)}
    load_periods(con, "_periods", list(range(len(periods))), periods, as_of)
    _versions(con, table, since, top)
    items = []
    for kix, k in enumerate(kpis):
        _note_integral(con, k)
        items.append((kix, k, fact_columns(con, k)))
    lo = Bounds(min(p.ws for p in periods), min(p.te(as_of) for p in periods))
    facts = _facts_sql(items, lo)
    presence = _bounded(_presence_union(items), lo)

    differ = set()
    for what, sql in (("facts", facts), ("presence", presence)):
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _img_{what} AS
                        SELECT TRUE AS after, * FROM ({_rename(sql, table, '_img_after')})
                        UNION ALL
                        SELECT FALSE AS after, * FROM ({_rename(sql, table, '_img_before')})""")
        differ |= set(con.execute(f"""
            WITH a AS (SELECT * EXCLUDE (after) FROM _img_{what} WHERE after),
                 b AS (SELECT * EXCLUDE (after) FROM _img_{what} WHERE NOT after)
            SELECT DISTINCT kix, pid FROM ((SELECT * FROM a EXCEPT SELECT * FROM b)
                                           UNION ALL (SELECT * FROM b EXCEPT SELECT * FROM a))""").fetchall())
    kix_of = {k.id: kix for kix, k in enumerate(kpis)}
    return {(k.id, d) for k, d in mine if (kix_of[k.id], pid_of[d]) not in differ}
