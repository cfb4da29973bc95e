"""KpiDef -> DuckDB SQL (pure text, no connection).

A definition's `facts` query returns one row per fact and period: `pid` (the period from the
`_periods` table it belongs to), `org_no` (attribution), `grid_no`, `num`, `den` and optionally
`num_key`/`den_key` (distinct counts), `sample` (the minimum-sample basis when it is not the
denominator), `pending` (a resolved-or-due item still open), `missing` (an input the value
needs is absent, e.g. a calendar date: the unit's value, numerator and denominator become NULL,
status no_data) and `item_key` (the source record).
The compiled statement rolls those facts up through every ancestor in one pass (numerators and
denominators are summed, never ratios averaged), adds the grids, and fills every unit of the
KPI's levels for every period so that empty populations come out as 0 or no_data.
"""
from __future__ import annotations

from kpis.spec import KpiDef
from kpis.thresholds import breach_sql, parse_threshold

PERIODS_DDL = ("CREATE OR REPLACE TEMP TABLE _periods (pid INTEGER, grain VARCHAR, ws TIMESTAMP, "
               "we TIMESTAMP, te TIMESTAMP, as_of TIMESTAMP, hours DOUBLE)")


# Sums are taken in DECIMAL: a parallel SUM of DOUBLEs depends on thread order, and a value
# that differs in its last digits from one evaluation to the next is a false restatement.
_EXACT = "CAST({} AS DECIMAL(38, 9))"


def _num_agg(k: KpiDef) -> str:
    if k.kind == "max" or k.num_agg == "max":
        return "MAX(num)"
    if k.num_agg == "count_distinct":
        return "COUNT(DISTINCT num_key)"
    if k.kind == "quantile" or k.num_agg == "quantile":
        return f"quantile_cont(num, {float(k.quantile or 0.5)!r})"
    return f"SUM({_EXACT.format('num')})"


def _den_agg(k: KpiDef) -> str:
    if k.kind in ("max", "quantile"):
        return "COUNT(num)"
    return "COUNT(DISTINCT den_key)" if k.den_agg == "count_distinct" else f"SUM({_EXACT.format('den')})"


def value_sql(k: KpiDef) -> str:
    """The value from the rolled-up num and den (NULL when it cannot be computed)."""
    if k.kind in ("count", "sum"):
        return "num"
    if k.kind == "ratio":
        return f"{float(k.scale)!r} * num / NULLIF(den, 0)"
    if k.kind == "mean":
        return "num / NULLIF(den, 0)"
    if k.kind in ("max", "quantile"):
        return "CASE WHEN den > 0 THEN num END"
    assert k.value is not None
    return f"CASE WHEN den IS NOT NULL AND den <> 0 THEN ({k.value}) END"


def status_sql(k: KpiDef) -> str:
    """CONVENTIONS.md §7 order: no_data, insufficient_sample, critical, warning, ok."""
    warn, crit = parse_threshold(k.warning), parse_threshold(k.critical)
    rel = warn.relative or crit.relative
    parts = ["CASE WHEN value IS NULL THEN 'no_data'"]
    if rel:
        parts.append("WHEN baseline IS NULL OR baseline = 0 THEN 'no_data'")
    if k.min_sample is not None:
        parts.append(f"WHEN COALESCE(sample, 0) < {int(k.min_sample)} THEN 'insufficient_sample'")
    parts.append(f"WHEN {breach_sql(crit, k.direction)} THEN 'critical'")
    parts.append(f"WHEN {breach_sql(warn, k.direction)} THEN 'warning'")
    parts.append("ELSE 'ok' END")
    return " ".join(parts)


# status_sql's thresholds as values (kpis/batch.py keeps them in _kmeta), so that one status
# expression serves every KPI of a statement: a CASE choosing among the 111 distinct status
# expressions of the batched KPIs tested its branches in turn on each of ~620 k rows.
THRESHOLD_COLUMNS = (("any_rel", "BOOLEAN"), ("min_sample", "INTEGER"), ("higher_better", "BOOLEAN"),
                     ("c_rel", "BOOLEAN"), ("c_low", "DOUBLE"), ("c_high", "DOUBLE"),
                     ("w_rel", "BOOLEAN"), ("w_low", "DOUBLE"), ("w_high", "DOUBLE"))


def threshold_values(k: KpiDef) -> tuple[object, ...]:
    """The KPI's row of THRESHOLD_COLUMNS."""
    warn, crit = parse_threshold(k.warning), parse_threshold(k.critical)
    return (warn.relative or crit.relative,
            int(k.min_sample) if k.min_sample is not None else None,
            k.direction == "higher_better",
            crit.relative, crit.low, crit.high, warn.relative, warn.low, warn.high)


