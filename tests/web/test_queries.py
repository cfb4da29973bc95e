"""KpiService over the published fixture snapshot: values, trends, scope, freshness, open tasks."""
from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pytest

from kpis.queries import KpiService, parse_period
from kpis.scope import EMPTY_SCOPE, Scope, scope_for
from kpis.serving import SnapshotReader
from tests.web.snapshot_kit import UNITS, _chain, publish_fixture

PAIRS = [(org, anc) for org in UNITS for anc in _chain(org)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> KpiService:
    data = tmp_path_factory.mktemp("queries") / "data"
    publish_fixture(data)
    return KpiService(SnapshotReader(data / "serving"), cache=None)


def scope(org: str) -> Scope:
    return scope_for("u", "manager", org, PAIRS)


def test_period_filters() -> None:
    today = date(2026, 10, 15)
    assert parse_period("today", today).start == datetime(2026, 10, 15)
    month = parse_period("2026-02", today)
    assert (month.kind, month.start, month.end) == ("month", datetime(2026, 2, 1), datetime(2026, 3, 1))
    assert parse_period("2026-10-14", today).previous().label == "2026-10-13"
    with pytest.raises(ValueError, match="2026/10"):
        parse_period("2026/10", today)


def test_values_for_the_top_unit_sorted_by_severity_with_trend(service: KpiService) -> None:
    period = parse_period("today", service.data_today(service.version()))
    df = service.values(scope("P0"), None, period, theme="repair")
    assert list(df["kpi_id"])[0] == "repair.arrival_ontime_rate_urban"     # the warning one first
    first = df.iloc[0]
    assert (first["org_no"], first["value"], first["status"], first["trend"]) == ("P0", 96.5, "warning", "↓")
    assert set(df["kpi_id"]) == {"repair.arrival_ontime_rate_urban", "repair.arrival_minutes_avg_urban",
                                 "repair.merge_rate"}


def test_children_and_matrix(service: KpiService) -> None:
    period = parse_period("2026-10-15", date(2026, 10, 15))
    kids = service.child_values(scope("P0"), "P0", period, kpi_id="repair.arrival_ontime_rate_urban")
    got = {r["org_no"]: (r["value"], r["trend"]) for r in kids.to_dict("records")}
    assert got == {"C1": (99.0, "↑"), "C2": (90.0, "→")}
    matrix = service.matrix(scope("P0"), "P0", period)
    assert matrix.iloc[0]["kpi_id"] == "repair.arrival_ontime_rate_urban"   # critical C2 makes it worst
    assert matrix.iloc[0]["org_no"] == "P0"


def test_a_unit_outside_the_grant_reads_nothing(service: KpiService) -> None:
    period = parse_period("2026-10-15", date(2026, 10, 15))
    assert service.values(scope("C1"), "C2", period).empty
    assert service.values(EMPTY_SCOPE, None, period).empty
    own = service.values(scope("C1"), None, period, kpi_id="customer.active_total")
    assert list(own["org_no"]) == ["C1"] and list(own["value"]) == [1000.0]
    assert list(service.org_tree(scope("C1"))["org_no"]) == ["C1", "X1", "S1", "G1"]


def test_stale_source_is_flagged_and_marks_its_kpis(service: KpiService) -> None:
    fresh = service.freshness(scope("P0")).set_index("source")
    assert bool(fresh.loc["meter", "stale"]) and not bool(fresh.loc["dist", "stale"])
    assert fresh.loc["meter", "last_status"] == "failed"
    period = parse_period("2026-10-15", date(2026, 10, 15))
    df = service.values(scope("P0"), None, period).set_index("kpi_id")
    assert df.loc["metering.collection_success_rate", "stale_sources"] == "meter"
    assert df.loc["customer.active_total", "stale_sources"] == ""


def test_open_repair_tasks_overdue_first(service: KpiService) -> None:
    df = service.open_repair_tasks(scope("P0"), None)
    # data time 10:00. T1: accepted 09:00 (its order W1), urban, 60 min > 45 -> overdue.
    # T2: received 09:30, rural, 30 min < 90. T3 restored: not open.
    assert list(df["task_id"]) == ["T1", "T2"]
    assert list(df["elapsed_min"]) == [60.0, 30.0]
    assert list(df["limit_min"]) == [45, 90]
    assert list(df["overdue"]) == [True, False]
    assert service.open_repair_tasks(scope("C2"), None).empty


def test_sources_table_counts(service: KpiService) -> None:
    df = service.sources(scope("P0")).set_index("table_name")
    assert int(df.loc["dist_repair_task", "row_count"]) == 3
    assert int(df.loc["dist_repair_task", "reject_count"]) == 2
    assert set(df["source"]) == {"mis", "cs", "dist", "meter"}
    assert service.sources(EMPTY_SCOPE).empty


def test_a_live_period_shows_the_newest_snapshot_since_the_day_before(tmp_path: Path) -> None:
    from datetime import timedelta

    from kpis.publish import publish
    from tests.web.snapshot_kit import DAY, build_warehouse

    con = build_warehouse(tmp_path / "wh.duckdb")
    snap = ("INSERT INTO kpi_value VALUES (?, 'repair', 'P0', 'province', 'near-real-time', ?, ?, ?, "
            "NULL, NULL, NULL, 'ok', true, ?, '{}')")
    # merge rate: today's 09:30 snapshot is the newest; one from ten days back is history
    for at, value in ((DAY + timedelta(hours=9, minutes=30), 33.0), (DAY - timedelta(days=10), 44.0)):
        con.execute(snap, ["repair.merge_rate", at, at, value, at])
    # mean arrival minutes: its only snapshot is three days old, before the day before the data's
    # current day (DAY): the page shows today's daily value (31.25), not that snapshot
    old = DAY - timedelta(days=3)
    con.execute(snap, ["repair.arrival_minutes_avg_urban", old, old, 55.0, old])
    publish(con, tmp_path / "serving")
    con.close()
    service = KpiService(SnapshotReader(tmp_path / "serving"), cache=None)
    today = parse_period("today", service.data_today(service.version()))
    got = service.values(scope("P0"), None, today, theme="repair").set_index("kpi_id")
    assert (got.loc["repair.merge_rate", "grain"], got.loc["repair.merge_rate", "value"]) == ("near-real-time", 33.0)
    assert (got.loc["repair.arrival_minutes_avg_urban", "grain"],
            got.loc["repair.arrival_minutes_avg_urban", "value"]) == ("daily", 31.25)
    closed = service.values(scope("P0"), None, parse_period("2026-10-14", DAY.date()), theme="repair")
    assert "near-real-time" not in set(closed["grain"])        # a closed day shows no snapshot
