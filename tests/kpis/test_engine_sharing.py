"""Work the engine shares between KPIs and periods: facts read once per distinct te
(kpis.batch.te_only) and prelude tables built only for plans that read them (kpis.prelude).

Values are unaffected by construction; tests/kpis/test_properties.py checks on simulated data
that the batched engine (which shares) gives each KPI's own statement's rows to the last bit.
"""
from __future__ import annotations

from datetime import datetime

import duckdb
import pytest

from kpis.batch import te_only
from kpis.evaluate import evaluate_and_store
from kpis.periods import day, month
from kpis.prelude import apply_prelude
from kpis.registry import load_registry
from tests.kpis.harness import load_inputs


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


def test_today_and_the_running_month_get_the_same_stock(registry):
    """Worked by hand: residential share at 2024-07-10 23:00 (today and July so far both end
    then) and at the end of June. C1 (residential, built 06-01) and C2 (business, built 06-20)
    are on the books at both ends; C3 (residential, built 07-05) only in July.
    June: 1 residential of 2 = 50 %; today and July: 2 of 3 = 66.67 %."""
    con = duckdb.connect()
    load_inputs(con, {"inputs": {
        "mis_code": [{"code_type": "ELEC_TYPE", "code_value": "201", "code_name": "res",
                      "parent_value": "2", "is_deleted": 0},
                     {"code_type": "ELEC_TYPE", "code_value": "401", "code_name": "biz",
                      "parent_value": "4", "is_deleted": 0}],
        "mis_customer": [_customer("C1", "S1", "2024-06-01", "201"),
                         _customer("C2", "S1", "2024-06-20", "401"),
                         _customer("C3", "S1", "2024-07-05", "201")]}})
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
