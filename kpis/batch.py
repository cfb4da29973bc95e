"""Many KPIs in a few statements: the engine's compute step for a whole evaluation plan.

Profiling one full evaluation at county scale (193 KPIs) showed that the facts queries were only
part of the cost: each KPI paid ~20 ms for its own `_periods` load, roll-up statement and result
table even when its facts were empty (4.4 s of 18 s with every facts query emptied). Here

1. KPIs that ask for the same periods share one `_periods` load (global pids);
2. the facts of additive KPIs (sums of numerators, denominators and samples) are reduced to one
   row per (KPI, period, org, grid) by one `INSERT … UNION ALL` statement per chunk of KPIs
   (`_fr`), then attributed to known units by one statement (`_fg`); months of day-additive
   KPIs may instead be summed from stored days (kpis/day_store.py);
3. one statement rolls all of them up the org tree, fills every unit and period, and computes
   value (per-KPI expressions as `CASE WHEN kix IN …`) and status (one expression over the
   thresholds held in `_kmeta`, kpis.compile.status_by_columns).

The aggregates and expressions are exactly those of `compile_kpi` (same DECIMAL sums, same value
and status SQL), so values do not move. KPIs that are not additive (distinct counts, MAX,
quantiles) keep their own compiled statement.
"""
from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import duckdb

from kpis import day_store as day_store_mod
from kpis import carry, distinct_month, fact_diff, shared
from kpis.compile import (_EXACT, PERIODS_DDL, THRESHOLD_COLUMNS, _additive, compile_kpi,
                          status_by_columns, threshold_values, value_sql)
from kpis.periods import Period, day
from kpis.registry import day_additive
from kpis.spec import KpiDef

log = logging.getLogger(__name__)

# Facts of this many KPIs go into one statement. Measured at county scale under load 10 (noisy):
# 1 KPI per statement 12-15 s CPU, 24 8.6-10.4 s, all in one 12.2-12.5 s; a failing KPI costs a
# re-run of its chunk one KPI at a time.
CHUNK = 24

RESULT_DDL = ("CREATE OR REPLACE TEMP TABLE _result (kpi_id VARCHAR, theme VARCHAR, org_no VARCHAR, "
              "org_level VARCHAR, grain VARCHAR, period_start TIMESTAMP, period_end TIMESTAMP, "
              "value DOUBLE, numerator DOUBLE, denominator DOUBLE, baseline DOUBLE, status VARCHAR, "
              "is_final BOOLEAN, sample DOUBLE)")
RESULT_COLUMNS = ("kpi_id", "theme", "org_no", "org_level", "grain", "period_start", "period_end",
                  "value", "numerator", "denominator", "baseline", "status", "is_final", "sample")
_DEC = "DECIMAL(38, 9)"


def batchable(k: KpiDef) -> bool:
    """Additive sums whose value and status come from the rolled-up num, den and sample."""
    return (_additive(k) and k.kind in ("ratio", "count", "sum", "mean", "value")
            and k.num_agg == "sum")


# Columns of _periods other than pid, te and as_of (as_of is the same for every period).
_PERIOD_SHAPE = re.compile(r"\b(ws|we|grain|hours|periods_from)\b", re.IGNORECASE)
_COMMENT_OR_STRING = re.compile(r"'(?:[^']|'')*'|--[^\n]*")


def te_only(k: KpiDef) -> bool:
    """Facts and presence that see their period only through te (and pid): periods with the same
    te get the same facts. Today and the running month both end at as_of, so a stock is read
    once for both instead of once each. Derived from the SQL: it names no other column of
    _periods (a false positive only costs the saving)."""
    code = _COMMENT_OR_STRING.sub(lambda m: m[0] if m[0].startswith("'") else "",
                                  k.sql_text)
    return not _PERIOD_SHAPE.search(code)


# The prelude's periods_from() and periods_te_from() (no bound), replaced by the statement's
# earliest ws and earliest te (_fr_sql).
PERIODS_FROM = "periods_from()"
PERIODS_TE_FROM = "periods_te_from()"


class Bounds(NamedTuple):
    """The earliest ws and the earliest te of a statement's periods."""
    ws: datetime
    te: datetime


def _bounded(sql: str, lo: Bounds | None) -> str:
    if lo is None:
        return sql
    return (sql.replace(PERIODS_FROM, f"TIMESTAMP '{lo.ws:%Y-%m-%d %H:%M:%S}'")
            .replace(PERIODS_TE_FROM, f"TIMESTAMP '{lo.te:%Y-%m-%d %H:%M:%S}'"))


