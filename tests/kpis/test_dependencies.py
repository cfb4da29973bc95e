"""The tables each KPI reads (kpis/dependencies.py), checked by hand against definitions."""
from __future__ import annotations

import pytest

from kpis.dependencies import columns_read, prelude_objects, tables_read
from kpis.evaluate import on_demand_tables
from kpis.prelude import _CREATE, FOLLOW, GATED, MARKED, ON_DEMAND, statements
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
    # the definitions whose SQL names meter_terminal or k_settle_mp, which reads it (grep
    # kpis/definitions); smart_meter_coverage reads k_settle_mp for its `smart` column only
    readers = {k.id for k in registry.kpis.values() if "meter_terminal" in tables_read(k)}
    assert readers == {"customer.tq_relation_consistency_rate", "metering.collect_coverage_rate",
                       "metering.collect_success_rate_special", "metering.terminal_online_rate",
                       "customer.smart_meter_coverage"}


def test_every_kpi_reads_a_table_of_its_declared_sources_or_the_org_tree(registry):
    for k in registry.kpis.values():
        systems = {t.split("_")[0] for t in tables_read(k)}
        assert systems & set(k.sources) or k.id == "grid.manager_coverage_rate", k.id


@pytest.mark.parametrize("kpi, objects", [
    # reads the table k_settle_tg (TG(c)), the macro is_active, through k_active_n the customer
    # counts (cust_counts) with their clamped dates, and NTG from the customers counted per
    # 台区 (tg_cust_groups); the kept groups of both
    ("reliability.saifi", {"k_settle_tg", "is_active", "upto", "cust_counts", "clamp_build",
                           "clamp_cancel", "k_cust_grp", "cust_floor_day", "tg_cust_groups",
                           "tg_cust_counts", "k_tg_cust_grp"}),
    # names k_customer only in a comment; its reduced facts read the kept groups of customers
    # (k_cust_groups: k_cust_stock_grp, else the customers grouped by cust_stock_counts) and
    # clamp their dates
    ("customer.residential_share", {"is_active", "clamp_build", "clamp_cancel",
                                    "k_cust_stock_grp", "cust_stock_counts", "cust_floor_day"}),
    # its presence bounds the orders it checks by periods_from()
    ("order.total", {"k_wo", "k_org", "periods_from"}),
])
def test_prelude_objects_by_hand(registry, kpi, objects):
    assert prelude_objects(registry.get(kpi)) == objects


def test_only_the_on_demand_tables_a_plan_reads_are_built(registry):
    assert on_demand_tables([registry.get("newconn.applications")]) == set()
    assert on_demand_tables([registry.get("order.total"), registry.get("reliability.saifi")]) \
        == {"k_wo", "k_settle_tg", "k_cust_grp", "k_tg_cust_grp"}


def test_every_on_demand_table_is_followed_or_gated_for_a_stated_reason():
    """A table the worker neither follows key by key (FOLLOW), nor by its marked keys' rows
    (MARKED), nor lists as rebuilt whole when a column it reads changed (GATED, with the reason)
    is a decision nobody made: refused."""
    assert set(FOLLOW) | set(GATED) | set(MARKED) == set(ON_DEMAND)
    assert len(FOLLOW) + len(GATED) + len(MARKED) == len(ON_DEMAND)
    assert all(GATED.values())


def test_a_marked_table_is_refreshed_by_the_statement_it_is_built_with():
    """kpis.prelude._marked re-derives rows from its Marked's columns and conditions, the whole
    build runs prelude.sql's statement: an edit of one without the other would keep other rows
    than a rebuild gives."""
    built = {m.group(3): " ".join(stmt.split()) for stmt in statements() if (m := _CREATE.match(stmt))}
    for name, marked in MARKED.items():
        assert built[name] == " ".join(marked.statement(name).split()), name


