"""Work the engine shares between KPIs and periods: facts read once per distinct te
(kpis.batch.te_only) and prelude tables built only for plans that read them (kpis.prelude).

Values are unaffected by construction; tests/kpis/test_properties.py checks on simulated data
that the batched engine (which shares) gives each KPI's own statement's rows to the last bit.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pytest
import yaml

from kpis import shared
from kpis.batch import NESTED_LOOP_MAX_ROWS, SharedCache, load_periods, te_only
from kpis.evaluate import evaluate_and_store
from kpis.periods import day, month
from kpis.prelude import apply_prelude
from kpis.registry import load_registry
from tests.kpis.harness import load_inputs

CASES = Path(__file__).resolve().parent / "cases"


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.mark.parametrize("kpi, shared", [
    ("customer.residential_share", True),     # stock: CROSS JOIN _periods, ACTIVE at p.te
    ("metering.alarm_clock_deviation", True),  # stock: last check in [te - 7 days, te)
    ("customer.active_total", True),          # names `we` in a comment only
    ("order.total", False),                   # flow: placed in [p.ws, p.te)
    ("reliability.saifi", False),             # rolling: a window ending at p.we
])
def test_te_only_is_read_from_the_sql(registry, kpi, shared):
    assert te_only(registry.get(kpi)) is shared


def _customer(cons_no: str, org: str, built: str, elec_type: str) -> dict:
    return {"cons_no": cons_no, "cons_name": cons_no, "org_no": org, "elec_type_code": elec_type,
            "build_date": built, "status_code": "01", "cons_sort_code": "03", "volt_code": "AC02202",
            "is_deleted": 0}


def _three_customers() -> duckdb.DuckDBPyConnection:
    """C1 (residential, built 2024-06-01) and C2 (business, built 06-20) of S1, and C3
    (residential, built 07-05)."""
    con = duckdb.connect()
    load_inputs(con, {"inputs": {
        "mis_code": [{"code_type": "ELEC_TYPE", "code_value": "201", "code_name": "res",
                      "parent_value": "2", "is_deleted": 0},
                     {"code_type": "ELEC_TYPE", "code_value": "401", "code_name": "biz",
                      "parent_value": "4", "is_deleted": 0}],
        "mis_customer": [_customer("C1", "S1", "2024-06-01", "201"),
                         _customer("C2", "S1", "2024-06-20", "401"),
                         _customer("C3", "S1", "2024-07-05", "201")]}})
    return con


def test_today_and_the_running_month_get_the_same_stock(registry):
    """Worked by hand: residential share at 2024-07-10 23:00 (today and July so far both end
    then) and at the end of June. C1 (residential, built 06-01) and C2 (business, built 06-20)
    are on the books at both ends; C3 (residential, built 07-05) only in July.
    June: 1 residential of 2 = 50 %; today and July: 2 of 3 = 66.67 %."""
    con = _three_customers()
    as_of = datetime(2024, 7, 10, 23, 0)
    k = registry.get("customer.residential_share").model_copy(update={"min_sample": None})
    s = evaluate_and_store(con, registry, [day(as_of.date()), month(2024, 7), month(2024, 6)],
                           as_of, kpis=[k], computed_at=as_of)
    assert not s.errors
    rows = dict(con.execute("SELECT grain || ' ' || CAST(period_start AS VARCHAR), value "
                            "FROM kpi_value WHERE org_no = 'S1'").fetchall())
    assert rows == pytest.approx({"daily 2024-07-10 00:00:00": 200 / 3,
                                  "monthly 2024-07-01 00:00:00": 200 / 3,
                                  "monthly 2024-06-01 00:00:00": 50.0})


@pytest.mark.parametrize("flush_rows", [None, 1])
def test_a_plan_stored_in_parts_stores_what_one_part_stores(registry, monkeypatch, flush_rows):
    """The same customers as above, with customer.active_total beside the residential share
    (hand-worked: 2 customers at the end of June, 3 in July and today). One part is stored from
    _result itself; a backfill larger than FLUSH_ROWS (1 here: a part per KPI) is copied into
    _batch part by part and stored at the end: both give these values."""
    from kpis import evaluate
    if flush_rows is not None:
        monkeypatch.setattr(evaluate, "FLUSH_ROWS", flush_rows)
    con = _three_customers()
    as_of = datetime(2024, 7, 10, 23, 0)
    kpis = [registry.get(kid).model_copy(update={"min_sample": None})
            for kid in ("customer.residential_share", "customer.active_total")]
    s = evaluate_and_store(con, registry, [day(as_of.date()), month(2024, 7), month(2024, 6)],
                           as_of, kpis=kpis, computed_at=as_of)
    assert not s.errors and s.kpis == 2
    rows = {(k, g + " " + str(p)): v for k, g, p, v in con.execute(
        "SELECT kpi_id, grain, CAST(period_start AS VARCHAR), value FROM kpi_value "
        "WHERE org_no = 'S1'").fetchall()}
    assert rows == pytest.approx({
        ("customer.residential_share", "daily 2024-07-10 00:00:00"): 200 / 3,
        ("customer.residential_share", "monthly 2024-07-01 00:00:00"): 200 / 3,
        ("customer.residential_share", "monthly 2024-06-01 00:00:00"): 50.0,
        ("customer.active_total", "daily 2024-07-10 00:00:00"): 3,
        ("customer.active_total", "monthly 2024-07-01 00:00:00"): 3,
        ("customer.active_total", "monthly 2024-06-01 00:00:00"): 2})
    assert s.rows == con.execute("SELECT COUNT(*) FROM kpi_value").fetchone()[0]


def _meters(meters: tuple[str, ...], days: list[tuple[str, str, bool]]) -> duckdb.DuckDBPyConnection:
    """Meters in collection scope at S1 (terminal T1) and their daily rows (meter, date,
    collected: success at 23:00, else status 02)."""
    con = duckdb.connect()
    load_inputs(con, {"inputs": {
        "meter_terminal": [{"terminal_id": "T1", "terminal_type": "01", "org_no": "S1",
                            "run_status": "01"}],
        "meter_coll_obj": [{"meter_asset_no": m, "org_no": "S1", "tg_no": None, "status_code": "01",
                            "coll_flag": 1, "terminal_id": "T1"} for m in meters],
        "meter_collection_daily": [
            {"meter_asset_no": m, "data_date": d, "org_no": "S1", "tg_no": None,
             "coll_status": "01" if ok else "02", "terminal_id": "T1",
             "success_time": f"{d} 23:00:00" if ok else None} for m, d, ok in days]}})
    return con


def _s1_values(con: duckdb.DuckDBPyConnection, registry, k) -> dict[str, float]:
    """k evaluated alone for 07-02, July to date and June at 07-03 10:00: S1's values."""
    as_of = datetime(2024, 7, 3, 10, 0)
    s = evaluate_and_store(con, registry, [day(datetime(2024, 7, 2).date()), month(2024, 7),
                                           month(2024, 6)], as_of, kpis=[k], computed_at=as_of)
    assert not s.errors
    return dict(con.execute("SELECT grain || ' ' || CAST(period_start AS VARCHAR), value "
                            "FROM kpi_value WHERE org_no = 'S1'").fetchall())


