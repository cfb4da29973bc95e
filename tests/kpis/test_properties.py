"""Properties of every KPI over simulated data (scale small): ranges, compositions, roll-up, repeatability.

One module-scoped build: the simulator writes 40 days of the `small` territory into a temporary
folder, the ETL loads them into a temporary warehouse and every KPI is evaluated for the last two
weeks (days, today's hours, the current and the last closed month) at the end of the history.
The properties hold for any data, so nothing here depends on what the simulator happened to draw.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from etl.pipeline import run_pass
from etl.warehouse import Warehouse
from kpis.batch import compute_plan, fact_columns, load_periods
from kpis.compile import PERIODS_DDL, compile_kpi
from kpis.evaluate import EvalSummary, default_periods, evaluate_and_store, periods_for
from kpis.periods import Period, day
from kpis.registry import Registry, load_registry
from kpis.spec import KpiDef
from tests.kpis.harness import simulated_small

pytest.importorskip("simulator")

START = date(2026, 4, 25)          # 40 days: all of May is a closed month, June is running
DAYS = 40
END = datetime.combine(START + timedelta(days=DAYS), datetime.min.time())
AS_OF = END - timedelta(seconds=1)  # the last simulated second: "today" is the last full day
FIRST_DAY = AS_OF - timedelta(days=13)

# Parent level -> the child level directly below it in the tree (CONVENTIONS.md §4).
CHILD_LEVEL = {"province": "city", "city": "county", "county": "station", "station": "grid"}
# A loss rate is negative for a 台区 that delivers more than it receives: not bounded by [0, 100].
UNBOUNDED_PERCENT = {"metering.tq_line_loss_rate"}
CUSTOMER_CLASSES = ("customer.residential_share", "customer.general_ci_share",
                    "customer.large_industry_share", "customer.agriculture_share",
                    "customer.other_share")
COMPLAINT_CLASSES = ("order.complaint_share_service", "order.complaint_share_business",
                     "order.complaint_share_outage", "order.complaint_share_power_quality",
                     "order.complaint_share_grid_construction")
KEY = ["kpi_id", "grain", "period_start", "org_no"]


@dataclass
class Evaluated:
    con: duckdb.DuckDBPyConnection
    registry: Registry
    requested: list[Period]
    summary: EvalSummary
    values: pd.DataFrame          # kpi_value right after the first evaluation
    org: pd.DataFrame             # k_org: unit_no, parent_no, unit_level


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Iterator[Evaluated]:
    settings = simulated_small(tmp_path_factory.mktemp("kpi_props"), START, DAYS)
    with Warehouse(settings.warehouse_path, threads=2, memory_limit="2GB") as wh:
        loaded = run_pass(settings, wh)
        assert loaded.ok, f"ETL pass over the simulated sources failed: {loaded}"
        con = wh.cursor()
        registry = load_registry()
        requested = default_periods(AS_OF, FIRST_DAY)
        summary = evaluate_and_store(con, registry, requested, AS_OF)
        values = con.execute("SELECT * FROM kpi_value").df()
        org = con.execute("SELECT unit_no, parent_no, unit_level FROM k_org").df()
        yield Evaluated(con, registry, requested, summary, values, org)
        con.close()


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def test_no_kpi_fails_on_simulated_data(evaluated) -> None:
    assert evaluated.summary.errors == {}, "KPIs failed:\n" + "\n".join(
        f"{k}: {v.splitlines()[0][:200]}" for k, v in evaluated.summary.errors.items())
    produced = set(evaluated.values.kpi_id)
    assert produced == set(evaluated.registry.kpis), \
        f"KPIs without any row: {sorted(set(evaluated.registry.kpis) - produced)}"


def test_most_kpis_of_every_theme_have_values_on_simulated_data(evaluated) -> None:
    v = evaluated.values
    per_kpi = v.assign(nonzero=v.value.notna() & (v.value != 0)).groupby(["theme", "kpi_id"]).nonzero.any()
    problems = []
    for theme, flags in per_kpi.groupby(level="theme"):
        empty = sorted(flags[~flags].index.get_level_values("kpi_id"))
        # A simulator gap or a KPI bug; the list is the useful output, the bar is "most".
        if len(empty) > len(flags) / 2:
            problems.append(f"{theme}: {len(empty)} of {len(flags)} always no_data or 0: {empty}")
    assert not problems, "\n".join(problems)


def test_percent_rates_stay_within_0_and_100(evaluated) -> None:
    pct = [k.id for k in evaluated.registry.kpis.values() if k.unit == "%" and k.id not in UNBOUNDED_PERCENT]
    v = evaluated.values
    out = v[v.kpi_id.isin(pct) & v.value.notna() & ((v.value < 0) | (v.value > 100 + 1e-9))]
    assert out.empty, "rates outside [0, 100]:\n" + out[KEY + ["value", "numerator", "denominator"]].head(20).to_string()


def _shares(v: pd.DataFrame, ids: tuple[str, ...]) -> pd.DataFrame:
    part = v[v.kpi_id.isin(ids)]
    return part.groupby(["grain", "period_start", "org_no"]).agg(
        n=("kpi_id", "nunique"), num=("numerator", "sum"), den_min=("denominator", "min"),
        den_max=("denominator", "max"), value=("value", "sum"), has_value=("value", "count")).reset_index()


def test_customer_class_shares_sum_to_100(evaluated) -> None:
    # The five classes partition the active customers (other_share takes every remaining code).
    s = _shares(evaluated.values, CUSTOMER_CLASSES)
    assert (s.n == len(CUSTOMER_CLASSES)).all()
    assert (s.den_min == s.den_max).all(), "the class shares do not share one denominator"
    valued = s[s.den_min > 0]
    assert not valued.empty and (valued.has_value == len(CUSTOMER_CLASSES)).all()
    bad = valued[(valued.num != valued.den_min) | ((valued.value - 100).abs() > 1e-9)]
    assert bad.empty, "class shares not summing to 100:\n" + bad.head(20).to_string()


def test_complaint_class_shares_never_exceed_100(evaluated) -> None:
    # Five exclusive sub-types over one population of valid complaints; a complaint without a
    # sub-type is in the denominator only, so the sum is at most 100.
    s = _shares(evaluated.values, COMPLAINT_CLASSES)
    assert (s.den_min.fillna(-1) == s.den_max.fillna(-1)).all(), "complaint shares differ in denominator"
    valued = s[s.den_min > 0]
    assert not valued.empty
    bad = valued[(valued.num > valued.den_min) | (valued.value > 100 + 1e-9)]
    assert bad.empty, "complaint shares above 100:\n" + bad.head(20).to_string()


def _load_facts(con: duckdb.DuckDBPyConnection, k: KpiDef, requested: list[Period]) -> None:
    """Append the KPI's facts per period and attribution (CONVENTIONS.md §4) to _fa."""
    periods = periods_for(k, requested, AS_OF)
    con.execute(PERIODS_DDL)
    con.executemany("INSERT INTO _periods VALUES (?, ?, ?, ?, ?, ?, ?)", [
        (i, p.grain, p.ws, p.we, p.te(AS_OF), AS_OF, (p.we - p.ws).total_seconds() / 3600)
        for i, p in enumerate(periods)])
    keys = "COUNT(DISTINCT f.num_key)" if k.num_agg == "count_distinct" else "0"
    con.execute(f"""
        INSERT INTO _fa
        SELECT $kpi, p.grain, p.ws,
               COALESCE(o.unit_no, (SELECT unit_no FROM k_root)),   -- unknown org -> root
               g.parent_no, SUM(f.num), SUM(f.den), {keys}
        FROM ({k.facts}) f JOIN _periods p ON p.pid = f.pid
        LEFT JOIN k_org o ON o.unit_no = f.org_no AND o.unit_level <> 'grid'
        LEFT JOIN k_org g ON g.unit_no = f.grid_no AND g.unit_level = 'grid'
        GROUP BY ALL""", {"kpi": k.id})


