"""End to end over real receivers: kpi_value rows → process() → outbox → dispatch_due() → SMTP/HTTP."""
from __future__ import annotations

from datetime import datetime, timedelta

from kpis.alerting import process
from kpis.dispatch import dispatch_due
from kpis.roster import acknowledge, add_contact, add_shift, add_silence, set_settings

from .conftest import CALLS, ONTIME, put_value

DAY = datetime(2026, 10, 15)
T0 = datetime(2026, 10, 15, 10, 0)


def status(value: float) -> str:
    """ONTIME thresholds by hand: critical below 95, warning below 98 (higher is better)."""
    return "critical" if value < 95 else "warning" if value < 98 else "ok"


def evaluate(con, registry, settings, now, values: dict[str, float], kpi=ONTIME):
    """One KPI job cycle: write values, run process() in the same transaction, then dispatch."""
    con.execute("BEGIN TRANSACTION")
    changed = [put_value(con, kpi, org, DAY, DAY + timedelta(days=1), v, status(v),
                         num=round(v * 10), den=1000, computed_at=now) for org, v in values.items()]
    summary = process(con, registry, changed, now, settings)
    con.execute("COMMIT")
    return summary, dispatch_due(con, settings, now)


def email_setup(app_db, port, who="zhang", org="X01"):
    set_settings(app_db, {"base_url": "https://kpi.example.cn", "smtp_host": "127.0.0.1",
                          "smtp_port": port})
    add_contact(app_db, who, "email", f"{who}@example.cn")
    add_shift(app_db, org, who)


def parts(msg):
    text = msg.get_body(preferencelist=("plain",)).get_content()
    html = msg.get_body(preferencelist=("html",)).get_content()
    return text, html


def test_oscillating_value_sends_one_firing_and_one_resolved_email(warehouse, registry, settings,
                                                                    app_db, smtp_receiver):
    smtp_receiver.start()
    email_setup(app_db, smtp_receiver.port)
    values = [97.0, 96.5] + [98.2, 97.9] * 5 + [98.7, 98.9, 98.9]
    for i, v in enumerate(values):
        evaluate(warehouse, registry, settings, T0 + timedelta(minutes=i), {"S01": v})
    assert len(smtp_receiver.messages) == 2
    fire, resolved = smtp_receiver.messages
    assert fire["Subject"] == "【告警·预警】城区抢修到达现场及时率 城东供电所 2026-10-15：96.50%"
    assert resolved["Subject"].startswith("【已恢复】城区抢修到达现场及时率 城东供电所")
    text, html = parts(fire)
    assert "指标：城区抢修到达现场及时率 (repair.arrival_ontime_rate_urban)" in text
    assert "单位：城东供电所 (S01)" in text
    assert "周期：2026-10-15（日）" in text
    assert "当前值：96.50%" in text
    assert "阈值：预警阈值 98" in text
    assert "分子 / 分母：965 / 1,000" in text
    assert "数据时间：cs 2026-10-15 09:59:30；dist 2026-10-15 09:59:00" in text
    link = "https://kpi.example.cn/kpi?kpi=repair.arrival_ontime_rate_urban&org=S01&period=2026-10-15"
    assert f"详情：{link}" in text
    assert f"href='{link.replace('&', '&amp;')}'" in html and "城区抢修到达现场及时率" in html
    assert "恢复阈值 98.5" in parts(resolved)[0]
    ids = {r[0] for r in warehouse.execute("SELECT notification_id FROM alert_outbox").fetchall()}
    assert {m["Message-ID"].strip("<>").split("@")[0] for m in smtp_receiver.messages} == ids
    assert fire["To"] == "zhang@example.cn"


