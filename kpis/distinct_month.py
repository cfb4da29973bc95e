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
start, and the union of the keys of each of its days (a fact may read rows before its day, up
to LOOKBACK, as the 24 h window does; not after it, or a base kept while today's rows arrive
would be stale).

The base is kept per day (`kpi_distinct_key.day`; `kpi_distinct_day` says when each day was
read), and only the days that may have changed are read again: the days added since it was
built (the first pass of a day adds yesterday), and, for a date the ETL marked dirty in a table
the KPI reads with a change of a column the KPI reads (kpis/changes.py dirty_dates: a call's
quality check, filled two days after the call, marks the call's day but changes no caller or
time), the days of the month from that date to LOOKBACK after it. The month's counts are then
counted again over every day's keys. Read whole: a new month, a changed SQL or org tree, a base
of the older layout, and every sweep if the KPI reads more than one table besides the org tree
(a change the dirty dates do not show, a row of a joined table, reaches the month there, as for
stored days; the rows of a single table mark their own dates when they change). Around midnight
yesterday's calls still change every minute: the month was read whole each time (0.33-0.35 s of
a 10-day city minute, ~1 s with 30 days), where yesterday alone is a day's calls.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta

import duckdb

from kpis import changes, day_store
from kpis.compile import attributed_facts
from kpis.dependencies import columns_named, tables_read
from kpis.periods import Period
from kpis.periods import day as day_period
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
    # per day (a base without it, of the older layout, is read whole once)
    "ALTER TABLE kpi_distinct_key ADD COLUMN IF NOT EXISTS day DATE",
    "ALTER TABLE kpi_distinct_head ADD COLUMN IF NOT EXISTS per_day BOOLEAN",
    "CREATE TABLE IF NOT EXISTS kpi_distinct_day (kpi_id VARCHAR, month DATE, day DATE, built_at TIMESTAMP)",
)
_TABLES = ("kpi_distinct_head", "kpi_distinct_key", "kpi_distinct_count", "kpi_distinct_day")
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


def _keys_sql(k: KpiDef, per_period: bool = False) -> str:
    """The distinct (unit, is_num, key) of the facts over _periods, attributed and expanded to
    every unit of the KPI's levels (as compile_kpi's roll-up counts them); per_period: distinct
    per period, with its first day (`day`). NULL keys are kept: a unit with rows but no key has a
    count of 0, not no row."""
    org_levels = ", ".join(f"'{lvl}'" for lvl in k.org_levels if lvl != "grid") or "NULL"
    grid = ("UNION ALL SELECT fa.pid, fa.attr_grid, fa.num_key, fa.den_key FROM fa "
            "WHERE fa.attr_grid IS NOT NULL") if "grid" in k.org_levels else ""
    day = ", CAST(p.ws AS DATE) AS day" if per_period else ""
    by_day = "JOIN _periods p ON p.pid = u.pid " if per_period else ""
    return f"""{attributed_facts(k)},
u AS (
    SELECT fa.pid, an.ancestor_no AS unit_no, fa.num_key, fa.den_key
    FROM fa JOIN k_org_ancestor an ON an.unit_no = fa.attr_org
    WHERE an.ancestor_level IN ({org_levels})
    {grid}
)
SELECT DISTINCT u.unit_no, v.is_num,
       CASE WHEN v.is_num THEN CAST(u.num_key AS VARCHAR) ELSE CAST(u.den_key AS VARCHAR) END AS k{day}
FROM u {by_day}CROSS JOIN (VALUES (TRUE), (FALSE)) v(is_num)"""


def _load(con: duckdb.DuckDBPyConnection, ps: Sequence[Period], as_of: datetime) -> None:
    """_periods holding ps (pids 0..); te = min(p.we, as_of)."""
    from kpis.batch import load_periods  # noqa: PLC0415  (batch calls this module)

    load_periods(con, "_periods", list(range(len(ps))), list(ps), as_of)


def _stale_days(con: duckdb.DuckDBPyConnection, k: KpiDef, m: Period, upto: datetime, h: str,
                tree: str, refresh: bool) -> set[date] | None:
    """The days of the base that must be read (again): none when it serves as it is, None when
    the whole of it must be (module docstring)."""
    head = con.execute("SELECT month, upto, facts_hash, tree, run_id, per_day FROM kpi_distinct_head "
                       "WHERE kpi_id = $k", {"k": k.id}).fetchone()
    if (refresh and len(tables_read(k) - TREE_TABLES) > 1) or head is None \
            or head[0] != m.ws.date() or head[2:4] != (h, tree) or head[4] is None \
            or not head[5] or head[1] > upto.date():
        return None
    try:
        dirty = changes.dirty_dates(con, head[4], tables_read(k))
    except duckdb.CatalogException:
        return None
    first, end = m.ws.date(), upto.date()
    out = set(_days(max(head[1], first), end))       # added since the base was built
    for t, d, cols in dirty:
        if d is not None and changes.touches(cols, columns_named(k, t)):
            d = _as_date(d)
            # a row of d reaches the facts of d and of the LOOKBACK after it
            out |= set(_days(max(d, first), min(d + LOOKBACK + timedelta(days=1), end)))
    return out