def _breach_by_columns(p: str, m: str, v: str) -> str:
    x = f"(CASE WHEN {m}.{p}_rel THEN {v}.value / NULLIF({v}.baseline, 0) ELSE {v}.value END)"
    return (f"(CASE WHEN {m}.{p}_high IS NOT NULL THEN ({x} < {m}.{p}_low OR {x} > {m}.{p}_high) "
            f"WHEN {m}.higher_better THEN {x} < {m}.{p}_low ELSE {x} > {m}.{p}_low END)")


def status_by_columns(m: str = "km", v: str = "v") -> str:
    """status_sql for every KPI at once, its thresholds read from the columns of `m`
    (THRESHOLD_COLUMNS) and value, baseline and sample from `v`. A missing min_sample
    compares as NULL, i.e. never insufficient."""
    return (f"CASE WHEN {v}.value IS NULL THEN 'no_data' "
            f"WHEN {m}.any_rel AND ({v}.baseline IS NULL OR {v}.baseline = 0) THEN 'no_data' "
            f"WHEN COALESCE({v}.sample, 0) < {m}.min_sample THEN 'insufficient_sample' "
            f"WHEN {_breach_by_columns('c', m, v)} THEN 'critical' "
            f"WHEN {_breach_by_columns('w', m, v)} THEN 'warning' "
            "ELSE 'ok' END")


def is_relative(k: KpiDef) -> bool:
    return parse_threshold(k.warning).relative or parse_threshold(k.critical).relative


def _additive(k: KpiDef) -> bool:
    """Aggregates that can be taken per (period, org, grid) first and combined afterwards."""
    return (k.kind not in ("quantile",) and k.num_agg in ("sum", "max") and k.den_agg == "sum")


def _agg_cte(k: KpiDef, aggs: str, org_levels: str, with_grids: bool, has) -> str:
    """Roll facts up through every ancestor and into their grid.

    Additive aggregates are first reduced to one row per (period, org, grid): a stock of 3.5 M
    customers becomes a few thousand rows before the join with the ancestors, which is what
    made the roll-up the dominant cost (measured: customer stocks 7.2 s -> well under 1 s).
    """
    if _additive(k):
        top = "MAX" if (k.kind == "max" or k.num_agg == "max") else "SUM"
        pre = f"""fg AS (
    SELECT pid, attr_org, attr_grid, {_num_agg(k)} AS num, {_den_agg(k)} AS den,
           {f"SUM({_EXACT.format('sample')})" if has("sample") else _den_agg(k)} AS sample,
           {"BOOL_OR(pending)" if has("pending") else "FALSE"} AS pending,
           {"BOOL_OR(missing)" if has("missing") else "FALSE"} AS missing
    FROM fa GROUP BY pid, attr_org, attr_grid
),"""
        re_aggs = (f"{top}(num) AS num, SUM(den) AS den, SUM(sample) AS sample, "
                   "BOOL_OR(pending) AS pending, BOOL_OR(missing) AS missing")
        grid = f"""
    UNION ALL
    SELECT fg.pid, fg.attr_grid AS unit_no, {re_aggs}
    FROM fg WHERE fg.attr_grid IS NOT NULL GROUP BY fg.pid, fg.attr_grid""" if with_grids else ""
        return f"""{pre}
agg AS (
    SELECT fg.pid, an.ancestor_no AS unit_no, {re_aggs}
    FROM fg JOIN k_org_ancestor an ON an.unit_no = fg.attr_org
    WHERE an.ancestor_level IN ({org_levels})
    GROUP BY fg.pid, an.ancestor_no{grid}
),"""
    src, pre = "fa", ""
    if k.num_agg == "count_distinct" and k.den_agg != "count_distinct" and k.kind not in ("max", "quantile"):
        # one row per (period, org, grid, key) before meeting the ancestors: the customers in
        # arrears were ~3 bills each (80 k facts, 26 k keys at city), and the distinct count's
        # roll-up joined every bill to its 4 ancestors. Exact: the den and sample sums are
        # DECIMAL partial sums, pending and missing ORed.
        src = "fd"
        pre = f"""fd AS (
    SELECT pid, attr_org, attr_grid, num_key, SUM({_EXACT.format('den')}) AS den
           {f", SUM({_EXACT.format('sample')}) AS sample" if has("sample") else ""}
           {", BOOL_OR(pending) AS pending" if has("pending") else ""}
           {", BOOL_OR(missing) AS missing" if has("missing") else ""}
    FROM fa GROUP BY pid, attr_org, attr_grid, num_key
),
"""
    grid = f"""
    UNION ALL
    SELECT {src}.pid, {src}.attr_grid AS unit_no, {aggs}
    FROM {src} WHERE {src}.attr_grid IS NOT NULL GROUP BY {src}.pid, {src}.attr_grid""" if with_grids else ""
    return f"""{pre}agg AS (
    SELECT {src}.pid, an.ancestor_no AS unit_no, {aggs}
    FROM {src} JOIN k_org_ancestor an ON an.unit_no = {src}.attr_org
    WHERE an.ancestor_level IN ({org_levels})
    GROUP BY {src}.pid, an.ancestor_no{grid}
),"""