def test_robot_and_webhook_formats_with_idempotency_key(warehouse, registry, settings, app_db, http_receiver):
    set_settings(app_db, {"base_url": "https://kpi.example.cn"})
    add_contact(app_db, "duty", "wecom", http_receiver.url + "/wecom?key=secret")
    add_contact(app_db, "duty", "dingtalk", http_receiver.url + "/ding?access_token=secret")
    add_contact(app_db, "ops", "webhook", http_receiver.url + "/hook")
    add_shift(app_db, "*", "duty")
    add_shift(app_db, "C01", "ops")
    evaluate(warehouse, registry, settings, T0, {"S01": 94.0})
    evaluate(warehouse, registry, settings, T0 + timedelta(minutes=1), {"S01": 94.0})
    by_path = {r["path"].split("?")[0]: r for r in http_receiver.requests}
    assert sorted(by_path) == ["/ding", "/hook", "/wecom"]
    wecom, ding, hook = by_path["/wecom"]["json"], by_path["/ding"]["json"], by_path["/hook"]["json"]
    assert wecom["msgtype"] == "markdown"
    assert "**【告警·严重】城区抢修到达现场及时率 城东供电所 2026-10-15：94.00%**" in wecom["markdown"]["content"]
    assert "> 分子 / 分母：940 / 1,000" in wecom["markdown"]["content"]
    assert ding["msgtype"] == "markdown" and ding["markdown"]["title"].startswith("【告警·严重】")
    assert "/kpi?kpi=repair.arrival_ontime_rate_urban&org=S01&period=2026-10-15" in ding["markdown"]["text"]
    assert hook["kind"] == "alert" and hook["items"][0]["value"] == 94.0
    assert hook["items"][0]["numerator"] == 940 and hook["items"][0]["denominator"] == 1000
    assert hook["items"][0]["link"].startswith("https://kpi.example.cn/kpi?")
    for r in http_receiver.requests:
        assert r["headers"]["Idempotency-Key"] == r["json"].get("notification_id", r["headers"]["Idempotency-Key"])
    keys = {r["headers"]["Idempotency-Key"] for r in http_receiver.requests}
    ids = {r[0] for r in warehouse.execute("SELECT notification_id FROM alert_outbox").fetchall()}
    assert keys == ids and len(ids) == 3


def test_many_units_in_one_evaluation_make_one_message_per_recipient(warehouse, registry, settings,
                                                                     app_db, smtp_receiver):
    smtp_receiver.start()
    email_setup(app_db, smtp_receiver.port, who="city", org="C01")
    add_contact(app_db, "west", "email", "west@example.cn")
    add_shift(app_db, "X02", "west")
    for minute in (0, 1):
        evaluate(warehouse, registry, settings, T0 + timedelta(minutes=minute),
                 {"S01": 97.0, "X01": 96.0, "X02": 90.0})
    by_to = {m["To"]: m for m in smtp_receiver.messages}
    assert len(smtp_receiver.messages) == 2 and set(by_to) == {"city@example.cn", "west@example.cn"}
    assert by_to["city@example.cn"]["Subject"] == "【KPI告警汇总】告警 3 项"
    text = parts(by_to["city@example.cn"])[0]
    assert all(f"({org})" in text for org in ("S01", "X01", "X02"))
    assert by_to["west@example.cn"]["Subject"].startswith("【告警·严重】城区抢修到达现场及时率 河西县供电公司")


def test_shifts_route_by_beijing_wall_clock_including_overnight(warehouse, registry, settings, app_db,
                                                                smtp_receiver):
    smtp_receiver.start()
    set_settings(app_db, {"smtp_host": "127.0.0.1", "smtp_port": smtp_receiver.port})
    add_contact(app_db, "day", "email", "day@example.cn")
    add_contact(app_db, "night", "email", "night@example.cn")
    add_shift(app_db, "C01", "day", shift_start="08:30", shift_end="17:30")
    add_shift(app_db, "C01", "night", days="4", shift_start="17:30", shift_end="08:30")  # Thursday night
    # 2026-10-15 is a Thursday: 10:00 is the day shift; Friday 02:00 still Thursday's night shift
    evaluate(warehouse, registry, settings, T0, {"S01": 90.0}, kpi=CALLS)
    late = datetime(2026, 10, 16, 2, 0)
    evaluate(warehouse, registry, settings, late, {"X02": 90.0}, kpi=CALLS)
    assert [m["To"] for m in smtp_receiver.messages] == ["day@example.cn", "night@example.cn"]


def test_smtp_down_then_back_delivers_each_message_once(warehouse, registry, settings, app_db, smtp_receiver):
    email_setup(app_db, smtp_receiver.port, who="a", org="X01")
    add_contact(app_db, "b", "email", "b@example.cn")
    add_shift(app_db, "X02", "b")
    evaluate(warehouse, registry, settings, T0, {"S01": 90.0, "X02": 90.0})
    _, first = evaluate(warehouse, registry, settings, T0 + timedelta(minutes=1), {"S01": 90.0, "X02": 90.0})
    assert first.sent == 0 and first.failed == 1 and first.skipped == 1   # same server: one try per run
    now = T0 + timedelta(minutes=1)
    for _ in range(3):                                     # still down: retries with backoff
        now += timedelta(minutes=5)
        assert dispatch_due(warehouse, settings, now).sent == 0
    smtp_receiver.start()
    now += timedelta(minutes=20)
    back = dispatch_due(warehouse, settings, now)
    assert back.sent == 2
    for _ in range(3):
        now += timedelta(minutes=20)
        assert dispatch_due(warehouse, settings, now).sent == 0
    assert sorted(m["To"] for m in smtp_receiver.messages) == ["a@example.cn", "b@example.cn"]
    outcomes = warehouse.execute("SELECT outcome, count(*) FROM alert_delivery GROUP BY ALL ORDER BY 1").fetchall()
    assert dict(outcomes)["sent"] == 2 and dict(outcomes)["retry"] >= 3
    assert warehouse.execute("SELECT DISTINCT status FROM alert_outbox").fetchall() == [("sent",)]