def test_a_statement_bounds_its_rows_by_its_earliest_period(registry):
    """metering.daily_collect_success_rate filters on periods_from(), which the batched engine
    replaces by the earliest ws of the statement's periods. Worked by hand: E1 succeeds on
    06-30, 07-01 and 07-02, E2 fails on 07-01 (successes before 09:00 of the next day; as_of
    07-03 10:00). Evaluated together, 07-02 (1/1), July (E1 twice, E2's failure: 2/3) and June
    (06-30: 1/1): the bound is June's start, so neither July's 07-01 nor June's row is lost."""
    con = _meters(("E1", "E2"), [("E1", "2024-06-30", True), ("E1", "2024-07-01", True),
                                 ("E2", "2024-07-01", False), ("E1", "2024-07-02", True)])
    k = registry.get("metering.daily_collect_success_rate").model_copy(update={"min_sample": None})
    assert "periods_from()" in k.facts
    assert _s1_values(con, registry, k) == pytest.approx({"daily 2024-07-02 00:00:00": 100.0,
                                  "monthly 2024-07-01 00:00:00": 200 / 3,
                                  "monthly 2024-06-01 00:00:00": 100.0})


def test_a_stock_at_te_bounds_its_history_by_the_earliest_te(registry):
    """metering.consecutive_fail_meters reads the meters' days D-2..D (D: the day of te) and
    filters the history on periods_te_from(), which the batched engine replaces by the earliest
    te of the statement's periods. Worked by hand (as_of 07-03 10:00): E1 fails 06-28..06-30,
    E2 fails 06-30..07-02, E3 is collected on 07-03. June (te 07-01, D 06-30): E1 -> 1. 07-02:
    E2 -> 1. July to date (D 07-03): E2 failed on two of 07-01..07-03 -> 0. The bound is June's
    te less three days (06-28): a bound from a later te would lose E1's first failure."""
    con = _meters(("E1", "E2", "E3"),
                  [("E1", d, False) for d in ("2024-06-28", "2024-06-29", "2024-06-30")]
                  + [("E2", d, False) for d in ("2024-06-30", "2024-07-01", "2024-07-02")]
                  + [("E3", "2024-07-03", True)])
    k = registry.get("metering.consecutive_fail_meters")
    assert "periods_te_from()" in k.facts
    assert _s1_values(con, registry, k) == {"daily 2024-07-02 00:00:00": 1, "monthly 2024-07-01 00:00:00": 0,
                    "monthly 2024-06-01 00:00:00": 1}