# One row per (KPI, period, parent unit, level pair): the parent, its children's sums and the
# facts that count at the parent but in none of its children (own) or in a child but not at the
# parent (foreign: another org's facts placed in one of a 供电所's grids).
ROLLUP_SQL = """
WITH v AS (SELECT v.kpi_id, v.grain, v.period_start, v.org_no, v.org_level, v.numerator,
                  v.denominator, o.parent_no
           FROM _values v JOIN k_org o ON o.unit_no = v.org_no),
pairs AS (SELECT * FROM _pairs),
kids AS (SELECT v.kpi_id, v.grain, v.period_start, v.parent_no AS org_no, pr.clevel,
                SUM(v.numerator) AS c_num, SUM(v.denominator) AS c_den, MAX(v.numerator) AS c_max
         FROM v JOIN pairs pr ON pr.kpi_id = v.kpi_id AND pr.clevel = v.org_level GROUP BY ALL),
own_org AS (SELECT kpi_id, grain, period_start, attr_org AS org_no, SUM(num) AS num, SUM(den) AS den,
                   SUM(keys) AS keys FROM _fa GROUP BY ALL),
own_grid AS (SELECT kpi_id, grain, period_start, attr_org AS org_no, SUM(num) AS num, SUM(den) AS den
             FROM _fa WHERE grid_station IS DISTINCT FROM attr_org GROUP BY ALL),
foreign_grid AS (SELECT kpi_id, grain, period_start, grid_station AS org_no, SUM(num) AS num,
                        SUM(den) AS den
                 FROM _fa WHERE grid_station IS NOT NULL AND grid_station <> attr_org GROUP BY ALL)
SELECT p.kpi_id, pr.additive, p.grain, p.period_start, p.org_level, pr.clevel, p.org_no,
       p.numerator, p.denominator,
       COALESCE(k.c_num, 0) AS c_num, COALESCE(k.c_den, 0) AS c_den, k.c_max,
       COALESCE(CASE WHEN pr.clevel = 'grid' THEN og.num ELSE oo.num END, 0) AS o_num,
       COALESCE(CASE WHEN pr.clevel = 'grid' THEN og.den ELSE oo.den END, 0) AS o_den,
       COALESCE(oo.keys, 0) AS o_keys,
       COALESCE(CASE WHEN pr.clevel = 'grid' THEN fg.num END, 0) AS f_num,
       COALESCE(CASE WHEN pr.clevel = 'grid' THEN fg.den END, 0) AS f_den
FROM v p
JOIN pairs pr ON pr.kpi_id = p.kpi_id AND pr.plevel = p.org_level
LEFT JOIN kids k ON k.kpi_id = p.kpi_id AND k.grain = p.grain AND k.period_start = p.period_start
     AND k.org_no = p.org_no AND k.clevel = pr.clevel
LEFT JOIN own_org oo ON oo.kpi_id = p.kpi_id AND oo.grain = p.grain
     AND oo.period_start = p.period_start AND oo.org_no = p.org_no
LEFT JOIN own_grid og ON og.kpi_id = p.kpi_id AND og.grain = p.grain
     AND og.period_start = p.period_start AND og.org_no = p.org_no
LEFT JOIN foreign_grid fg ON fg.kpi_id = p.kpi_id AND fg.grain = p.grain
     AND fg.period_start = p.period_start AND fg.org_no = p.org_no
WHERE p.numerator IS NOT NULL   -- no_data (no source rows, a missing input): nothing to add up
"""