def _fr_sql(kix: int, k: KpiDef, cols: set[str], lo: Bounds | None = None,
            facts: str | None = None) -> str:
    """The KPI's facts reduced by their own (pid, org_no, grid_no): the rows of compile._agg_cte's
    `fg` before attribution (see _ATTRIBUTE), and the rows the day store keeps for a day.

    Reduced first and attributed after: at city scale a stock of 3.5 M customers per period paid
    two k_org look-ups per fact row. DECIMAL sums are exact, so summing the partial sums gives
    the same values to the last bit. lo: the earliest ws and te of the loaded periods, written in
    place of periods_from() and periods_te_from(). facts: the facts to use in place of the
    definition's (its shared subqueries lifted to the statement's top, _facts_sql)."""
    integral = _INTEGRAL.get((k.id, k.values_sql), frozenset())

    def total(c: str) -> str:
        # an integer column summed as it is, the sum made DECIMAL: the same exact value, without
        # a cast of every row (0.2 s of a real city minute's 10.6 M collection rows)
        return f"CAST(SUM({c}) AS DECIMAL(38, 9))" if c in integral else f"SUM({_EXACT.format(c)})"

    sample = total("sample") if "sample" in cols else total("den")
    pending = "BOOL_OR(pending)" if "pending" in cols else "FALSE"
    missing = "BOOL_OR(missing)" if "missing" in cols else "FALSE"
    facts = _bounded(k.values_sql if facts is None else facts, lo)
    return f"""SELECT * FROM (-- {k.id} (named for profiles and logs)
WITH f AS (
{facts}
)
SELECT {kix} AS kix, pid, org_no, grid_no, {total('num')} AS num, {total('den')} AS den,
       {sample} AS sample, {pending} AS pending, {missing} AS missing
FROM f GROUP BY pid, org_no, grid_no)"""


def _facts_sql(items: Sequence[tuple[int, KpiDef, set[str]]], lo: Bounds | None) -> str:
    """The reduced facts of several KPIs as one statement. A shared subquery (kpis/shared.py)
    that two or more of them read is stated once at the top and computed once for all."""
    splits = {kix: shared.split(k.values_sql) for kix, k, _ in items}
    counts = Counter(n for names, _ in splits.values() for n in names)
    lifted = [n for n in shared.definitions() if counts[n] > 1]
    parts = []
    for kix, k, cols in items:
        names, inner = splits[kix]
        own = not names or not set(names) <= set(lifted)
        parts.append(_fr_sql(kix, k, cols, lo, None if own else inner))
    return _bounded(shared.with_clause(lifted), lo) + "\nUNION ALL\n".join(parts)


# _fr attributed to known units (unknown org -> the root; a grid only when known), for the
# (KPI, period) pairs the plan outputs (_kperiod; the store's extra days are not output). Not
# grouped again: _fr is already one row per (KPI, period, org, grid), and the roll-up sums the
# rows that land on the same unit anyway (a GROUP BY here was ~0.04 s of each city minute for
# the few unknown codes it merged).
_ATTRIBUTE = """INSERT INTO _fg
SELECT r.kix, r.pid, COALESCE(ko.unit_no, rt.unit_no) AS attr_org, kg.unit_no AS attr_grid,
       r.num, r.den, r.sample, r.pending, r.missing
FROM _fr r JOIN _kperiod kp ON kp.kix = r.kix AND kp.pid = r.pid
CROSS JOIN k_root rt
LEFT JOIN k_org ko ON ko.unit_no = r.org_no AND ko.unit_level <> 'grid'
LEFT JOIN k_org kg ON kg.unit_no = r.grid_no AND kg.unit_level = 'grid'"""
# The same, one row per (kix, pid, attr_org, attr_grid): what kpis.fact_diff compares and keeps
# (grouped here rather than in a table of its own: ~0.02 s more here, ~0.05 s less there). Only
# the rows that can meet another are grouped: a row whose org and grid are known keeps its own
# key, unique as _fr's, unless a row of an unknown code lands on it (grouping all ~114 k rows of
# a city minute to merge the few unknown codes was ~0.03 s).
_ATTRIBUTE_GROUPED = """INSERT INTO _fg
WITH a AS MATERIALIZED (
    SELECT r.kix, r.pid, COALESCE(ko.unit_no, rt.unit_no) AS attr_org, kg.unit_no AS attr_grid,
           r.num, r.den, r.sample, r.pending, r.missing,
           ko.unit_no IS NULL OR (r.grid_no IS NOT NULL AND kg.unit_no IS NULL) AS moved
    FROM _fr r JOIN _kperiod kp ON kp.kix = r.kix AND kp.pid = r.pid
    CROSS JOIN k_root rt
    LEFT JOIN k_org ko ON ko.unit_no = r.org_no AND ko.unit_level <> 'grid'
    LEFT JOIN k_org kg ON kg.unit_no = r.grid_no AND kg.unit_level = 'grid'
),
m AS (SELECT DISTINCT kix, pid, attr_org, attr_grid FROM a WHERE moved)
SELECT kix, pid, attr_org, attr_grid, num, den, sample, pending, missing
FROM a ANTI JOIN m ON m.kix = a.kix AND m.pid = a.pid AND m.attr_org = a.attr_org
                      AND m.attr_grid IS NOT DISTINCT FROM a.attr_grid
UNION ALL
SELECT a.kix, a.pid, a.attr_org, a.attr_grid, SUM(a.num), SUM(a.den), SUM(a.sample),
       BOOL_OR(a.pending), BOOL_OR(a.missing)
FROM a SEMI JOIN m ON m.kix = a.kix AND m.pid = a.pid AND m.attr_org = a.attr_org
                      AND m.attr_grid IS NOT DISTINCT FROM a.attr_grid
GROUP BY a.kix, a.pid, a.attr_org, a.attr_grid"""


