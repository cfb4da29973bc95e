"""kpis/images.py: which past days may be judged from the ETL's row images. The judgement itself
(a late retry leaves a settled day as stored, a correction reads it again, bit for bit against
the direct evaluation) is in tests/kpis/test_incremental.py
test_worker_passes_equal_direct_evaluation_bit_for_bit."""
from __future__ import annotations

import duckdb
import pytest

from kpis import images
from kpis.registry import day_additive
from kpis.registry import load_registry


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def test_the_collection_rates_are_judged_by_their_readings(registry) -> None:
    for kid in ("metering.daily_collect_success_rate", "metering.collect_success_rate_special"):
        assert images.eligible(registry.get(kid), "meter_collection_daily"), kid


def test_a_presence_asking_for_a_row_is_judged_too(registry) -> None:
    """newconn.applications is present on a day with any application: the changed rows'
    presence before and after is compared like their facts (an OR over rows)."""
    apps = registry.get("newconn.applications")
    assert apps.presence and "EXISTS" in apps.presence and images.eligible(apps, "mis_app")


def test_what_the_images_cannot_judge(registry) -> None:
    # the orders reach these KPIs through the kept prelude table k_wo, whose rows do not follow
    # the images
    assert not images.eligible(registry.get("order.total"), "cs_work_order")
    # pending items and restatement queries have rules of their own (kpis/day_store.py)
    urge = registry.get("order.urge_rate")
    assert urge.restated_by and not images.eligible(urge, "cs_urge")
    # not day-additive: a stock at the period's end
    assert not images.eligible(registry.get("metering.collect_coverage_rate"), "meter_coll_obj")
    # a call's first-contact fact counts the caller's later calls (a window): an unchanged
    # call's fact depends on a changed one
    fcr = registry.get("call.fcr_rate")
    assert day_additive(fcr) and not images.eligible(fcr, "cs_call")
    assert images.eligible(registry.get("call.aht_seconds"), "cs_call")


def test_a_table_read_twice_is_not_judged(registry) -> None:
    """A self-join pairs a changed row with an unchanged one, which the images do not hold."""
    aht = registry.get("call.aht_seconds")
    twice = aht.model_copy(update={"facts": aht.facts.replace(
        "FROM cs_call x", "FROM cs_call x JOIN cs_call y ON y.caller_no = x.caller_no")})
    assert twice.facts.count("cs_call") == 2
    assert images.eligible(aht, "cs_call") and not images.eligible(twice, "cs_call")


def test_row_local_facts() -> None:
    assert images.row_local("SELECT p.pid, x.a FROM t x JOIN _periods p ON x.d >= p.ws -- count(*)")
    for sql in ("SELECT COUNT(*) OVER (PARTITION BY k) FROM t", "SELECT k, SUM(a) FROM t GROUP BY k",
                "SELECT * FROM t WHERE NOT EXISTS (SELECT 1 FROM u)", "SELECT DISTINCT k FROM t",
                "SELECT * FROM t WHERE k IN (SELECT k FROM u)", "SELECT max(a) FROM t"):
        assert not images.row_local(sql), sql


def test_a_guard_is_not_a_second_reading(registry) -> None:
    """k_coll_day's guard (kpis/sql/shared.sql) names the readings again, in an EXISTS: one truth
    value for the statement that holds whenever it has a fact row, so the collection rates stay
    judged by their readings. What is not such a guard keeps a KPI out: an ordinary subquery
    test, an absence, a guard reading another table or a prelude object over one, a guard
    correlated with the outer rows."""
    rate = registry.get("metering.daily_collect_success_rate")
    assert "AS guard FROM meter_collection_daily" in rate.values_sql
    assert images.eligible(rate, "meter_collection_daily")
    guard = "EXISTS (SELECT 1 AS guard FROM meter_collection_daily g WHERE g.data_date >= DATE '2026-06-01')"
    base = "SELECT m.x FROM meter_collection_daily m JOIN meter_coll_obj o ON o.k = m.k WHERE {}"
    assert images.row_local(base.format(guard))
    for other in (guard.replace("AS guard", ""),                     # an ordinary subquery test
                  "NOT " + guard,                                    # asks for an absence
                  guard.replace("g WHERE", "g JOIN meter_coll_obj o2 ON o2.k = g.k WHERE"),
                  guard.replace("g WHERE", "g JOIN k_coll_day c ON c.item_key = g.k WHERE"),
                  guard.replace("g WHERE", "g JOIN k_wo w ON w.wo_no = g.k WHERE"),
                  guard.replace("g.data_date >=", "g.meter_asset_no = m.meter_asset_no AND g.data_date >=")):
        assert not images.row_local(base.format(other)), other


def test_a_table_renamed_in_code_not_in_strings() -> None:
    sql = ("SELECT m.x FROM meter_collection_daily m -- meter_collection_daily\n"
           "WHERE 'meter_collection_daily' <> m.t AND x.meter_collection_daily_n = 1")
    assert images._rename(sql, "meter_collection_daily", "_img_after") == (
        "SELECT m.x FROM _img_after m -- meter_collection_daily\n"
        "WHERE 'meter_collection_daily' <> m.t AND x.meter_collection_daily_n = 1")


def test_a_table_is_covered_only_when_every_run_since_kept_its_images() -> None:
    con = duckdb.connect()
    assert images.covered(con, 0, 9, ["t"]) == set()     # no ETL record: nothing is judged
    con.execute("CREATE TABLE etl_dirty (run_id BIGINT, source VARCHAR, table_name VARCHAR, "
                "business_date DATE, changed_columns VARCHAR[])")
    con.execute("CREATE TABLE etl_image_run (run_id BIGINT, source VARCHAR, table_name VARCHAR, "
                "kept BOOLEAN)")
    for run, table in ((4, "a"), (5, "a"), (5, "b"), (6, "b"), (7, "c")):
        con.execute("INSERT INTO etl_dirty VALUES (?, 's', ?, DATE '2026-06-01', ['x'])", [run, table])
    # a: both runs kept images of each batch; b: run 6 has no record, and of run 5's two
    # batches one was over IMAGE_MAX_ROWS (a nightly table is merged in several); c: after `top`
    for run, table, kept in ((4, "a", True), (5, "a", True), (5, "a", True), (5, "b", True),
                             (5, "b", False)):
        con.execute("INSERT INTO etl_image_run VALUES (?, 's', ?, ?)", [run, table, kept])
    assert images.covered(con, 3, 6, ["a", "b", "c"]) == {"a"}
    assert images.covered(con, 4, 5, ["a", "b"]) == {"a"}
    con.execute("DELETE FROM etl_image_run WHERE table_name = 'b' AND NOT kept")
    assert images.covered(con, 4, 5, ["a", "b"]) == {"a", "b"}