def test_parent_equals_its_children_plus_its_own_facts(evaluated) -> None:
    """Roll-up (CONVENTIONS.md §4) for every KPI, level pair, period and parent unit.

    A fact counts at its attribution org and every ancestor, so a parent's numerator (and
    denominator) is the sum over its children plus the facts attributed to the parent itself
    (an unknown org sent to the root, an order recorded at county level). Grids are a separate
    attribution column: a 供电所 equals the sum of its grids, plus its facts with no grid or a
    grid of another 供电所, minus the facts of other orgs placed in its grids. The own facts come
    from the definition's facts query; the roll-up being checked is the engine's.
    Distinct counts (one customer in two children counts once above) and maxima are not
    additive: there a child never exceeds its parent and a parent never exceeds its children
    plus its own distinct keys (org levels only: a grid may hold another 供电所's facts).
    """
    ev = evaluated
    con = ev.con
    con.execute("CREATE OR REPLACE TEMP TABLE _fa (kpi_id VARCHAR, grain VARCHAR, period_start TIMESTAMP, "
                "attr_org VARCHAR, grid_station VARCHAR, num DOUBLE, den DOUBLE, keys BIGINT)")
    pairs = []
    for k in ev.registry.kpis.values():
        if "quantile" in (k.kind, k.num_agg):
            continue
        additive = k.num_agg == "sum" and k.den_agg == "sum" and k.kind != "max"
        found = [(k.id, p, c, additive) for p, c in CHILD_LEVEL.items()
                 if p in k.org_levels and c in k.org_levels and (additive or c != "grid")]
        if found:
            pairs.extend(found)
            if k.kind != "max":
                _load_facts(con, k, ev.requested)
    con.execute("CREATE OR REPLACE TEMP TABLE _pairs (kpi_id VARCHAR, plevel VARCHAR, clevel VARCHAR, "
                "additive BOOLEAN)")
    con.executemany("INSERT INTO _pairs VALUES (?, ?, ?, ?)", pairs)
    con.register("_values", ev.values)
    m = con.execute(ROLLUP_SQL).df()
    con.unregister("_values")
    assert len(m) > 10_000, f"only {len(m)} parent values checked: the fixture evaluated too little"
    add = m[m.additive]
    bad_num = (add.numerator - (add.c_num + add.o_num - add.f_num)).abs() > 1e-6 * add.numerator.abs().clip(lower=1)
    bad_den = add.denominator.notna() & ((add.denominator - (add.c_den + add.o_den - add.f_den)).abs()
                                         > 1e-6 * add.denominator.abs().clip(lower=1))
    rest = m[~m.additive]
    bad_rest = (rest.c_max.notna() & (rest.c_max > rest.numerator + 1e-9)) | \
        (~rest.kpi_id.str.startswith("call.longest") & (rest.numerator > rest.c_num + rest.o_keys + 1e-9))
    bad = pd.concat([add[bad_num | bad_den], rest[bad_rest]])
    assert bad.empty, f"{len(bad)} roll-up mismatches (parent != children + own - foreign):\n" + \
        bad.head(25).to_string()