class SharedCache:
    """Shared subqueries (kpis/shared.py) that read _periods only through te, computed once per
    set of te values and kept as TEMP tables for the other statements of the same compute_plan:
    the bill stocks' k_bill_out was computed by their chunk and again by the own statement of
    billing.arrears_customers (a distinct count), 0.15 s of each city minute; the customer
    counts of the two "per 10k customers" KPIs by two statements of different period lists.
    Valid within one compute_plan only (the data does not change during it)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.keys: dict[str, tuple] = {}

    def use(self, sql: str) -> str:
        """The statement with each cacheable shared subquery it states read from its table."""
        names = [n for n in shared.names_in(sql) if cacheable(n) and shared.cte(n) in sql]
        if not names:
            return sql
        key = tuple(r[0] for r in self.con.execute(
            "SELECT DISTINCT te FROM _periods UNION ALL SELECT DISTINCT as_of FROM _periods "
            "ORDER BY 1").fetchall())
        for n in names:
            table = f"_shared_{n}"
            if self.keys.get(n) != key:
                self.keys.pop(n, None)      # a failing build leaves no stale key behind
                self.con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {shared.definitions()[n]}")
                self.keys[n] = key
            sql = sql.replace(shared.cte(n), f"{n} AS (SELECT * FROM {table})")
        return sql


_PID = re.compile(r"\bpid\b", re.IGNORECASE)


def cacheable(name: str) -> bool:
    """A shared subquery whose rows depend on _periods only through te (and as_of): it names no
    other column of _periods and outputs no pid (pids differ between statements)."""
    code = _COMMENT_OR_STRING.sub(lambda m: m[0] if m[0].startswith("'") else "",
                                  shared.definitions()[name])
    return not _PERIOD_SHAPE.search(code) and not _PID.search(code)


def _presence_sql(kix: int, k: KpiDef) -> str:
    if k.presence:
        return f"SELECT DISTINCT {kix} AS kix, pid FROM ({k.presence})"
    return f"SELECT {kix} AS kix, pid FROM _periods"


def _presence_union(items: Sequence[tuple[int, KpiDef, set[str]]]) -> str:
    """The presence of a statement's KPIs, each distinct presence query evaluated once for all
    the KPIs that state it: nine order KPIs check that work orders exist in each period, each
    check a range join of every order to the periods (0.07 s apiece in a 10-day city sweep)."""
    groups: dict[str, list[tuple[int, KpiDef]]] = {}
    for kix, k, _ in items:
        groups.setdefault(k.presence or "", []).append((kix, k))
    parts = []
    for presence, members in groups.items():
        if len(members) == 1 or not presence:
            parts.extend(_presence_sql(kix, k) for kix, k in members)
            continue
        kixs = ", ".join(f"({kix})" for kix, _ in members)
        parts.append(f"SELECT k.kix, x.pid FROM (SELECT DISTINCT pid FROM ({presence})) x "
                     f"CROSS JOIN (VALUES {kixs}) k(kix)")
    return "\nUNION ALL\n".join(parts)


def load_periods(con: duckdb.DuckDBPyConnection, table: str, pids: Sequence[int],
                 periods: Sequence[Period], as_of: datetime) -> None:
    """One statement over parallel lists: DuckDB's executemany costs milliseconds per row."""
    con.execute(PERIODS_DDL.replace("_periods", table, 1))
    con.execute(f"""INSERT INTO {table} SELECT unnest($pid), unnest($grain), unnest($ws),
                    unnest($we), unnest($te), $as_of, unnest($hours)""", {
        "pid": list(pids), "grain": [p.grain for p in periods],
        "ws": [p.ws for p in periods], "we": [p.we for p in periods],
        "te": [p.te(as_of) for p in periods], "as_of": as_of,
        "hours": [(p.we - p.ws).total_seconds() / 3600 for p in periods]})