def test_a_prelude_table_not_needed_is_kept_or_created_empty():
    con = duckdb.connect()
    load_inputs(con, {"inputs": {"cs_work_order": [
        {"wo_no": "W1", "busi_type_code": "01", "accept_channel": "01", "org_no": "S1",
         "accept_time": "2024-07-10 08:00:00",
         "status_code": "01", "is_deleted": 0}]}})
    apply_prelude(con, needed=())
    assert con.execute("SELECT COUNT(*) FROM k_wo").fetchone()[0] == 0     # bound, empty
    apply_prelude(con, needed={"k_wo"})
    assert con.execute("SELECT COUNT(*) FROM k_wo").fetchone()[0] == 1
    con.execute("DELETE FROM cs_work_order")
    apply_prelude(con, needed=())                                           # kept as built
    assert con.execute("SELECT COUNT(*) FROM k_wo").fetchone()[0] == 1
    apply_prelude(con)                                                      # None: all rebuilt
    assert con.execute("SELECT COUNT(*) FROM k_wo").fetchone()[0] == 0


class _Recording:
    """The engine's connection, keeping the statements that insert reduced facts."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con, self.facts, self.all = con, [], []

    def execute(self, sql: str, *args: object) -> duckdb.DuckDBPyConnection:
        if sql.startswith("INSERT INTO _fr ") and ("-- reliability." in sql or "-- metering." in sql):
            self.facts.append(sql)
        self.all.append(sql)
        return self._con.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._con, name)


def test_a_shared_subquery_is_computed_once_for_the_kpis_of_a_statement(registry):
    """reliability.saifi and reliability.asai both count the customers on the books at each
    period end (kpis/sql/shared.sql k_active_n): evaluated together, one statement states it
    once. Worked by hand, no outages, as_of 2024-08-05: C1 built 06-01, C2 built 07-05, C3 built
    in 2023 and cancelled 06-15 (off the books from that day). End of June: C1 = 1 customer; end
    of July: C1, C2 = 2. SAIFI's denominator is N; ASAI's is N x the hours of the 12 months
    before the period end (2023-07-01..2024-07-01 and 2023-08-01..2024-08-01: 366 days, 8,784 h)."""
    con = duckdb.connect()
    c3 = {**_customer("C3", "S1", "2023-03-01", "201"), "cancel_date": "2024-06-15",
          "status_code": "04"}
    load_inputs(con, {"inputs": {"mis_customer": [_customer("C1", "S1", "2024-06-01", "201"),
                                                  _customer("C2", "S1", "2024-07-05", "201"), c3]}})
    as_of = datetime(2024, 8, 5, 10, 0)
    kpis = [registry.get(i).model_copy(update={"min_sample": None})
            for i in ("reliability.saifi", "reliability.asai")]
    rec = _Recording(con)
    s = evaluate_and_store(rec, registry, [month(2024, 6), month(2024, 7)], as_of, kpis=kpis,
                           computed_at=as_of)
    assert not s.errors
    assert len(rec.facts) == 1 and rec.facts[0].count("k_active_n AS MATERIALIZED") == 1
    assert "-- reliability.saifi" in rec.facts[0] and "-- reliability.asai" in rec.facts[0]
    rows = {(r[0], str(r[1].date())): r[2] for r in con.execute(
        "SELECT kpi_id, period_start, denominator FROM kpi_value WHERE org_no = 'S1'").fetchall()}
    assert rows == {("reliability.saifi", "2024-06-01"): 1, ("reliability.saifi", "2024-07-01"): 2,
                    ("reliability.asai", "2024-06-01"): 8784, ("reliability.asai", "2024-07-01"): 17568}


def test_a_lifted_subquery_keeps_the_statements_bound(registry):
    """Both collection success rates read k_coll_day, which filters on periods_from(): lifted to
    the top of their statement, it must still get the earliest ws as the bound. Worked by hand
    (successes before 09:00 of the next day; as_of 07-03 10:00): E1 and E2 behind terminal T1
    (type 01), E3 behind T2 (03, a special transformer). E1 succeeds 06-30, 07-01, 07-02; E2
    fails 07-01; E3 fails 06-30 and succeeds 07-02. All meters: 07-02 2/2, July 3/4, June 1/2.
    Special (E3 only): 07-02 1/1, July 1/1, June 0/1."""
    con = duckdb.connect()
    meters = [{"meter_asset_no": m, "org_no": "S1", "tg_no": None, "status_code": "01",
               "coll_flag": 1, "terminal_id": t} for m, t in (("E1", "T1"), ("E2", "T1"), ("E3", "T2"))]

    def row(m, t, d, ok):
        return {"meter_asset_no": m, "data_date": d, "org_no": "S1", "tg_no": None,
                "coll_status": "01" if ok else "02", "terminal_id": t,
                "success_time": f"{d} 23:00:00" if ok else None}

    load_inputs(con, {"inputs": {
        "meter_terminal": [{"terminal_id": t, "terminal_type": ty, "org_no": "S1", "run_status": "01"}
                           for t, ty in (("T1", "01"), ("T2", "03"))],
        "meter_coll_obj": meters,
        "meter_collection_daily": [row("E1", "T1", "2024-06-30", True), row("E1", "T1", "2024-07-01", True),
                                   row("E2", "T1", "2024-07-01", False), row("E1", "T1", "2024-07-02", True),
                                   row("E3", "T2", "2024-06-30", False), row("E3", "T2", "2024-07-02", True)]}})
    as_of = datetime(2024, 7, 3, 10, 0)
    kpis = [registry.get(i).model_copy(update={"min_sample": None})
            for i in ("metering.daily_collect_success_rate", "metering.collect_success_rate_special")]
    rec = _Recording(con)
    s = evaluate_and_store(rec, registry, [day(datetime(2024, 7, 2).date()), month(2024, 7),
                                           month(2024, 6)], as_of, kpis=kpis, computed_at=as_of)
    assert not s.errors
    assert len(rec.facts) == 1 and rec.facts[0].count("k_coll_day AS MATERIALIZED") == 1
    assert "periods_from()" not in rec.facts[0]
    rows = {(r[0], r[1]): r[2] for r in con.execute(
        "SELECT kpi_id, grain || ' ' || CAST(period_start AS VARCHAR), value "
        "FROM kpi_value WHERE org_no = 'S1'").fetchall()}
    assert rows == pytest.approx({
        ("metering.daily_collect_success_rate", "daily 2024-07-02 00:00:00"): 100.0,
        ("metering.daily_collect_success_rate", "monthly 2024-07-01 00:00:00"): 75.0,
        ("metering.daily_collect_success_rate", "monthly 2024-06-01 00:00:00"): 50.0,
        ("metering.collect_success_rate_special", "daily 2024-07-02 00:00:00"): 100.0,
        ("metering.collect_success_rate_special", "monthly 2024-07-01 00:00:00"): 100.0,
        ("metering.collect_success_rate_special", "monthly 2024-06-01 00:00:00"): 0.0})


def test_a_shared_subquery_read_through_te_is_computed_once_per_evaluation(registry):
    """billing.arrears_amount (summed, in a statement of reduced facts) and
    billing.arrears_customers (a distinct count, in its own statement) both read k_bill_out,
    which reads _periods only through te: it is built once and both statements read it. Inputs
    and working: tests/kpis/cases/billing.arrears_customers.conventions_10_3.yaml (customers in
    arrears at 06-30: S1 1, S2 1, P 3); the amounts at 06-30: S1 B1 40.00 + B2 50.00 = 90.00,
    S2 B4 30.00, P 90.00 + 30.00 + B8 15.50 = 135.50."""
    case = yaml.safe_load((CASES / "billing.arrears_customers.conventions_10_3.yaml").read_text(encoding="utf-8"))
    con = duckdb.connect()
    load_inputs(con, {"inputs": case["inputs"]})
    as_of = datetime.fromisoformat(case["as_of"])
    kpis = [registry.get(i) for i in ("billing.arrears_amount", "billing.arrears_customers")]
    rec = _Recording(con)
    s = evaluate_and_store(rec, registry, [day(datetime(2024, 6, 30).date())], as_of, kpis=kpis,
                           computed_at=as_of)
    assert not s.errors
    readers = [q for q in rec.all if "k_bill_out AS (SELECT * FROM _shared_k_bill_out)" in q]
    builds = [q for q in rec.all if q.startswith("CREATE OR REPLACE TEMP TABLE _shared_k_bill_out ")]
    assert len(readers) == 2 and len(builds) == 1
    # (a DESCRIBE that binds the facts still states it: it computes nothing)
    assert not any("k_bill_out AS MATERIALIZED" in q for q in rec.all if q.startswith("INSERT"))
    rows = {(r[0], r[1]): r[2] for r in con.execute(
        "SELECT kpi_id, org_no, value FROM kpi_value WHERE org_no IN ('S1', 'S2', 'P')").fetchall()}
    assert rows == pytest.approx({("billing.arrears_customers", "S1"): 1, ("billing.arrears_customers", "S2"): 1,
                                  ("billing.arrears_customers", "P"): 3, ("billing.arrears_amount", "S1"): 90.0,
                                  ("billing.arrears_amount", "S2"): 30.0, ("billing.arrears_amount", "P"): 135.5})


def test_the_shared_cache_is_built_again_for_other_te_values():
    """kpis.batch.SharedCache keys a cached subquery by the te (and as_of) values of _periods:
    a statement over other period ends gets its own rows, not the first statement's."""
    con = duckdb.connect()
    load_inputs(con, {"inputs": {"mis_customer": [_customer("C1", "S1", "2024-06-01", "201"),
                                                  _customer("C2", "S1", "2024-07-05", "201")]}})
    apply_prelude(con)
    cache = SharedCache(con)
    stmt = shared.expand("SELECT SUM(n) AS n FROM k_cust_n c CROSS JOIN _periods p "
                         "WHERE is_active(0, c.bd, NULL, c.cancel_date, c.status_code, p.te)")
    as_of = datetime(2024, 7, 10, 23, 0)
    counts = []
    for periods in ([month(2024, 7)], [day(as_of.date())], [month(2024, 6)]):
        load_periods(con, "_periods", range(len(periods)), periods, as_of)
        counts.append(con.execute(cache.use(stmt)).fetchone()[0])
    assert counts == [2, 2, 1]