def _reevaluate(ev: Evaluated) -> tuple[EvalSummary, pd.DataFrame]:
    """Evaluate today, its hours, the current and the last closed month again (the worker's set)."""
    again = default_periods(AS_OF, AS_OF)
    summary = evaluate_and_store(ev.con, ev.registry, again, AS_OF)
    now = ev.con.execute("SELECT * FROM kpi_value").df()
    keys = {(p.grain, pd.Timestamp(p.ws)) for p in again} | {("near-real-time", pd.Timestamp(AS_OF))}
    def of_again(v: pd.DataFrame) -> pd.DataFrame:
        return v[[(g, s) in keys for g, s in zip(v.grain, v.period_start)]]

    return summary, of_again(ev.values).merge(of_again(now), on=KEY, how="outer", suffixes=("_1", "_2"),
                                              indicator=True)


@pytest.fixture(scope="module")
def reevaluated(evaluated) -> tuple[EvalSummary, pd.DataFrame]:
    return _reevaluate(evaluated)


def test_reevaluating_gives_the_same_values_and_statuses(reevaluated) -> None:
    summary, m = reevaluated
    assert summary.errors == {}
    assert len(m) > 1000 and (m._merge == "both").all(), \
        "rows appearing or vanishing:\n" + m[m._merge != "both"][KEY + ["_merge"]].head(20).to_string()
    same = [(pd.isna(a) and pd.isna(b)) or (not pd.isna(a) and not pd.isna(b) and _close(a, b))
            for a, b in zip(m.value_1, m.value_2)]
    diff = m[~pd.Series(same, index=m.index) | (m.status_1 != m.status_2)]
    assert diff.empty, "values changed on re-evaluation:\n" + \
        diff[KEY + ["value_1", "value_2", "status_1", "status_2"]].head(20).to_string()


