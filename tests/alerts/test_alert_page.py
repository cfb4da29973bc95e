"""The alert centre in headless Chromium: duty staff acknowledge and silence; managers only look."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from werkzeug.serving import make_server

from etl.settings import Settings
from kpis.alerting import process
from kpis.appdb import AppDb
from kpis.roster import alert_ack, alert_silence, app_engine, rows

from .conftest import CALLS, build_base, free_port, put_value

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery"
T0 = datetime(2026, 10, 15, 10, 0)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium")


@pytest.fixture
def web(tmp_path: Path, registry):
    """A published snapshot with two firing alarms, two users, and the real web app over HTTP."""
    settings = Settings(source_urls={}, data_dir=tmp_path, warehouse_path=tmp_path / "warehouse.duckdb",
                        secret_key="k" * 40)
    serving = settings.serving_dir
    serving.mkdir(parents=True)
    con = duckdb.connect(str(serving / "serving_1.duckdb"))
    build_base(con)
    keys = [put_value(con, CALLS, org, T0, T0 + timedelta(hours=1), v, "critical", num=v, den=100)
            for org, v in (("S01", 30.0), ("X02", 25.0))]
    process(con, registry, keys, T0, settings)           # pending 1: both fire at once
    con.close()
    (serving / "CURRENT").write_text("1\n")
    db = AppDb(settings.app_db_path)
    db.add_user("duty1", "duty", "C01", PASSWORD)
    db.add_user("boss", "manager", "C01", PASSWORD)
    from dashboards._web import create_app
    app = create_app(settings)
    port = free_port()
    server = make_server("127.0.0.1", port, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", settings
    server.shutdown()


def login(page, base: str, user: str) -> None:
    page.goto(f"{base}/login?next=/alerts")
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("text=当前告警 / Firing now (2)", timeout=30000)


def test_duty_acknowledges_and_silences_manager_only_sees(web):
    from playwright.sync_api import sync_playwright
    base, settings = web
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            login(page, base, "duty1")
            assert page.locator("button.ack").count() == 2
            page.fill("#alerts-ack-comment", "已通知抢修班组")
            page.locator("tr", has_text="城东供电所").locator("button.ack").click()
            page.wait_for_selector("text=已确认 / Acknowledged: call.abandon_rate @ S01")
            page.wait_for_function("document.querySelectorAll('button.ack').length === 1")
            acks = rows(app_engine(settings.app_db_path), alert_ack)
            assert [(a["org_no"], a["user_name"], a["comment"], a["alarm_since"]) for a in acks] == [
                ("S01", "duty1", "已通知抢修班组", T0)]

            page.fill("#alerts-sil-kpi", "call.abandon_rate")
            page.fill("#alerts-sil-org", "X02")
            page.fill("#alerts-sil-reason", "计划停电，呼损预期升高")
            page.click("#alerts-sil-go")
            page.wait_for_selector("text=已静默 / Silenced: call.abandon_rate @ X02")
            page.wait_for_selector("text=生效中的静默 / Active silences (1)")
            silences = rows(app_engine(settings.app_db_path), alert_silence)
            assert [(s["kpi_id"], s["org_no"], s["user_name"], s["reason"]) for s in silences] == [
                ("call.abandon_rate", "X02", "duty1", "计划停电，呼损预期升高")]
            assert round((silences[0]["ends_at"] - silences[0]["starts_at"]).total_seconds()) == 7200
            assert errors == []

            manager = browser.new_page()
            login(manager, base, "boss")
            assert manager.locator("button.ack").count() == 0
            assert manager.locator("text=duty1").count() >= 1          # who acknowledged is visible
        finally:
            browser.close()