def test_range_joins_to_few_periods_are_planned_as_nested_loops_and_the_setting_restored(registry):
    """kpis.batch.compute_plan raises DuckDB's nested_loop_join_threshold for its statements (a
    range join to a few periods: no sort of the large side) and gives the connection its own
    value back after, for whatever else runs on it. Values as hand-computed in
    test_a_shared_subquery_read_through_te_is_computed_once_per_evaluation."""
    case = yaml.safe_load((CASES / "billing.arrears_customers.conventions_10_3.yaml").read_text(encoding="utf-8"))
    con = duckdb.connect()
    load_inputs(con, {"inputs": case["inputs"]})
    con.execute("SET nested_loop_join_threshold = 7")
    rec = _Recording(con)
    as_of = datetime.fromisoformat(case["as_of"])
    s = evaluate_and_store(rec, registry, [day(datetime(2024, 6, 30).date())], as_of,
                           kpis=[registry.get("billing.arrears_amount")], computed_at=as_of)
    assert not s.errors
    assert f"SET nested_loop_join_threshold = {NESTED_LOOP_MAX_ROWS}" in rec.all
    assert con.execute("SELECT current_setting('nested_loop_join_threshold')").fetchone()[0] == 7
    rows = dict(con.execute("SELECT org_no, value FROM kpi_value WHERE org_no IN ('S1', 'S2', 'P')").fetchall())
    assert rows == pytest.approx({"S1": 90.0, "S2": 30.0, "P": 135.5})