def per_kpi(column: str, keys: Sequence[object], exprs: Sequence[str]) -> str:
    """One expression per KPI, chosen by its key column (each branch typed on its own). KPIs with
    the same expression share one branch: a CASE tests its branches in turn for every row, and
    the 189 batched KPIs have 9 value expressions (the roll-up of a minute pass at city holds
    ~0.5 M rows)."""
    groups: dict[str, list[object]] = {}
    for k, e in zip(keys, exprs):
        groups.setdefault(e, []).append(k)
    whens = "\n".join(f"    WHEN {column} IN ({', '.join(repr(k) for k in ks)}) THEN {e}"
                      for e, ks in groups.items())
    return f"CASE\n{whens}\n    ELSE NULL END"


_ALL_UNITS = """(SELECT kp.kix, kp.pid, u.unit_no, u.unit_level FROM _kperiod kp
     JOIN _klevel kl ON kl.kix = kp.kix
     JOIN k_org u ON u.unit_level = kl.level)"""


def _rollup_sql(items: Sequence[tuple[int, KpiDef]], units: str = _ALL_UNITS) -> str:
    """All batched KPIs rolled up, filled and valued in one statement (compile_kpi's tail), for
    the (kix, pid, unit) rows of `units`: every unit of each KPI's levels and periods, or those
    kpis.fact_diff chose (_todo)."""
    kixs = [i for i, _ in items]
    value = per_kpi("kix", kixs, [f"CAST({value_sql(k)} AS DOUBLE)" for _, k in items])
    status = status_by_columns("km", "v")
    # only the facts of the (KPI, period) pairs with a unit to compute: of a city minute's ~114 k
    # attributed facts, ~40 % are of pairs kpis.fact_diff found unchanged (no unit in _todo)
    fg = "_fg" if units == _ALL_UNITS else (
        f"(SELECT g.* FROM _fg g SEMI JOIN (SELECT DISTINCT kix, pid FROM {units}) t "
        "ON t.kix = g.kix AND t.pid = g.pid)")
    # a grid's row sums only the facts attributed to that grid: of the ~63 k grid facts of a
    # city minute's pairs, those of the few grids to compute (grouping them all was ~0.02 s)
    fg_grid = "_fg" if units == _ALL_UNITS else (
        f"(SELECT g.* FROM _fg g SEMI JOIN (SELECT kix, pid, unit_no FROM {units} "
        "WHERE unit_level = 'grid') t ON t.kix = g.kix AND t.pid = g.pid AND t.unit_no = g.attr_grid)")
    return f"""
WITH by_org AS (
    -- summed per org before meeting the org's ancestors: the facts of a city minute are ~0.1 M
    -- rows on ~120 orgs, each met by its 4 ancestors (0.4 M rows into the GROUP BY below)
    SELECT g.kix, g.pid, g.attr_org, SUM(g.num) AS num, SUM(g.den) AS den, SUM(g.sample) AS sample,
           BOOL_OR(g.pending) AS pending, BOOL_OR(g.missing) AS missing
    FROM {fg} g JOIN (SELECT DISTINCT kix FROM _klevel WHERE level <> 'grid') kl ON kl.kix = g.kix
    GROUP BY g.kix, g.pid, g.attr_org
),
agg AS (
    SELECT g.kix, g.pid, an.ancestor_no AS unit_no, SUM(g.num) AS num, SUM(g.den) AS den,
           SUM(g.sample) AS sample, BOOL_OR(g.pending) AS pending, BOOL_OR(g.missing) AS missing
    FROM by_org g
    JOIN k_org_ancestor an ON an.unit_no = g.attr_org
    JOIN _klevel kl ON kl.kix = g.kix AND kl.level = an.ancestor_level AND kl.level <> 'grid'
    GROUP BY g.kix, g.pid, an.ancestor_no
    UNION ALL
    SELECT g.kix, g.pid, g.attr_grid AS unit_no, SUM(g.num), SUM(g.den), SUM(g.sample),
           BOOL_OR(g.pending), BOOL_OR(g.missing)
    FROM {fg_grid} g JOIN _klevel kl ON kl.kix = g.kix AND kl.level = 'grid'
    WHERE g.attr_grid IS NOT NULL
    GROUP BY g.kix, g.pid, g.attr_grid
),
rolled AS (
    SELECT u.kix, p.pid, p.grain, p.ws, p.we, p.te, p.as_of, u.unit_no, u.unit_level,
           CASE WHEN pr.pid IS NULL OR a.missing THEN NULL ELSE COALESCE(a.num, 0) END AS num,
           CASE WHEN pr.pid IS NULL OR a.missing OR km.counting THEN NULL
                ELSE COALESCE(a.den, 0) END AS den,
           a.sample, COALESCE(a.pending, FALSE) AS pending
    FROM {units} u
    JOIN _kmeta km ON km.kix = u.kix
    JOIN _periods_all p ON p.pid = u.pid
    LEFT JOIN agg a ON a.kix = u.kix AND a.pid = p.pid AND a.unit_no = u.unit_no
    LEFT JOIN _present pr ON pr.kix = u.kix AND pr.pid = p.pid
),
valued AS (
    SELECT *, {value} AS value, CAST(NULL AS DOUBLE) AS baseline FROM rolled
)
SELECT km.kpi_id, km.theme, v.unit_no AS org_no, v.unit_level AS org_level, v.grain,
       v.ws AS period_start, CASE WHEN v.grain = 'near-real-time' THEN v.as_of ELSE v.we END AS period_end,
       v.value, CAST(v.num AS DOUBLE) AS numerator, CAST(v.den AS DOUBLE) AS denominator, v.baseline,
       {status} AS status,
       (v.grain = 'near-real-time' OR (v.te >= v.we AND NOT v.pending)) AS is_final,
       CAST(v.sample AS DOUBLE) AS sample
FROM valued v JOIN _kmeta km ON km.kix = v.kix
"""