def _days(first: date, end: date) -> list[date]:
    """The days in [first, end)."""
    return [first + timedelta(days=i) for i in range((end - first).days)]


def _as_date(d: object) -> date:
    return d.date() if isinstance(d, datetime) else d   # type: ignore[return-value]


def _build(con: duckdb.DuckDBPyConnection, k: KpiDef, m: Period, upto: datetime,
           days: set[date] | None, h: str, tree: str, run_id: int | None, at: datetime) -> None:
    """Read the keys of `days` (None: every day of the month before upto, the base made anew),
    count the month's again and move the head to upto."""
    whole = days is None
    read = _days(m.ws.date(), upto.date()) if whole else sorted(days)
    _load(con, [day_period(d) for d in read], upto)
    key = {"k": k.id}
    con.execute("BEGIN TRANSACTION")
    try:
        if whole:
            for table in _TABLES:
                con.execute(f"DELETE FROM {table} WHERE kpi_id = $k", key)
        else:
            for table in ("kpi_distinct_key", "kpi_distinct_day"):
                con.execute(f"DELETE FROM {table} WHERE kpi_id = $k AND list_contains($d, day)",
                            {**key, "d": read})
            con.execute("DELETE FROM kpi_distinct_count WHERE kpi_id = $k", key)
            con.execute("DELETE FROM kpi_distinct_head WHERE kpi_id = $k", key)
        mk = {**key, "m": m.ws.date()}
        if read:
            con.execute("INSERT INTO kpi_distinct_key (kpi_id, month, unit_no, is_num, k, day) "
                        f"SELECT $k, $m, * FROM ({_keys_sql(k, per_period=True)})", mk)
            con.execute("INSERT INTO kpi_distinct_day SELECT $k, $m, unnest($d), $at",
                        {**mk, "d": read, "at": at})
        con.execute("""INSERT INTO kpi_distinct_count
                       SELECT kpi_id, month, unit_no, COUNT(DISTINCT k) FILTER (WHERE is_num),
                              COUNT(DISTINCT k) FILTER (WHERE NOT is_num)
                       FROM kpi_distinct_key WHERE kpi_id = $k GROUP BY kpi_id, month, unit_no""", key)
        con.execute("INSERT INTO kpi_distinct_head (kpi_id, month, upto, facts_hash, tree, run_id, "
                    "built_at, per_day) VALUES ($k, $m, $u, $h, $t, $r, $at, TRUE)",
                    {**mk, "u": upto.date(), "h": h, "t": tree, "r": run_id, "at": at})
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
    stale = _stale_days(con, k, m, today, h, tree, mode.refresh)
    if stale is None or stale:
        _build(con, k, m, today, stale, h, tree, mode.run_id, mode.computed_at)
    _load(con, [Period("daily", today, m.we)], as_of)      # the month's rows from today's start
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
    _load(con, [m], as_of)
    from kpis.batch import RESULT_COLUMNS  # noqa: PLC0415

    con.execute(f"INSERT INTO _result SELECT {', '.join(RESULT_COLUMNS)} FROM ("
                + compile_kpi(k, columns, agg=agg) + ")", {"k": k.id})
    # today so far counts the same keys: its rows from _dkeys, not from its facts read again
    # (they and their roll-up were a statement of their own, ~0.03 s a city minute)
    days = [p for p in ps if p.grain == "daily" and p.ws == today]
    for d in days:
        _load(con, [d], as_of)
        con.execute(f"INSERT INTO _result SELECT {', '.join(RESULT_COLUMNS)} FROM ("
                    + compile_kpi(k, columns, agg=_TODAY) + ")")
    return [p for p in ps if p != m and p not in days]


# Today's counts per unit from its keys (_dkeys: the facts of [today, as_of), as the daily
# period reads them). NULL keys count 0 (COUNT ignores them); sample = den as compile_kpi's.
_TODAY = """SELECT 0 AS pid, unit_no, COUNT(k) FILTER (WHERE is_num) AS num,
                   COUNT(k) FILTER (WHERE NOT is_num) AS den, COUNT(k) FILTER (WHERE NOT is_num) AS sample,
                   FALSE AS pending, FALSE AS missing
            FROM _dkeys GROUP BY unit_no"""