def _follow_up_visits() -> duckdb.DuckDBPyConnection:
    """tests/kpis/cases/order.complaint_callback_satisfaction.month.yaml's orders and visits:
    CPa complaint (S1), CPb repair (S1), CPc complaint merged into CPa (S2), CPd complaint (org ZZ,
    unknown -> P); successful visits V1 CPa 07-01 00:00 满意, V2 CPa 07-31 23:59:59 不满意, V3 CPb
    07-10 10:00 满意, V4 CPc 07-10 10:00 满意, V5 CPd 07-15 10:00 基本满意, V6 CPa 08-01 00:00."""
    case = yaml.safe_load((CASES / "order.complaint_callback_satisfaction.month.yaml").read_text())
    con = duckdb.connect()
    load_inputs(con, case)
    return con


def test_the_follow_up_satisfaction_rates_share_their_visits(registry):
    """order.callback_satisfaction (every order type), order.complaint_callback_satisfaction
    (complaints, 02) and repair.satisfaction (fault reports, 01) read the visits of their periods
    with their orders once (kpis/sql/shared.sql k_visit_sat) when evaluated together. Worked by
    hand (V4 is on a merged order, V6 in August: out everywhere): July, all types: S1 V1, V2, V3 =
    2 of 3, P adds V5 = 3 of 4; complaints: S1 V1, V2 = 1 of 2, P 2 of 3; repair: V3 = 1 of 1 at
    S1 and P. 2024-07-10: all types S1 1 of 1 (V3); complaints none (0 of 0); repair 1 of 1."""
    con = _follow_up_visits()
    ids = ("order.callback_satisfaction", "order.complaint_callback_satisfaction",
           "repair.satisfaction")
    kpis = [registry.get(i).model_copy(update={"min_sample": None}) for i in ids]
    rec = _Recording(con)
    as_of = datetime(2024, 8, 1, 8, 0)
    s = evaluate_and_store(rec, registry, [month(2024, 7), day(datetime(2024, 7, 10).date())], as_of,
                           kpis=kpis, computed_at=as_of)
    assert not s.errors
    facts = [q for q in rec.all if q.startswith("INSERT INTO _fr ") and "k_visit_sat" in q]
    assert len(facts) == 1 and facts[0].count("k_visit_sat AS MATERIALIZED") == 1
    assert all(f"-- {i} (named" in facts[0] for i in ids)
    rows = {(r[0], r[1], r[2]): (r[3], r[4]) for r in con.execute(
        "SELECT kpi_id, grain, org_no, numerator, denominator FROM kpi_value "
        "WHERE org_no IN ('S1', 'P')").fetchall()}
    assert rows == {
        ("order.callback_satisfaction", "monthly", "S1"): (2, 3),
        ("order.callback_satisfaction", "monthly", "P"): (3, 4),
        ("order.callback_satisfaction", "daily", "S1"): (1, 1),
        ("order.callback_satisfaction", "daily", "P"): (1, 1),
        ("order.complaint_callback_satisfaction", "monthly", "S1"): (1, 2),
        ("order.complaint_callback_satisfaction", "monthly", "P"): (2, 3),
        ("order.complaint_callback_satisfaction", "daily", "S1"): (0, 0),
        ("order.complaint_callback_satisfaction", "daily", "P"): (0, 0),
        ("repair.satisfaction", "monthly", "S1"): (1, 1),
        ("repair.satisfaction", "monthly", "P"): (1, 1),
        ("repair.satisfaction", "daily", "S1"): (1, 1),
        ("repair.satisfaction", "daily", "P"): (1, 1)}