def test_k_settle_mp_readers_are_not_woken_by_heartbeats(registry):
    # k_settle_mp names its columns (no star): the terminal heartbeat stays out of its readers
    for kpi in ("customer.tq_relation_consistency_rate", "metering.collect_coverage_rate",
                "customer.smart_meter_coverage"):
        cols = columns_read(registry.get(kpi), "meter_terminal")
        assert cols is not None and "last_online_time" not in cols, kpi
    assert prelude_objects(registry.get("customer.smart_meter_coverage")) == {
        "k_settle_mp", "is_active", "clamp_build", "clamp_cancel", "k_settle_grp", "settle_counts",
        "cust_floor_day"}


def test_what_a_kept_aggregate_reads_beside_the_kept_table_it_groups():
    """k_settle_grp (OVER_KEPT) groups k_settle_mp: beside it, the floor day of the customers'
    build dates (cust_floor_day: build_date, created_at, is_deleted) and nothing of the meters,
    collection objects or terminals that k_settle_mp reads."""
    from kpis.dependencies import prelude_columns
    from kpis.prelude import GATED, OVER_KEPT
    assert set(OVER_KEPT) <= set(GATED)
    beside = prelude_columns("k_settle_grp", beside="k_settle_mp")
    assert set(beside) == {"mis_customer"}
    assert {"build_date", "created_at", "is_deleted"} <= beside["mis_customer"]
    assert set(prelude_columns("k_settle_grp")) == {"mis_customer", "mis_metering_point", "mis_meter",
                                                     "meter_coll_obj", "meter_terminal"}


@pytest.mark.parametrize("sql, whole", [
    # a star over a derived table or a CTE passes on columns the text names
    ("select * from (select cons_no, grid_no from mis_customer) as x", False),
    ("with i as (select outage_id, org_no from dist_outage) select * from i where org_no = 'a'", False),
    ("with i as (select outage_id from dist_outage) select c.cons_no, i.* from mis_customer c "
     "join i on i.outage_id = c.cons_no", False),
    # ... but not over a contract table or a prelude table, however it is written
    ("select * from mis_customer", True),
    ("select * from main.mis_customer", True),
    ("with i as (select outage_id from dist_outage) select c.* from mis_customer c "
     "join i on i.outage_id = c.cons_no", True),
    ("select b.* from k_bill b", True),
    ("with i as (select outage_id from dist_outage) select * from i, mis_customer", True),
    # an alias is resolved in the FROM clause of its own SELECT: `b` is k_bill in one scope and
    # the CTE b in the other
    ("with b as (select b.bill_id, b.org_no from k_bill b) select b.* from b", False),
    ("with b as (select b.* from k_bill b) select b.bill_id from b", True),
    # the star of a CTE's own body counts too
    ("with i as (select * from dist_outage) select * from i", True),
    # not stars
    ("select count(*), 2 * num from (select org_no, 1 as num from mis_customer) x", False),
    # columns no text names
    ("select org_no from mis_customer natural join mis_org", True),
    ("select columns('a.*') from mis_customer", True),
])
def test_a_star_reads_whole_rows_only_of_a_table(sql, whole):
    from kpis.dependencies import _reads_whole_rows
    assert _reads_whole_rows(sql) is whole


def test_columns_of_kpis_that_read_shared_subqueries(registry):
    from kpis.dependencies import columns_named
    # the collection rows (k_coll_day) of special-transformer terminals: the KPI joins
    # meter_terminal on its id, type and soft delete (words are not told apart by table, so
    # tg_no and org_no of the collection rows count too); the heartbeat's last_online_time is
    # not among them and wakes the KPI no more (it did while the shared subquery's wrapper,
    # `SELECT * FROM (facts)`, hid every column)
    cols = columns_named(registry.get("metering.collect_success_rate_special"), "meter_terminal")
    assert cols is not None and "last_online_time" not in cols
    assert {"terminal_id", "terminal_type", "is_deleted"} <= cols
    # SAIFI's customers (k_active_n and NTG): ACTIVE(c, we)'s inputs, the key and attribution
    assert columns_named(registry.get("reliability.saifi"), "mis_customer") == {
        "cons_no", "is_deleted", "build_date", "created_at", "cancel_date", "status_code",
        "org_no", "grid_no"}