_COLUMNS: dict[tuple[str, str], frozenset[str]] = {}


def fact_columns(con: duckdb.DuckDBPyConnection, k: KpiDef) -> set[str]:
    """The columns the facts query returns (binds the SQL against the warehouse schema)."""
    key = (k.id, k.facts)
    if key not in _COLUMNS:
        con.execute(PERIODS_DDL.replace("CREATE OR REPLACE TEMP TABLE", "CREATE TEMP TABLE IF NOT EXISTS"))
        rows = con.execute(f"DESCRIBE SELECT * FROM ({k.facts}) AS f").fetchall()
        _COLUMNS[key] = frozenset(r[0] for r in rows)
    return set(_COLUMNS[key])


# integer-typed columns of a KPI's summed SQL (values_sql), by (id, that SQL): _fr_sql sums them
# before making the sum DECIMAL
_INTEGRAL: dict[tuple[str, str], frozenset[str]] = {}
_INTEGER_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT",
                            "UINTEGER", "UBIGINT"})


def _note_integral(con: duckdb.DuckDBPyConnection, k: KpiDef) -> None:
    """Record the integer columns of the KPI's summed SQL (none when it does not bind alone)."""
    key = (k.id, k.values_sql)
    if key in _INTEGRAL:
        return
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM ({k.values_sql}) AS f").fetchall()
        _INTEGRAL[key] = frozenset(r[0] for r in rows if r[1] in _INTEGER_TYPES)
    except duckdb.Error:
        _INTEGRAL[key] = frozenset()


def _run_chunk(con: duckdb.DuckDBPyConnection, chunk: Sequence[tuple[int, KpiDef, set[str]]],
               errors: dict[str, str], lo: Bounds, cache: SharedCache) -> list[int]:
    """Insert the chunk's reduced facts and presence; a failing statement is retried KPI by KPI
    so that one broken KPI fails alone. Returns the kixs that succeeded."""
    for _, k, _ in chunk:
        _note_integral(con, k)
    def run(items: Sequence[tuple[int, KpiDef, set[str]]]) -> None:
        try:
            con.execute("INSERT INTO _fr " + cache.use(_facts_sql(items, lo)))
            con.execute("INSERT INTO _present " + _bounded(_presence_union(items), lo))
        except duckdb.Error:
            # the facts may be in while the presence failed: a retry must not count them twice
            kixs = ", ".join(str(i) for i, _, _ in items)
            con.execute(f"DELETE FROM _fr WHERE kix IN ({kixs})")
            con.execute(f"DELETE FROM _present WHERE kix IN ({kixs})")
            raise

    if len(chunk) > 1:
        try:
            run(chunk)
            return [i for i, _, _ in chunk]
        except duckdb.Error:
            pass
    ok = []
    for item in chunk:
        try:
            run([item])
            ok.append(item[0])
        except duckdb.Error as exc:
            log.error("KPI %s failed: %s", item[1].id, exc)
            errors[item[1].id] = str(exc)
    return ok


