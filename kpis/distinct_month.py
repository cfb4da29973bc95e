"""Months of distinct-count flows from a base of the month's earlier keys.

A distinct count (call.repeat_caller_rate_24h: distinct callers, and those who called again)
cannot be summed from days, so its month to date was read whole every minute: at city its
statement took 0.04 s with 2 days in the month and 0.25 s with 10, the one cost of a minute
that grew with the month. The keys of the month's days before today do not change within
the day unless their rows are restated; the month is

    COUNT(DISTINCT key) over base ∪ today = |base| + |today's keys not in base|

per org unit, where the base holds the distinct keys of the month's rows before today, already
attributed and expanded to every unit of the KPI's levels (`kpi_distinct_key`), with their
counts (`kpi_distinct_count`). Exact: the same rows, the same distinct keys, the same counts
as the month read whole (tests/kpis/test_distinct_month.py compares them bit for bit).

Only for KPIs whose facts give keys and nothing else per row (no sample, pending or missing
column) and see their period only through ws and te, placing each row by one time in
[ws, te) (`eligible`): their rows before today are then those of a period ending at today's
start. The base is rebuilt by the first pass of a day; when the facts' SQL or the org tree
changed; when the ETL marked dirty a date of the month before today, or of the LOOKBACK before
it, in a table the KPI reads, with a change of a column the KPI reads (kpis/changes.py
dirty_dates: a call's quality check, filled two days after the call, marks the call's day but
changes no caller or time); and at every sweep if the KPI reads more than one table besides
the org tree (a change the dirty dates do not show, a row of a joined table, reaches the month
there, as for stored days; the rows of a single table mark their own dates when they change).
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta

import duckdb

from kpis import changes, day_store
from kpis.compile import attributed_facts
from kpis.dependencies import columns_named, tables_read
from kpis.periods import Period
from kpis.spec import KpiDef

# The month's days before today from which the base is used. The base path has a fixed cost
# (today's keys expanded to every unit, the anti join to the base: ~0.085 s a city minute)
# that the month read whole undercuts in its first days (0.04 s with 2 days, +0.026 s a day).
MIN_BASE_DAYS = 4

DDL = (
    """CREATE TABLE IF NOT EXISTS kpi_distinct_head (
        kpi_id VARCHAR, month DATE, upto DATE, facts_hash VARCHAR, tree VARCHAR, run_id BIGINT,
        built_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS kpi_distinct_key (
        kpi_id VARCHAR, month DATE, unit_no VARCHAR, is_num BOOLEAN, k VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS kpi_distinct_count (
        kpi_id VARCHAR, month DATE, unit_no VARCHAR, num BIGINT, den BIGINT)""",
)
_KEY_COLUMNS = {"pid", "org_no", "grid_no", "item_key", "num_key", "den_key", "num", "den"}
# The org tree's tables: a change of the tree is seen by its signature, kept with the base.
TREE_TABLES = frozenset({"mis_org", "mis_grid"})
# Facts may read rows before their window (the repeat callers' previous 24 h): a restated row
# that far before the month can change a key inside it.
LOOKBACK = timedelta(days=31)


def eligible(k: KpiDef, columns: set[str]) -> bool:
    """A distinct-count flow whose month is the distinct union of its rows before today and
    today's (see the module docstring)."""
    from kpis.registry import _period_words  # noqa: PLC0415  (the registry imports the engine)

    words = _period_words(k)
    return (k.shape == "flow" and k.num_agg == "count_distinct" and k.den_agg == "count_distinct"
            and k.kind == "ratio" and {"num_key", "den_key"} <= columns <= _KEY_COLUMNS
            and not set(words) & {"we", "grain", "hours", "as_of", "pending"}
            and "ws" in words and words.count("ws") == words.count("te"))


def _keys_sql(k: KpiDef) -> str:
    """The distinct (unit, is_num, key) of the facts over _periods, attributed and expanded to
    every unit of the KPI's levels (as compile_kpi's roll-up counts them). NULL keys are kept:
    a unit with rows but no key has a count of 0, not no row."""
    org_levels = ", ".join(f"'{lvl}'" for lvl in k.org_levels if lvl != "grid") or "NULL"
    grid = ("UNION ALL SELECT fa.attr_grid, fa.num_key, fa.den_key FROM fa "
            "WHERE fa.attr_grid IS NOT NULL") if "grid" in k.org_levels else ""
    return f"""{attributed_facts(k)},
u AS (
    SELECT an.ancestor_no AS unit_no, fa.num_key, fa.den_key
    FROM fa JOIN k_org_ancestor an ON an.unit_no = fa.attr_org
    WHERE an.ancestor_level IN ({org_levels})
    {grid}
)
SELECT DISTINCT u.unit_no, v.is_num,
       CASE WHEN v.is_num THEN CAST(u.num_key AS VARCHAR) ELSE CAST(u.den_key AS VARCHAR) END AS k
FROM u CROSS JOIN (VALUES (TRUE), (FALSE)) v(is_num)"""


def _load(con: duckdb.DuckDBPyConnection, p: Period, as_of: datetime) -> None:
    """_periods holding p alone (pid 0); te = min(p.we, as_of)."""
    from kpis.batch import load_periods  # noqa: PLC0415  (batch calls this module)

    load_periods(con, "_periods", [0], [p], as_of)


def _fresh(con: duckdb.DuckDBPyConnection, k: KpiDef, m: Period, upto: datetime, h: str,
           tree: str, refresh: bool) -> bool:
    head = con.execute("SELECT upto, facts_hash, tree, run_id FROM kpi_distinct_head "
                       "WHERE kpi_id = $k AND month = $m", {"k": k.id, "m": m.ws.date()}).fetchone()
    if (refresh and len(tables_read(k) - TREE_TABLES) > 1) or head is None \
            or head[:3] != (upto.date(), h, tree) or head[3] is None:
        return False
    try:
        dirty = changes.dirty_dates(con, head[3], tables_read(k))
    except duckdb.CatalogException:
        return False
    lo, hi = (m.ws - LOOKBACK).date(), upto.date()
    return not any(d is not None and lo <= _as_date(d) < hi and changes.touches(cols, columns_named(k, t))
                   for t, d, cols in dirty)


def _as_date(d: object) -> date:
    return d.date() if isinstance(d, datetime) else d   # type: ignore[return-value]


def _build(con: duckdb.DuckDBPyConnection, k: KpiDef, m: Period, upto: datetime, h: str,
           tree: str, run_id: int | None, at: datetime) -> None:
    _load(con, Period(m.grain, m.ws, upto), upto)    # the month's rows before upto
    con.execute("BEGIN TRANSACTION")
    try:
        for table in ("kpi_distinct_head", "kpi_distinct_key", "kpi_distinct_count"):
            con.execute(f"DELETE FROM {table} WHERE kpi_id = $k", {"k": k.id})
        con.execute(f"INSERT INTO kpi_distinct_key SELECT $k, $m, * FROM ({_keys_sql(k)})",
                    {"k": k.id, "m": m.ws.date()})
        con.execute("""INSERT INTO kpi_distinct_count
                       SELECT kpi_id, month, unit_no, COUNT(DISTINCT k) FILTER (WHERE is_num),
                              COUNT(DISTINCT k) FILTER (WHERE NOT is_num)
                       FROM kpi_distinct_key WHERE kpi_id = $k GROUP BY kpi_id, month, unit_no""",
                    {"k": k.id})
        con.execute("INSERT INTO kpi_distinct_head VALUES ($k, $m, $u, $h, $t, $r, $at)",
                    {"k": k.id, "m": m.ws.date(), "u": upto.date(), "h": h, "t": tree, "r": run_id,
                     "at": at})
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def months_from_base(con: duckdb.DuckDBPyConnection, k: KpiDef, columns: set[str],
                     ps: Sequence[Period], as_of: datetime, mode: day_store.Mode,
                     tree: str) -> list[Period]:
    """Insert into _result the rows of k's running month (a month that began before today and
    has not ended) from the base and today's keys, and those of today from its keys; return the
    other periods, which the caller evaluates as before."""
    from kpis.compile import compile_kpi  # noqa: PLC0415

    today = datetime(as_of.year, as_of.month, as_of.day)
    months = [p for p in ps if p.grain == "monthly" and p.ws < today < p.we]
    if not months or today - months[0].ws < timedelta(days=MIN_BASE_DAYS):
        return list(ps)
    m = months[0]
    h = day_store.facts_hash(k)
    if not _fresh(con, k, m, today, h, tree, mode.refresh):
        _build(con, k, m, today, h, tree, mode.run_id, mode.computed_at)
    _load(con, Period("daily", today, m.we), as_of)      # the month's rows from today's start
    con.execute(f"CREATE OR REPLACE TEMP TABLE _dkeys AS {_keys_sql(k)}")
    # the month's counts per unit: the base's, plus today's keys the base does not hold
    agg = """SELECT 0 AS pid, u.unit_no,
                    COALESCE(c.num, 0) + COALESCE(n.num, 0) AS num,
                    COALESCE(c.den, 0) + COALESCE(n.den, 0) AS den,
                    COALESCE(c.den, 0) + COALESCE(n.den, 0) AS sample,
                    FALSE AS pending, FALSE AS missing
             FROM (SELECT unit_no FROM kpi_distinct_count WHERE kpi_id = $k
                   UNION SELECT unit_no FROM _dkeys) u
             LEFT JOIN (SELECT unit_no, num, den FROM kpi_distinct_count WHERE kpi_id = $k) c
                  ON c.unit_no = u.unit_no
             LEFT JOIN (SELECT t.unit_no, COUNT(t.k) FILTER (WHERE t.is_num) AS num,
                               COUNT(t.k) FILTER (WHERE NOT t.is_num) AS den
                        FROM _dkeys t ANTI JOIN (SELECT * FROM kpi_distinct_key WHERE kpi_id = $k) b
                             ON b.unit_no = t.unit_no AND b.is_num = t.is_num AND b.k = t.k
                        GROUP BY t.unit_no) n ON n.unit_no = u.unit_no"""
    _load(con, m, as_of)
    from kpis.batch import RESULT_COLUMNS  # noqa: PLC0415

    con.execute(f"INSERT INTO _result SELECT {', '.join(RESULT_COLUMNS)} FROM ("
                + compile_kpi(k, columns, agg=agg) + ")", {"k": k.id})
    # today so far counts the same keys: its rows from _dkeys, not from its facts read again
    # (they and their roll-up were a statement of their own, ~0.03 s a city minute)
    days = [p for p in ps if p.grain == "daily" and p.ws == today]
    for d in days:
        _load(con, d, as_of)
        con.execute(f"INSERT INTO _result SELECT {', '.join(RESULT_COLUMNS)} FROM ("
                    + compile_kpi(k, columns, agg=_TODAY) + ")")
    return [p for p in ps if p != m and p not in days]


# Today's counts per unit from its keys (_dkeys: the facts of [today, as_of), as the daily
# period reads them). NULL keys count 0 (COUNT ignores them); sample = den as compile_kpi's.
_TODAY = """SELECT 0 AS pid, unit_no, COUNT(k) FILTER (WHERE is_num) AS num,
                   COUNT(k) FILTER (WHERE NOT is_num) AS den, COUNT(k) FILTER (WHERE NOT is_num) AS sample,
                   FALSE AS pending, FALSE AS missing
            FROM _dkeys GROUP BY unit_no"""