def test_a_distinct_count_at_te_is_rolled_up_once_per_te(registry, monkeypatch):
    """billing.arrears_customers (a distinct count: its own statement) over the bills of
    tests/kpis/cases/billing.arrears_customers.conventions_10_3.yaml plus F6, 50.00 paid on B2 on
    07-02 07:00, at as_of 07-02 08:00. 06-30 and June both end 07-01 00:00, 07-02 and July so far
    both end at as_of: the facts and the roll-up are computed for one period of each te and the
    other takes its rows (compile_kpi one_per_te). Worked by hand (the case's working for 07-01
    00:00: BK1 in S1 with B1 40.00 and B2 50.00 out, BK2 in S2 with B4, BK4 at P with B8): June
    and 06-30: S1 1, S2 1, K1 2, P 3. At 07-02 08:00: B1 paid off 07-01 09:00, B2 by F6, B3 not
    due (07-05): BK2 and BK4 remain: S1 0, S2 1, K1 1, P 2. The running day and month are not
    final, the closed ones are."""
    from kpis import batch, compile as compile_mod
    case = yaml.safe_load((CASES / "billing.arrears_customers.conventions_10_3.yaml").read_text())
    case["inputs"]["mis_rcved_flow"].append(
        {"rcved_id": "F6", "bill_id": "B2", "cons_no": "BK1", "org_no": "S1", "rcved_amt": 50.0,
         "rcved_time": "2024-07-02 07:00:00", "status_code": "01"})
    con = duckdb.connect()
    load_inputs(con, case)
    shared_te = []

    def recording(k, cols, agg=None, one_per_te=False):
        shared_te.append((k.id, one_per_te))
        return compile_mod.compile_kpi(k, cols, agg, one_per_te)
    monkeypatch.setattr(batch, "compile_kpi", recording)
    k = registry.get("billing.arrears_customers").model_copy(update={"min_sample": None})
    as_of = datetime(2024, 7, 2, 8, 0)
    s = evaluate_and_store(con, registry, [day(datetime(2024, 6, 30).date()), month(2024, 6),
                                           day(as_of.date()), month(2024, 7)],
                           as_of, kpis=[k], computed_at=as_of)
    assert not s.errors
    assert shared_te == [("billing.arrears_customers", True)]
    rows = {(r[0] + " " + str(r[1].date()), r[2]): (r[3], r[4]) for r in con.execute(
        "SELECT grain, period_start, org_no, value, is_final FROM kpi_value "
        "WHERE org_no IN ('S1', 'S2', 'K1', 'P')").fetchall()}
    closed = {"S1": 1, "S2": 1, "K1": 2, "P": 3}
    running = {"S1": 0, "S2": 1, "K1": 1, "P": 2}
    assert rows == {
        **{("daily 2024-06-30", o): (v, True) for o, v in closed.items()},
        **{("monthly 2024-06-01", o): (v, True) for o, v in closed.items()},
        **{("daily 2024-07-02", o): (v, False) for o, v in running.items()},
        **{("monthly 2024-07-01", o): (v, False) for o, v in running.items()}}