def _chunks(group: Sequence[tuple[int, KpiDef, set[str]]]) -> list[list[tuple[int, KpiDef, set[str]]]]:
    """The group cut into statements of about CHUNK KPIs, the readers of a shared subquery
    (kpis/shared.py) next to each other and in one statement where they can be: it is computed
    once per statement. Cut by plan order, the 13 reliability KPIs and the order KPIs reading
    the customers at each period end (k_active_n) fell into two statements of a full city
    evaluation, which both computed it (~0.5 s each)."""
    names = {kix: frozenset(shared.split(k.values_sql)[0]) for kix, k, _ in group}
    ordered = sorted(group, key=lambda it: sorted(names[it[0]]) or ["~"])     # stable: plan order within
    out: list[list[tuple[int, KpiDef, set[str]]]] = []
    current: list[tuple[int, KpiDef, set[str]]] = []
    reading: set[str] = set()
    for item in ordered:
        if len(current) >= CHUNK and (CHUNK == 1 or not names[item[0]] & reading):   # 1: profiles
            out.append(current)
            current, reading = [], set()
        current.append(item)
        reading |= names[item[0]]
    return out + [current] if current else out


def _run_group(con: duckdb.DuckDBPyConnection, periods: Sequence[Period],
               items: Sequence[tuple[int, KpiDef, set[str]]], pid_of: dict[Period, int],
               as_of: datetime, errors: dict[str, str], cache: SharedCache) -> list[int]:
    """The facts of KPIs sharing a period list; te-only KPIs are read for one period per
    distinct te and their rows copied to the other periods with that te."""
    ok: list[int] = []
    first: dict[datetime, Period] = {}
    for p in periods:
        first.setdefault(p.te(as_of), p)
    copies = [(pid_of[first[p.te(as_of)]], pid_of[p]) for p in periods if first[p.te(as_of)] != p]
    one_te = [it for it in items if te_only(it[1])] if copies else []
    rest = [it for it in items if not (copies and te_only(it[1]))]
    for chosen, group, copied in ((list(first.values()), one_te, True), (periods, rest, False)):
        if not group:
            continue
        load_periods(con, "_periods", [pid_of[p] for p in chosen], chosen, as_of)
        done: list[int] = []
        for chunk in _chunks(group):
            done.extend(_run_chunk(con, chunk, errors, Bounds(min(p.ws for p in chosen),
                                                              min(p.te(as_of) for p in chosen)), cache))
        if done and copied:
            kixs = ", ".join(str(i) for i in done)
            pairs = ", ".join(f"({a}, {b})" for a, b in copies)
            for table in ("_fr", "_present"):
                con.execute(f"INSERT INTO {table} SELECT t.* REPLACE (c.dst AS pid) FROM {table} t "
                            f"JOIN (VALUES {pairs}) c(src, dst) ON t.pid = c.src "
                            f"WHERE t.kix IN ({kixs})")
        ok.extend(done)
    return ok


@dataclass(frozen=True)
class Diff:
    """How kpis.fact_diff takes part in a compute: each KPI's key hash, whether only the changed
    units are recomputed, and (KPI id, period, source period): a period whose baseline reads the
    source, also computed, recomputes the units recomputed there (whole when the source is not
    in the same compute)."""
    hashes: dict[str, str]
    restrict: bool = False
    follows: frozenset[tuple[str, Period, Period]] = frozenset()


# The facts join their tables to the few rows of _periods by range (x.t >= p.ws AND x.t < p.te).
# With more than DuckDB's default 5 rows on the small side such a join is a piecewise merge join,
# which sorts the large side with its payload: order.urge_rate's 325 k city orders against 8
# periods took 0.11 s of its 0.12 s. A nested loop over up to this many periods compares each row
# with each period instead: that statement 0.124 -> 0.058 s, the cold city full evaluation with 10
# days 65.3 -> 46.0 s (values equal). Statements with more periods (a backfill) keep the merge.
NESTED_LOOP_MAX_ROWS = 64


def compute_plan(con: duckdb.DuckDBPyConnection, plan: Sequence[tuple[KpiDef, Sequence[Period]]],
                 as_of: datetime, errors: dict[str, str],
                 day_store: day_store_mod.Mode | None = None,
                 diff: Diff | None = None) -> list[tuple[KpiDef, Sequence[Period]]]:
    """Compute every KPI of the plan (see _compute_plan) with range joins to few periods as
    nested loops (NESTED_LOOP_MAX_ROWS); the connection's setting is restored after."""
    before = con.execute("SELECT current_setting('nested_loop_join_threshold')").fetchone()[0]
    con.execute(f"SET nested_loop_join_threshold = {max(NESTED_LOOP_MAX_ROWS, int(before))}")
    try:
        return _compute_plan(con, plan, as_of, errors, day_store, diff)
    finally:
        with contextlib.suppress(duckdb.Error):    # an aborted transaction refuses it
            con.execute(f"SET nested_loop_join_threshold = {int(before)}")


