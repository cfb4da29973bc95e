"""The tables each KPI reads (kpis/dependencies.py), checked by hand against definitions."""
from __future__ import annotations

import pytest

from kpis.dependencies import prelude_objects, tables_read
from kpis.evaluate import on_demand_tables
from kpis.registry import load_registry


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.mark.parametrize("kpi, tables", [
    # facts read mis_app only; the org tree is always read
    ("newconn.applications", {"mis_app", "mis_org", "mis_grid"}),
    # k_wo (prelude) reads work orders, the customer (grid) and dist_tg (area class)
    ("order.total", {"cs_work_order", "mis_customer", "dist_tg", "mis_org", "mis_grid"}),
    # wdl() reads the calendar through k_calendar
    ("grid.meter_test_ontime_rate", {"cs_work_order", "mis_customer", "dist_tg",
                                     "mis_work_calendar", "mis_org", "mis_grid"}),
    ("metering.terminal_online_rate", {"meter_terminal", "dist_tg", "mis_org", "mis_grid"}),
])
def test_tables_read_by_hand(registry, kpi, tables):
    assert tables_read(registry.get(kpi)) == tables


def test_heartbeats_wake_only_the_kpis_naming_meter_terminal(registry):
    # the four definitions whose SQL names meter_terminal (grep kpis/definitions)
    readers = {k.id for k in registry.kpis.values() if "meter_terminal" in tables_read(k)}
    assert readers == {"customer.tq_relation_consistency_rate", "metering.collect_coverage_rate",
                       "metering.collect_success_rate_special", "metering.terminal_online_rate"}


def test_every_kpi_reads_a_table_of_its_declared_sources_or_the_org_tree(registry):
    for k in registry.kpis.values():
        systems = {t.split("_")[0] for t in tables_read(k)}
        assert systems & set(k.sources) or k.id == "grid.manager_coverage_rate", k.id


@pytest.mark.parametrize("kpi, objects", [
    # reads the table k_settle_tg (TG(c)) and the macro is_active
    ("reliability.saifi", {"k_settle_tg", "is_active", "upto"}),
    # names k_customer only in a comment: needs no prelude table
    ("customer.residential_share", {"is_active"}),
    ("order.total", {"k_wo", "k_org"}),
])
def test_prelude_objects_by_hand(registry, kpi, objects):
    assert prelude_objects(registry.get(kpi)) == objects


def test_only_the_on_demand_tables_a_plan_reads_are_built(registry):
    assert on_demand_tables([registry.get("newconn.applications")]) == set()
    assert on_demand_tables([registry.get("order.total"), registry.get("reliability.saifi")]) \
        == {"k_wo", "k_settle_tg"}
