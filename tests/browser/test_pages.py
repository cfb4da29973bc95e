"""The dashboard in a real browser against the real web server."""
from __future__ import annotations

import csv
import io

import duckdb
import pytest

from tests.browser.conftest import ARGS, CHROMIUM, Server, login

PAGES = ["/", "/sources", "/customer", "/repair", "/service", "/reliability", "/metering", "/newconn",
         "/billing", "/kpi?kpi=repair.arrival_ontime_rate_urban&period=2026-10-15"]


def body_of(pg, path: str):  # type: ignore[no-untyped-def]
    """Wait for the page's render callback to fill its body (never assume the first load works)."""
    prefix = {"/": "overview"}.get(path.split("?")[0], path.split("?")[0].strip("/"))
    loc = pg.locator(f"#{prefix}-body > *").first
    loc.wait_for(state="attached", timeout=30_000)
    return pg.locator(f"#{prefix}-body")


@pytest.mark.parametrize("path", PAGES)
def test_every_page_loads_without_console_errors(page, server: Server, path: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(server.url + path)
    body = body_of(page, path)
    assert "数据暂不可用" not in body.inner_text()


def test_first_page_shows_the_four_source_systems(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    page.goto(server.url + "/sources")
    body = body_of(page, "/sources")
    assert page.locator(".source-card").count() == 4
    text = body.inner_text()
    for name in ("营销业务应用系统", "95598客户服务系统", "配网抢修指挥系统", "用电信息采集系统", "dist_repair_task"):
        assert name in text
    assert page.locator(".source-card.stale").count() == 1      # meter is late in the fixture


def test_gauges_show_the_kpi_values(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    snap = sorted(server.data_dir.glob("serving/serving_*.duckdb"))[-1]
    con = duckdb.connect(str(snap), read_only=True)
    expected = con.execute("SELECT value FROM kpi_value WHERE kpi_id = 'repair.arrival_ontime_rate_urban' "
                           "AND org_no = 'P0' AND period_start = '2026-10-15'").fetchone()[0]
    con.close()
    page.goto(server.url + "/repair?period=2026-10-15")
    body_of(page, "/repair")
    gauge = page.locator('[id*="repair.arrival_ontime_rate_urban"] .number').first
    gauge.wait_for(timeout=30_000)
    assert gauge.text_content().replace("\u2009", "") == f"{expected:.2f}%"


def test_drill_down_and_breadcrumb(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    page.goto(server.url + "/repair?period=2026-10-15")
    body_of(page, "/repair")
    page.locator("a.drill", has_text="宁波供电公司").click()
    page.wait_for_url("**org=C2**")
    page.locator(".breadcrumb", has_text="宁波供电公司").wait_for(timeout=30_000)
    page.locator(".tile", has_text="90.00%").first.wait_for(timeout=30_000)
    page.locator(".breadcrumb a", has_text="浙江省公司").click()
    page.wait_for_url("**org=P0**")
    page.locator(".tile", has_text="96.50%").first.wait_for(timeout=30_000)


def test_filter_change_updates_url_and_page(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    page.goto(server.url + "/customer?period=2026-10-15")
    body_of(page, "/customer")
    page.locator(".tile", has_text="1,204").first.wait_for(timeout=30_000)
    page.locator("#customer-org").click()
    page.get_by_text("杭州供电公司", exact=False).last.click()
    page.wait_for_url("**org=C1**", timeout=30_000)
    page.locator(".tile", has_text="1,000").first.wait_for(timeout=30_000)


def test_csv_download_round_trips_chinese(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    page.goto(server.url + "/repair?period=2026-10-15")
    body_of(page, "/repair")
    with page.expect_download() as info:
        page.locator("a.export").first.click()
    raw = open(info.value.path(), "rb").read()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert "宁波供电公司" in {r[5] for r in rows[1:]}
    assert info.value.suggested_filename.startswith("values_repair_P0_2026-10-15_asof")


def test_phone_width_has_no_horizontal_scroll(browser, server: Server) -> None:  # type: ignore[no-untyped-def]
    ctx = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    pg = ctx.new_page()
    login(pg, server.url, "ana")
    for path in ("/", "/repair?period=2026-10-15", "/sources"):
        pg.goto(server.url + path)
        body_of(pg, path)
        pg.wait_for_timeout(500)
        width = pg.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{path}: page is {width} px wide"
    ctx.close()


def test_metering_kpi_detail_lists_its_source_records(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    """snapshot_kit: on 2026-10-14 meters M1 (in time), M2 (after 09:00) and M3 (failed) are behind
    the daily collection success rate of S1; M4 (status 04) and M5 (not to be collected) are not."""
    path = "/kpi?kpi=metering.daily_collect_success_rate&org=S1&period=2026-10-14"
    page.goto(server.url + path)
    body = body_of(page, path)
    page.locator("td", has_text="M3/2026-10-14").first.wait_for(timeout=30_000)
    rows = {r.locator("td").first.inner_text(): r.locator("td").nth(3).inner_text()
            for r in body.locator("tr").all() if "/2026-10-14" in r.inner_text()}
    assert rows == {"M1/2026-10-14": "1", "M2/2026-10-14": "0", "M3/2026-10-14": "0"}
    with page.expect_download() as info:
        page.locator("#export-detail").click()
    raw = open(info.value.path(), "rb").read()
    got = [r[:4] for r in csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline=""))][1:]
    assert got == [["M1/2026-10-14", "S1", "G1", "1"], ["M2/2026-10-14", "S1", "G1", "0"],
                   ["M3/2026-10-14", "S1", "G1", "0"]]