def _compute_plan(con: duckdb.DuckDBPyConnection, plan: Sequence[tuple[KpiDef, Sequence[Period]]],
                  as_of: datetime, errors: dict[str, str], day_store: day_store_mod.Mode | None,
                  diff: Diff | None) -> list[tuple[KpiDef, Sequence[Period]]]:
    """Compute every KPI of the plan for its periods into the temp table _result (baseline NULL,
    status as if no baseline). KPIs that fail are left out and named in `errors`; returns the
    plan entries that were computed.

    day_store: months of day-additive KPIs are built from stored days (kpis/day_store.py) and
    the days read are stored; None reads every period from the facts (the reference path).
    diff: the batched KPIs' reduced facts are compared with those kept (kpis/fact_diff.py), and
    with `restrict` only the units on the path of a difference are rolled up into _result."""
    con.execute(RESULT_DDL)
    if diff is not None:
        fact_diff.reset(con)
    plan = [(k, ps) for k, ps in plan if ps]
    if not plan:
        return []
    jobs: dict[int, day_store_mod.Job] = {}
    if day_store is not None:
        jobs = day_store_mod.plan(con, [(kix, k, ps) for kix, (k, ps) in enumerate(plan)
                                        if day_additive(k)], as_of, day_store.refresh)
    # days stored before they settled, brought forward instead of read (kpis/carry.py)
    carried: dict[int, set[Period]] = {}
    if jobs and day_store is not None and day_store.carry and day_store.run_id is not None:
        found = carry.bring_forward(con, [(kix, j.k, j.hash, d.ws.date()) for kix, j in jobs.items()
                                          for d in j.store_days if d.we <= as_of],
                                    as_of, day_store.run_id)
        carried = {kix: {day(d) for d in ds} for kix, ds in found.items()}
    reads = {kix: [p for p in (day_store_mod.read_periods(jobs[kix], ps) if kix in jobs else ps)
                   if p not in carried.get(kix, ())]
             for kix, (_, ps) in enumerate(plan)}
    pid_of: dict[Period, int] = {}
    for kix, (_, ps) in enumerate(plan):
        for p in (*ps, *reads[kix], *sorted(carried.get(kix, ()))):
            pid_of.setdefault(p, len(pid_of))
    ordered = sorted(pid_of, key=pid_of.__getitem__)
    load_periods(con, "_periods_all", [pid_of[p] for p in ordered], ordered, as_of)

    batched: dict[tuple[Period, ...], list[tuple[int, KpiDef, set[str]]]] = {}
    single: list[tuple[KpiDef, Sequence[Period]]] = []
    by_kix: dict[int, tuple[KpiDef, Sequence[Period]]] = {}
    for kix, (k, ps) in enumerate(plan):
        try:
            cols = fact_columns(con, k)
        except duckdb.Error as exc:
            log.error("KPI %s failed: %s", k.id, exc)
            errors[k.id] = str(exc)
            continue
        if batchable(k):
            batched.setdefault(tuple(sorted(reads[kix])), []).append((kix, k, cols))
            by_kix[kix] = (k, ps)
        else:
            single.append((k, ps))

    done: list[tuple[KpiDef, Sequence[Period]]] = []
    cache = SharedCache(con)
    if batched:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _fr (kix INTEGER, pid INTEGER, org_no VARCHAR,
                        grid_no VARCHAR, num {_DEC}, den {_DEC}, sample {_DEC}, pending BOOLEAN,
                        missing BOOLEAN)""")
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _fg (kix INTEGER, pid INTEGER, attr_org VARCHAR,
                        attr_grid VARCHAR, num {_DEC}, den {_DEC}, sample {_DEC}, pending BOOLEAN,
                        missing BOOLEAN)""")
        con.execute("CREATE OR REPLACE TEMP TABLE _present (kix INTEGER, pid INTEGER)")
        ok: list[int] = []
        for periods, items in batched.items():
            if periods:
                ok.extend(_run_group(con, periods, items, pid_of, as_of, errors, cache))
            else:       # every period carried
                ok.extend(kix for kix, _, _ in items)
        carried_rows = [(kix, pid_of[p], p.ws.date()) for kix in ok for p in carried.get(kix, ())]
        if carried_rows:
            cols = list(zip(*carried_rows))
            con.execute("""CREATE OR REPLACE TEMP TABLE _cmap AS
                           SELECT unnest($k) AS kix, unnest($p) AS pid, unnest($d) AS day""",
                        {"k": cols[0], "p": cols[1], "d": cols[2]})
            con.execute("""INSERT INTO _fr SELECT c.kix, m.pid, c.org_no, c.grid_no, c.num, c.den,
                                                  c.sample, c.pending, c.missing
                           FROM _carry c JOIN _cmap m ON m.kix = c.kix AND m.day = c.day""")
            # carries(): no presence query, so every period of the KPI is present
            con.execute("INSERT INTO _present SELECT kix, pid FROM _cmap")
        if jobs:
            failed = [jobs[kix].k.id for kix in jobs if kix not in ok]
            day_store_mod.forget(con, failed)
            try:
                day_store_mod.store_and_build(con, [jobs[kix] for kix in ok if kix in jobs], pid_of,
                                              as_of, day_store.computed_at, day_store.run_id)
            except duckdb.Error as exc:
                # the store's KPIs fail together (their months cannot be built); the rest go on
                log.error("day store failed: %s", exc)
                day_store_mod.forget(con, [jobs[kix].k.id for kix in ok if kix in jobs])
                for kix in ok:
                    if kix in jobs:
                        errors[jobs[kix].k.id] = str(exc)
                ok = [kix for kix in ok if kix not in jobs]
        if ok:
            _load_meta(con, [(i, by_kix[i][0]) for i in ok],
                       [(i, pid_of[p]) for i in ok for p in by_kix[i][1]])
            try:
                con.execute(_ATTRIBUTE if diff is None else _ATTRIBUTE_GROUPED)
                units = _ALL_UNITS
                if diff is not None:
                    whole, follows = set(), set()
                    kix_of = {by_kix[i][0].id: i for i in ok}
                    for kid, p, src in diff.follows:
                        i = kix_of.get(kid)
                        if i is None or p not in by_kix[i][1]:
                            continue
                        if src in by_kix[i][1]:
                            follows.add((i, pid_of[p], pid_of[src]))
                        else:
                            whole.add((i, pid_of[p]))
                    fact_diff.prepare(con, {i: diff.hashes[by_kix[i][0].id] for i in ok},
                                      whole, diff.restrict, follows)
                    units = "_todo" if diff.restrict else _ALL_UNITS
                con.execute("INSERT INTO _result " + _rollup_sql([(i, by_kix[i][0]) for i in ok], units))
                done.extend(by_kix[i] for i in ok)
            except duckdb.Error as exc:
                # e.g. out of memory on a huge backfill: each KPI's own statement still may pass
                log.error("batched roll-up failed, computing KPI by KPI: %s", exc)
                single = [by_kix[i] for i in ok] + single
    tree = None
    for k, ps in single:
        try:
            cols = fact_columns(con, k)
            rest = list(ps)
            if day_store is not None and distinct_month.eligible(k, cols):
                tree = tree or fact_diff.tree_signature(con)
                rest = distinct_month.months_from_base(con, k, cols, ps, as_of, day_store, tree)
            if rest:
                load_periods(con, "_periods", range(len(rest)), rest, as_of)
                shared_te = te_only(k) and len({p.te(as_of) for p in rest}) < len(rest)
                con.execute(f"INSERT INTO _result SELECT {', '.join(RESULT_COLUMNS)} FROM ("
                            + cache.use(compile_kpi(k, cols, one_per_te=shared_te)) + ")")
            done.append((k, ps))
        except duckdb.Error as exc:
            log.error("KPI %s failed: %s", k.id, exc)
            errors[k.id] = str(exc)
            # its month may be in from the distinct base while the other periods failed
            con.execute("DELETE FROM _result WHERE kpi_id = $k", {"k": k.id})
    return done


