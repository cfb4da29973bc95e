"""An ordinary pass recomputes only the units whose facts changed (kpis/fact_diff.py): which rows
it writes, and that a row whose baseline reads a period of the same pass is recomputed anyway.

tests/kpis/test_incremental.py checks on simulated passes that every stored row of a pass's
KPIs and periods, the ones it left as they were too, equals the direct evaluation.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pytest

from kpis import fact_diff
from kpis.batch import Diff
from kpis.evaluate import (_baseline_edges, _baseline_in_plan, ensure_schema, evaluate_incremental,
                           evaluate_plan)
from kpis.periods import day, hours_of, month
from kpis.prelude import apply_prelude
from kpis.registry import load_registry
from tests.kpis.harness import load_inputs

KPI = "customer.active_total"    # daily count, baseline previous_period, warning rel:0.99..1.01
AS_OF = datetime(2024, 7, 7, 12, 0)
YESTERDAY, TODAY = day(datetime(2024, 7, 6).date()), day(datetime(2024, 7, 7).date())


def _customer(cons_no: str, org: str, built: str, cancelled: str | None = None) -> dict:
    return {"cons_no": cons_no, "cons_name": cons_no, "org_no": org, "elec_type_code": "201",
            "build_date": built, "cancel_date": cancelled, "status_code": "04" if cancelled else "01",
            "cons_sort_code": "03", "volt_code": "AC02202", "is_deleted": 0}


@pytest.fixture()
def con():
    c = duckdb.connect()
    load_inputs(c, {"inputs": {"mis_customer": [_customer("C1", "S1", "2024-06-01"),
                                                _customer("C2", "S1", "2024-06-20"),
                                                _customer("C3", "S3", "2024-07-05")]}})
    ensure_schema(c)
    yield c
    c.close()


def _pass(con, at: datetime, restrict: bool):
    registry = load_registry()
    k = registry.get(KPI)
    plan = [(k, [YESTERDAY, TODAY])]
    apply_prelude(con)
    diff = Diff({k.id: fact_diff.key_hash(k, fact_diff.tree_signature(con))}, restrict=restrict,
                follows=_baseline_edges(plan))
    summary = evaluate_plan(con, plan, AS_OF, at, None, diff)
    assert not summary.errors


def _rows(con, period) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in con.execute(
        "SELECT org_no, value, baseline, status, computed_at FROM kpi_value "
        "WHERE kpi_id = $k AND period_start = $p", {"k": KPI, "p": period.ws}).fetchall()}


def test_only_the_changed_units_are_written_and_a_baseline_read_in_the_pass_is_recomputed(con):
    """Pass 1: S1 has C1 and C2 on the books both days, S3 has C3 (built 07-05), so every unit
    of 07-07 equals its 07-06 value: status ok. Then C5 is booked at S1 on 07-06 and cancelled
    on 07-07 (on the books at the end of 07-06 only). Pass 2 (ordinary): the facts of 07-06
    changed at S1 only, so of 07-06 it writes S1 and its ancestors K1, C1 and P and leaves K2,
    S2, S3 and the grids as they were; the facts of 07-07 did not change, but a row's baseline
    is its unit's 07-06 value, evaluated in the same pass, so the units recomputed in 07-06 are
    recomputed in 07-07 too, and only they (worked below)."""
    first, second = datetime(2024, 7, 7, 12, 0), datetime(2024, 7, 7, 12, 1)
    _pass(con, first, restrict=True)     # no kept facts yet: every row
    y, t = _rows(con, YESTERDAY), _rows(con, TODAY)
    # 07-06: no stored 07-05 to compare with -> no_data (CONVENTIONS §7)
    assert y["S1"][:3] == (2.0, None, "no_data") and y["P"][0] == 3.0
    # 07-07: S1 2 against 2 (ratio 1.0 in 0.99..1.01), P 3 against 3
    assert t["S1"][:3] == (2.0, 2.0, "ok") and t["P"][:3] == (3.0, 3.0, "ok")
    assert {r[3] for r in (*y.values(), *t.values())} == {first}
    con.execute("INSERT INTO mis_customer SELECT * REPLACE ('C5' AS cons_no, 'C5' AS cons_name, "
                "DATE '2024-07-06' AS build_date, DATE '2024-07-07' AS cancel_date, "
                "'04' AS status_code) FROM mis_customer WHERE cons_no = 'C1'")
    _pass(con, second, restrict=True)
    y, t = _rows(con, YESTERDAY), _rows(con, TODAY)
    # 07-06: S1 3 (C1, C2, C5), P 4; written: S1 and its ancestors only
    assert y["S1"][0] == 3.0 and y["P"][0] == 4.0 and y["S3"][0] == 1.0
    assert {org for org, r in y.items() if r[3] == second} == {"S1", "K1", "C1", "P"}
    # 07-07: S1 still 2 (C5 cancelled on 07-07), against the new baseline 3: 2 / 3 = 0.667,
    # outside 0.97..1.03 -> critical; P 3 against 4 = 0.75 -> critical; S3 1 against 1: ok
    assert t["S1"][:3] == (2.0, 3.0, "critical") and t["P"][:3] == (3.0, 4.0, "critical")
    assert t["S3"][:3] == (1.0, 1.0, "ok")
    assert {org for org, r in t.items() if r[3] == second} == {"S1", "K1", "C1", "P"}


def test_baseline_edges_name_each_period_s_sources_in_the_same_plan():
    registry = load_registry()
    k = registry.get(KPI)
    assert _baseline_edges([(k, [YESTERDAY, TODAY])]) == {(KPI, TODAY, YESTERDAY)}
    assert _baseline_edges([(k, [TODAY])]) == frozenset()
    m = registry.get("order.complaint_share_service")    # the mean of the 3 months before
    may, june, july = month(2024, 5), month(2024, 6), month(2024, 7)
    assert _baseline_edges([(m, [may, june, july])]) == {
        ("order.complaint_share_service", july, june), ("order.complaint_share_service", july, may),
        ("order.complaint_share_service", june, may)}


def test_baseline_in_plan_names_the_periods_whose_baseline_source_is_in_the_same_plan():
    registry = load_registry()
    k = registry.get(KPI)
    assert _baseline_in_plan([(k, [YESTERDAY, TODAY])]) == {(KPI, TODAY)}
    assert _baseline_in_plan([(k, [TODAY])]) == frozenset()
    # the mean of the 3 months before: July reads May and June
    m = registry.get("order.complaint_share_service")
    may, june, july = month(2024, 5), month(2024, 6), month(2024, 7)
    assert _baseline_in_plan([(m, [june, july])]) == {("order.complaint_share_service", july)}
    assert _baseline_in_plan([(m, [may, july])]) == {("order.complaint_share_service", july)}
    assert _baseline_in_plan([(m, [july])]) == frozenset()
    # same hour 4 weeks back: never in a pass's plan of today's hours
    h = registry.get("call.inbound_calls")
    assert _baseline_in_plan([(h, hours_of(TODAY))]) == frozenset()


def test_an_ordinary_pass_evaluates_a_kpi_that_steps_by_day_only_when_its_tables_change(con):
    """time_steps: day (kpis/spec.py): billing.bill_correction_rate has pending facts, but they
    and its corrections compare dates only, so an ordinary pass with no changed table leaves it
    to the sweeps; order.urge_rate (pending for 7 days after the day ends, to the minute) is
    evaluated every pass; a sweep evaluates both."""
    registry = load_registry()
    assert registry.get("billing.bill_correction_rate").time_steps == "day"
    assert registry.get("order.urge_rate").time_steps == "minute"
    at = AS_OF + timedelta(minutes=15)      # 12:15: the hour's sweep is behind
    for sweep_at in (at - timedelta(minutes=1), at - timedelta(minutes=10)):
        con.execute("DELETE FROM kpi_eval_state")
        con.execute("INSERT INTO kpi_eval_state (id, last_dirty_run_id, last_full_at, last_eval_at, "
                    "last_sweep_at, last_past_run_id) VALUES (1, NULL, $a, $a, $s, NULL)",
                    {"a": at - timedelta(minutes=1), "s": sweep_at})
        summary = evaluate_incremental(con, registry, at)
        assert not summary.errors
        evaluated = {kid for kid, _ in summary.evaluated}
        assert "order.urge_rate" in evaluated
        sweep = sweep_at == at - timedelta(minutes=10)
        assert ("billing.bill_correction_rate" in evaluated) is sweep, sweep


def test_a_baseline_a_month_back_from_a_month_end_is_the_month_end_before():
    """billing.collected_amount (daily, same_day_prev_month): 03-31 reads 02-28, as the baseline
    statement's `period_start - INTERVAL 1 MONTH` does in DuckDB; it raised on a 31st before
    (a date with day 31 in February). A plan of 02-28 and 03-31 recomputes 03-31 whole."""
    k = load_registry().get("billing.collected_amount")
    feb28, mar31 = day(datetime(2026, 2, 28).date()), day(datetime(2026, 3, 31).date())
    assert _baseline_in_plan([(k, [feb28, mar31])]) == {("billing.collected_amount", mar31)}
    assert _baseline_in_plan([(k, [day(datetime(2026, 3, 30).date()), mar31])]) == frozenset()
    leap = day(datetime(2028, 2, 29).date())
    assert _baseline_in_plan([(k, [day(datetime(2028, 1, 29).date()), leap])]) == \
        {("billing.collected_amount", leap)}


def test_facts_of_unknown_org_codes_are_kept_as_one_row_with_the_root_s_own(con):
    """Two customers booked under org codes the tree does not know (X1, X2) are attributed to the
    root P (CONVENTIONS §5), where a third customer is booked directly: on 07-06 P's own facts
    are 3 customers (C7 at P, C8 at X1, C9 at X2), kept as one row, and P's value is 3 + the 3 of
    the fixture = 6. A second pass with nothing changed finds no difference, so it writes no row
    of 07-06 (two rows kept for one unit would differ from each other and rewrite P each pass)."""
    for cons_no, org in (("C7", "P"), ("C8", "X1"), ("C9", "X2")):
        con.execute("INSERT INTO mis_customer SELECT * REPLACE ($c AS cons_no, $c AS cons_name, "
                    "$o AS org_no) FROM mis_customer WHERE cons_no = 'C1'", {"c": cons_no, "o": org})
    first, second = datetime(2024, 7, 7, 12, 0), datetime(2024, 7, 7, 12, 1)
    _pass(con, first, restrict=True)
    kept = con.execute("SELECT attr_org, attr_grid, COUNT(*), SUM(num) FROM kpi_fact_last "
                       "WHERE kpi_id = $k AND period_start = $p AND attr_org = 'P' "
                       "GROUP BY ALL", {"k": KPI, "p": YESTERDAY.ws}).fetchall()
    assert kept == [("P", None, 1, 3)]
    assert _rows(con, YESTERDAY)["P"][0] == 6.0
    _pass(con, second, restrict=True)
    y = _rows(con, YESTERDAY)
    assert y["P"][0] == 6.0
    assert {r[3] for r in y.values()} == {first}


def test_markers_kept_before_the_facts_digest_are_compared_row_by_row(con):
    """A warehouse whose kept markers predate kpi_fact_seen.fact_hash (the release before) gets
    the column with no digest: its pairs are compared row by row, so a customer booked at S1
    since is found and only S1 and its ancestors are written (as in the first test)."""
    first, second = datetime(2024, 7, 7, 12, 0), datetime(2024, 7, 7, 12, 1)
    _pass(con, first, restrict=True)
    con.execute("ALTER TABLE kpi_fact_seen DROP COLUMN fact_hash")
    ensure_schema(con)
    assert con.execute("SELECT COUNT(*), COUNT(fact_hash) FROM kpi_fact_seen").fetchone()[1] == 0
    con.execute("INSERT INTO mis_customer SELECT * REPLACE ('C5' AS cons_no, 'C5' AS cons_name, "
                "DATE '2024-07-06' AS build_date) FROM mis_customer WHERE cons_no = 'C1'")
    _pass(con, second, restrict=True)
    y = _rows(con, YESTERDAY)
    assert y["S1"][0] == 3.0 and y["P"][0] == 4.0
    assert {org for org, r in y.items() if r[3] == second} == {"S1", "K1", "C1", "P"}