def attributed_facts(k: KpiDef) -> str:
    """`WITH f, fa`: the facts with their attribution unit (unknown org -> the root) and grid."""
    return f"""WITH f AS (
{k.facts}
),
fa AS (
    SELECT f.*, COALESCE(ko.unit_no, (SELECT unit_no FROM k_root)) AS attr_org,
           kg.unit_no AS attr_grid
    FROM f
    LEFT JOIN k_org ko ON ko.unit_no = f.org_no AND ko.unit_level <> 'grid'
    LEFT JOIN k_org kg ON kg.unit_no = f.grid_no AND kg.unit_level = 'grid'
)"""


# The periods as loaded: a name no CTE shadows (one_per_te below names a CTE _periods).
_ALL_PERIODS = "temp.main._periods"


def compile_kpi(k: KpiDef, fact_columns: set[str], agg: str | None = None,
                one_per_te: bool = False) -> str:
    """The statement producing kpi_value-shaped rows for every unit and period in _periods.
    agg: rows (pid, unit_no, num, den, sample, pending, missing) computed otherwise
    (kpis/distinct_month.py) instead of the roll-up of the facts.
    one_per_te: for facts and presence that see their period only through te (kpis.batch.te_only):
    they and the roll-up are computed for the first period of each te only (a CTE _periods
    shadows the table for them) and every period takes the rows of that one. Today and the
    running month both end at as_of: billing.arrears_customers, a distinct count with its own
    statement, read its bills and rolled up its customers twice a minute."""
    levels = ", ".join(f"'{lvl}'" for lvl in k.org_levels)
    org_levels = ", ".join(f"'{lvl}'" for lvl in k.org_levels if lvl != "grid") or "NULL"
    has = fact_columns.__contains__
    sample = f"SUM({_EXACT.format('sample')})" if has("sample") else _den_agg(k)
    pending = "BOOL_OR(pending)" if has("pending") else "FALSE"
    missing = "BOOL_OR(missing)" if has("missing") else "FALSE"
    aggs = (f"{_num_agg(k)} AS num, {_den_agg(k)} AS den, {sample} AS sample, "
            f"{pending} AS pending, {missing} AS missing")
    counting = k.kind in ("count", "sum")
    presence = (f"SELECT DISTINCT pid FROM ({k.presence})" if k.presence
                else "SELECT pid FROM _periods")
    num_out = "COALESCE(a.num, 0)" if counting or k.kind in ("ratio", "mean", "value") else "a.num"
    den_out = "NULL" if counting else ("COALESCE(a.den, 0)" if k.kind in ("ratio", "mean", "value")
                                       else "a.den")
    agg_cte = (_agg_cte(k, aggs, org_levels, "grid" in k.org_levels, has) if agg is None
               else f"agg AS ({agg}),")
    facts = attributed_facts(k)
    periods, rep = "_periods", "p.pid"
    if one_per_te:
        assert agg is None
        facts = (f"WITH _periods AS (SELECT * FROM {_ALL_PERIODS} WHERE pid IN "
                 f"(SELECT MIN(pid) FROM {_ALL_PERIODS} GROUP BY te)),\n"
                 + facts.removeprefix("WITH "))
        periods = _ALL_PERIODS
        rep = f"(SELECT MIN(q.pid) FROM {_ALL_PERIODS} q WHERE q.te = p.te)"
    return f"""
{facts},
{agg_cte}
present AS ({presence}),
rolled AS (
    SELECT p.pid, p.grain, p.ws, p.we, p.te, p.as_of, u.unit_no, u.unit_level,
           CASE WHEN pr.pid IS NULL OR a.missing THEN NULL ELSE {num_out} END AS num,
           CASE WHEN pr.pid IS NULL OR a.missing THEN NULL ELSE {den_out} END AS den,
           a.sample, COALESCE(a.pending, FALSE) AS pending
    FROM (SELECT *, {rep} AS rep FROM {periods} p) p
    CROSS JOIN (SELECT unit_no, unit_level FROM k_org WHERE unit_level IN ({levels})) u
    LEFT JOIN agg a ON a.pid = p.rep AND a.unit_no = u.unit_no
    LEFT JOIN present pr ON pr.pid = p.rep
),
valued AS (
    SELECT *, CAST({value_sql(k)} AS DOUBLE) AS value, CAST(NULL AS DOUBLE) AS baseline FROM rolled
)
SELECT '{k.id}' AS kpi_id, '{k.theme}' AS theme, unit_no AS org_no, unit_level AS org_level,
       grain, ws AS period_start, CASE WHEN grain = 'near-real-time' THEN as_of ELSE we END AS period_end,
       value, CAST(num AS DOUBLE) AS numerator, CAST(den AS DOUBLE) AS denominator, baseline,
       {status_sql(k)} AS status,
       (grain = 'near-real-time' OR (te >= we AND NOT pending)) AS is_final,
       CAST(sample AS DOUBLE) AS sample
FROM valued
"""