def _load_meta(con: duckdb.DuckDBPyConnection, kpis: Sequence[tuple[int, KpiDef]],
               kperiods: Sequence[tuple[int, int]]) -> None:
    thresholds = ", ".join(f"{c} {t}" for c, t in THRESHOLD_COLUMNS)
    con.execute("CREATE OR REPLACE TEMP TABLE _kmeta (kix INTEGER, kpi_id VARCHAR, theme VARCHAR, "
                f"counting BOOLEAN, {thresholds})")
    values = [threshold_values(k) for _, k in kpis]
    unnests = ", ".join(f"unnest(${c})" for c, _ in THRESHOLD_COLUMNS)
    con.execute(f"INSERT INTO _kmeta SELECT unnest($i), unnest($id), unnest($th), unnest($c), {unnests}", {
        "i": [i for i, _ in kpis], "id": [k.id for _, k in kpis], "th": [k.theme for _, k in kpis],
        "c": [k.kind in ("count", "sum") for _, k in kpis],
        **{c: [row[j] for row in values] for j, (c, _) in enumerate(THRESHOLD_COLUMNS)}})
    levels = [(i, lvl) for i, k in kpis for lvl in dict.fromkeys(k.org_levels)]
    con.execute("CREATE OR REPLACE TEMP TABLE _klevel AS SELECT unnest($i) AS kix, unnest($l) AS level",
                {"i": [i for i, _ in levels], "l": [lvl for _, lvl in levels]})
    con.execute("CREATE OR REPLACE TEMP TABLE _kperiod AS SELECT unnest($i) AS kix, unnest($p) AS pid",
                {"i": [i for i, _ in kperiods], "p": [p for _, p in kperiods]})
