"""Records behind a metering KPI: the snapshot's window of the metering firehose (snapshot_kit)."""
from __future__ import annotations

import csv
import io
from datetime import date

import pytest

from dashboards._components import deps
from kpis.queries import DetailOutsideWindow, KpiService, day_period, month_period
from kpis.scope import scope_for
from kpis.serving import SnapshotReader
from tests.web.conftest import Web, login

KPI = "metering.daily_collect_success_rate"
PAIRS = [("P0", "P0"), ("C1", "P0"), ("C2", "P0"), ("X1", "C1"), ("X1", "P0"), ("C1", "C1"),
         ("X1", "X1"), ("S1", "S1"), ("S1", "X1"), ("S1", "C1"), ("S1", "P0"), ("G1", "G1"),
         ("G1", "S1"), ("G1", "X1"), ("G1", "C1"), ("G1", "P0"), ("C2", "C2")]
SCOPE = scope_for("ana", "analyst", "P0", PAIRS)
EXPECTED = [("M1/2026-10-14", "S1", "G1", "1", "1"), ("M2/2026-10-14", "S1", "G1", "0", "1"),
            ("M3/2026-10-14", "S1", "G1", "0", "1")]


@pytest.fixture
def service(web: Web) -> KpiService:
    return KpiService(SnapshotReader(web.data_dir / "serving"))


def test_snapshot_holds_the_window_of_the_metering_firehose(service: KpiService) -> None:
    with service.reader.cursor() as (_version, cur):
        days = cur.execute("SELECT meter_asset_no, data_date FROM meter_collection_daily ORDER BY ALL").fetchall()
        window = cur.execute("SELECT first_day FROM detail_window "
                             "WHERE table_name = 'meter_collection_daily'").fetchone()
    # the 2026-09-20 row is older than 10-14 minus 21 days
    assert days == [(m, date(2026, 10, 14)) for m in ("M1", "M2", "M3", "M4", "M5")]
    assert window == (date(2026, 9, 30),)


@pytest.mark.parametrize("org", ["S1", "P0", "G1"])
def test_records_behind_a_metering_kpi(service: KpiService, org: str) -> None:
    df = service.detail_page(SCOPE, KPI, org, day_period(date(2026, 10, 14)))
    rows = [tuple(r) for r in df[["item_key", "org_no", "grid_no", "numerator", "denominator"]].itertuples(
        index=False)]
    assert rows == EXPECTED


def test_a_unit_without_those_meters_has_no_records(service: KpiService) -> None:
    assert service.detail_page(SCOPE, KPI, "C2", day_period(date(2026, 10, 14))).empty


def test_a_period_older_than_the_window_says_from_when_records_are_kept(service: KpiService) -> None:
    with pytest.raises(DetailOutsideWindow) as err:
        service.detail_page(SCOPE, KPI, "S1", month_period(2026, 9))
    assert err.value.first_day == date(2026, 9, 30)
    # the month of the window's first complete day onwards is whole in the snapshot
    assert len(service.detail_page(SCOPE, KPI, "S1", month_period(2026, 10))) == 3
    # KPIs that do not read the firehose are not limited by it
    assert service.detail_first_day("repair.arrival_ontime_rate_urban", month_period(2026, 9),
                                    service.version()) is None


def test_kpi_page_shows_the_metering_records(web: Web, service: KpiService) -> None:
    from dashboards import kpi
    from tests.web.test_callbacks import _text
    with deps.use(service, lambda: SCOPE):
        text = _text(kpi.render(None, {"org": "S1", "period": "2026-10-14", "lang": "zh", "path": "/kpi",
                                       "kpi": KPI}))
        old = _text(kpi.render(None, {"org": "S1", "period": "2026-09", "lang": "zh", "path": "/kpi",
                                      "kpi": KPI}))
    for key, *_rest in EXPECTED:
        assert key in text
    assert "M4/2026-10-14" not in text and "M5/2026-10-14" not in text
    assert "2026-09-30" in old and "M1/" not in old


def test_detail_export_of_a_metering_kpi(web: Web, client) -> None:  # type: ignore[no-untyped-def]
    login(client, "ana")
    resp = client.get(f"/export/detail.csv?kpi={KPI}&org=S1&period=2026-10-14")
    assert resp.status_code == 200
    rows = list(csv.reader(io.StringIO(resp.get_data()[3:].decode("utf-8"), newline="")))
    assert [tuple(r[:5]) for r in rows[1:]] == EXPECTED
    old = client.get(f"/export/detail.csv?kpi={KPI}&org=S1&period=2026-09")
    assert old.status_code == 404 and "2026-09-30" in old.get_data(as_text=True)
