"""A late source holds the KPIs that depend on it and raises one source-late alert instead."""
from __future__ import annotations

from datetime import datetime, timedelta

from kpis.alerting import process
from kpis.dispatch import dispatch_due
from kpis.roster import add_contact, add_shift, set_settings

from .conftest import ONTIME, put_value

DAY = datetime(2026, 10, 15)
T0 = datetime(2026, 10, 15, 10, 0)


def freshness(con, now, late: set[str]):
    con.execute("CREATE TABLE IF NOT EXISTS etl_freshness (source VARCHAR, last_good_high TIMESTAMP, "
                "last_pass_at TIMESTAMP, last_status VARCHAR, last_error VARCHAR)")
    con.execute("DELETE FROM etl_freshness")
    for src in ("mis", "cs", "dist", "meter"):
        high = now - timedelta(minutes=20 if src in late else 1)     # stale after 300 s
        con.execute("INSERT INTO etl_freshness VALUES (?, ?, ?, ?, NULL)",
                    [src, high, now, "failed" if src in late else "ok"])


def cycle(con, registry, settings, now, value, late):
    freshness(con, now, late)
    con.execute("BEGIN TRANSACTION")
    key = put_value(con, ONTIME, "S01", DAY, DAY + timedelta(days=1), value,
                    "critical" if value < 95 else "ok", num=value * 10, den=1000, computed_at=now)
    summary = process(con, registry, [key], now, settings)
    con.execute("COMMIT")
    dispatch_due(con, settings, now)
    return summary


def test_stale_source_holds_its_kpis_and_raises_one_source_late_alert(warehouse, registry, settings,
                                                                      app_db, smtp_receiver):
    smtp_receiver.start()
    set_settings(app_db, {"smtp_host": "127.0.0.1", "smtp_port": smtp_receiver.port})
    add_contact(app_db, "duty", "email", "duty@example.cn")
    add_shift(app_db, "C01", "duty")
    for minute in range(5):                                  # cs late: the drop is not believed
        s = cycle(warehouse, registry, settings, T0 + timedelta(minutes=minute), 60.0, {"cs"})
        assert s.stale_sources == ("cs",) and s.held == 1
    subjects = [m["Subject"] for m in smtp_receiver.messages]
    assert subjects == ["【数据源延迟】95598客服系统"]
    body = smtp_receiver.messages[0].get_body(preferencelist=("plain",)).get_content()
    assert "最新数据时间：2026-10-15 09:40:00" in body and "延迟：20 分钟" in body
    assert "受影响指标：2 项指标的告警暂停评估" in body      # both KPIs read cs
    assert warehouse.execute("SELECT state, held FROM alarm_state").fetchall() == [("ok", True)]

    for minute in range(5, 8):                               # cs back: evaluation resumes
        cycle(warehouse, registry, settings, T0 + timedelta(minutes=minute), 60.0, set())
    subjects = [m["Subject"] for m in smtp_receiver.messages]
    assert subjects[1] == "【数据源恢复】95598客服系统"
    assert subjects[2].startswith("【告警·严重】城区抢修到达现场及时率 城东供电所")   # pending 2 after return
    assert len(subjects) == 3
    kinds = warehouse.execute("SELECT kind FROM alert_event ORDER BY created_at").fetchall()
    assert kinds == [("source_late",), ("source_back",), ("firing",)]