def test_429_and_500_are_retried_but_400_is_dead_lettered(warehouse, registry, settings, app_db, http_receiver):
    add_contact(app_db, "ok", "webhook", http_receiver.url + "/ok")
    add_shift(app_db, "*", "ok")
    http_receiver.codes[:] = [429, 500]
    evaluate(warehouse, registry, settings, T0, {"S01": 90.0}, kpi=CALLS)
    for minute in (5, 15):
        dispatch_due(warehouse, settings, T0 + timedelta(minutes=minute))
    assert [r["code"] for r in http_receiver.requests] == [429, 500, 200]
    assert warehouse.execute("SELECT status, attempts FROM alert_outbox").fetchall() == [("sent", 3)]
    http_receiver.codes[:] = [400]
    evaluate(warehouse, registry, settings, T0 + timedelta(minutes=30), {"X02": 90.0}, kpi=CALLS)
    dispatch_due(warehouse, settings, T0 + timedelta(hours=1))
    dead = warehouse.execute("SELECT status, attempts, last_error FROM alert_outbox WHERE status <> 'sent'").fetchall()
    assert dead == [("dead", 1, "HTTP 400 from " + http_receiver.url.split("//")[1])]
    assert len(http_receiver.requests) == 4


def test_undelivered_past_deadline_is_dead_lettered(warehouse, registry, settings, app_db, smtp_receiver):
    email_setup(app_db, smtp_receiver.port)
    set_settings(app_db, {"deadline_s": 600})
    evaluate(warehouse, registry, settings, T0, {"S01": 90.0}, kpi=CALLS)   # pending 1: fires at once
    dispatch_due(warehouse, settings, T0 + timedelta(minutes=11))
    smtp_receiver.start()
    dispatch_due(warehouse, settings, T0 + timedelta(minutes=30))
    assert smtp_receiver.messages == []
    assert warehouse.execute("SELECT status FROM alert_outbox").fetchall() == [("dead",)]


def test_unacknowledged_alarm_escalates_once_and_an_ack_prevents_it(warehouse, registry, settings, app_db,
                                                                     smtp_receiver):
    smtp_receiver.start()
    email_setup(app_db, smtp_receiver.port, who="duty", org="C01")
    add_contact(app_db, "boss", "email", "boss@example.cn")
    add_shift(app_db, "C01", "boss", role="escalation")
    evaluate(warehouse, registry, settings, T0, {"S01": 90.0, "X02": 90.0}, kpi=CALLS)
    since = warehouse.execute("SELECT since FROM alarm_state WHERE org_no = 'X02'").fetchone()[0]
    acknowledge(app_db, CALLS.id, "X02", since, "li", "已派人核查", T0 + timedelta(minutes=5))
    for minute in (10, 29, 31, 45):
        dispatch_due(warehouse, settings, T0 + timedelta(minutes=minute))
    assert [m["To"] for m in smtp_receiver.messages] == ["duty@example.cn", "boss@example.cn"]
    boss = smtp_receiver.messages[1]
    assert boss["Subject"].startswith("【无人确认·升级") and "城东供电所" in boss["Subject"]
    assert warehouse.execute("SELECT org_no, acked_by FROM alarm_state ORDER BY 1").fetchall() == [
        ("S01", None), ("X02", "li")]
    assert warehouse.execute("SELECT comment FROM alert_ack").fetchall() == [("已派人核查",)]


def test_silenced_unit_records_the_event_but_sends_nothing(warehouse, registry, settings, app_db, smtp_receiver):
    smtp_receiver.start()
    email_setup(app_db, smtp_receiver.port, org="C01")
    add_silence(app_db, None, "X01", T0 - timedelta(minutes=1), T0 + timedelta(hours=2), "计划检修", "li", T0)
    evaluate(warehouse, registry, settings, T0, {"S01": 90.0, "X02": 90.0}, kpi=CALLS)
    assert len(smtp_receiver.messages) == 1 and "河西县供电公司" in smtp_receiver.messages[0]["Subject"]
    assert warehouse.execute("SELECT org_no, silenced FROM alert_event ORDER BY 1").fetchall() == [
        ("S01", True), ("X02", False)]