def test_reevaluating_reports_no_changed_value(reevaluated) -> None:
    summary, _ = reevaluated
    assert summary.changed == [], f"{len(summary.changed)} rows reported changed, e.g. {summary.changed[:5]}"


def test_batched_engine_equals_each_kpis_own_statement(evaluated) -> None:
    """The engine computes a pass in a few statements for all KPIs (kpis.batch); each KPI's own
    compiled statement (kpis.compile.compile_kpi) must give the same rows, to the last bit."""
    ev = evaluated
    requested = default_periods(AS_OF, AS_OF)
    plan = [(k, periods_for(k, requested, AS_OF)) for k in ev.registry.kpis.values()]
    errors: dict[str, str] = {}
    compute_plan(ev.con, plan, AS_OF, errors)
    assert errors == {}
    batched = ev.con.execute("SELECT * FROM _result").df()
    own = []
    for k, periods in plan:
        if periods:
            cols = fact_columns(ev.con, k)
            load_periods(ev.con, "_periods", range(len(periods)), periods, AS_OF)
            own.append(ev.con.execute(compile_kpi(k, cols)).df())
    m = batched.merge(pd.concat(own, ignore_index=True), on=KEY, how="outer", suffixes=("_b", "_o"),
                      indicator=True)
    assert len(m) > 1000 and (m._merge == "both").all(), \
        "rows only on one side:\n" + m[m._merge != "both"][KEY + ["_merge"]].head(20).to_string()
    bad = pd.Series(False, index=m.index)
    for col in ("value", "numerator", "denominator", "sample"):
        a, b = m[f"{col}_b"], m[f"{col}_o"]
        bad |= ~((a == b) | (a.isna() & b.isna()))
    for col in ("status", "is_final", "period_end", "org_level", "theme"):
        bad |= m[f"{col}_b"] != m[f"{col}_o"]
    assert not bad.any(), f"{int(bad.sum())} rows differ:\n" + m[bad].head(20).to_string()


def test_reduced_facts_sum_to_the_facts(evaluated) -> None:
    """A KPI's reduced facts (kpis/spec.py `reduced`, what the engine sums) equal its facts (its
    items: detail pages, exports) summed by period, org and grid, exactly: for every day of the
    simulated span (customers built and closed between them), its months and the running day,
    all loaded at once, so the clamped dates of kpis/sql/shared.sql k_cust_groups are tested
    against periods on both sides of each customer's dates."""
    ev = evaluated
    reduced = [k for k in ev.registry.kpis.values() if k.reduced]
    assert len(reduced) >= 18
    compared = 0
    # also as of a past instant, with customers built after every period's end
    past = datetime.combine(START + timedelta(days=DAYS // 2), datetime.min.time()) + timedelta(hours=12)
    for as_of, n_days in ((AS_OF, DAYS), (past, DAYS // 2 + 1)):
        periods = sorted({*(p for p in ev.requested if p.ws <= as_of),
                          *(day(START + timedelta(days=i)) for i in range(n_days))})
        load_periods(ev.con, "_periods", range(len(periods)), periods, as_of)
        compared += _compare_reduced(ev.con, reduced)
    assert compared > 1000


def _compare_reduced(con: duckdb.DuckDBPyConnection, reduced: list[KpiDef]) -> int:
    compared = 0
    for k in reduced:
        cols = [c for c in ("num", "den", "sample") if c in fact_columns(con, k)]
        sums = ", ".join(f"SUM(CAST({c} AS DECIMAL(38, 9))) AS {c}" for c in cols)

        def reduce(sql: str) -> pd.DataFrame:
            return con.execute(f"SELECT pid, org_no, grid_no, {sums} FROM ({sql}) AS f "
                                  "GROUP BY ALL ORDER BY ALL").df()

        a, b = reduce(k.facts), reduce(k.reduced)
        assert len(a) > 0, f"{k.id}: no facts in the simulated span"
        pd.testing.assert_frame_equal(a, b, check_dtype=False, obj=k.id)
        compared += len(a)
    return compared
