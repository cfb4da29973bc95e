"""Which kpi_value row drives a unit's alarm: its newest row of the KPI's natural grain, looked for
back to the grain's horizon (three days for a daily KPI, two for an hourly one), so that the
alarm step reads the current periods and not the history the worker has piled up; and only rows
that can move an alarm are stepped (not ok, or of a unit with an alarm)."""
from __future__ import annotations

from datetime import datetime, timedelta

from kpis.alerting import horizon, process

from .conftest import CALLS, ONTIME, put_value

NOW = datetime(2026, 10, 15, 10, 0)
D = datetime(2026, 10, 15)


def daily(con, org: str, days_back: int, value: float) -> None:
    start = D - timedelta(days=days_back)
    put_value(con, ONTIME, org, start, start + timedelta(days=1), value,
              "critical" if value < 95 else "ok", num=value * 10, den=1000)


def test_the_newest_row_within_its_horizon_drives_the_alarm(warehouse, registry, settings, app_db):
    daily(warehouse, "S01", 5, 60.0)      # five days back: past the daily horizon, raises nothing
    daily(warehouse, "X01", 1, 60.0)      # yesterday critical, today on target: today drives
    daily(warehouse, "X01", 0, 99.0)
    daily(warehouse, "X02", 2, 60.0)      # the newest row of X02, two days back: drives
    hour = NOW - timedelta(hours=1)
    put_value(warehouse, CALLS, "C01", hour, NOW, 25.0, "critical", num=25, den=100)   # the last hour
    put_value(warehouse, CALLS, "X01", NOW - timedelta(days=3), NOW - timedelta(days=3, hours=-1),
              50.0, "critical", num=50, den=100)      # three days back: past the hourly horizon
    summary = process(warehouse, registry, None, NOW, settings)
    # driving rows: X01 today (ok, no alarm: nothing to step), X02 two days back, C01 the last hour
    assert summary.stepped == 2
    assert warehouse.execute("SELECT kpi_id, org_no FROM alarm_state ORDER BY ALL").fetchall() == [
        (CALLS.id, "C01"), (ONTIME.id, "X02")]
    # X02 back on target today: its ok row is stepped because X02 has an alarm
    daily(warehouse, "X02", 0, 99.0)
    assert process(warehouse, registry, None, NOW + timedelta(minutes=1), settings).stepped == 2


def test_horizons_by_grain():
    now = datetime(2026, 3, 1, 0, 30)
    assert horizon("near-real-time", now) == datetime(2026, 2, 28, 0, 30)
    assert horizon("hourly", now) == datetime(2026, 2, 27, 0, 30)
    assert horizon("daily", now) == datetime(2026, 2, 26, 0, 30)
    assert horizon("monthly", now) == datetime(2026, 2, 1)        # last month's row for complete months
    assert horizon("monthly", datetime(2026, 1, 15)) == datetime(2025, 12, 1)


def test_a_late_source_holds_every_unit_of_its_kpis_ok_rows_included(warehouse, registry, settings, app_db):
    from .test_stale_source import freshness
    freshness(warehouse, NOW, late={"cs"})      # the urban arrival rate reads cs and dist
    daily(warehouse, "X01", 0, 99.0)            # on target, no alarm: held all the same
    summary = process(warehouse, registry, None, NOW, settings)
    assert (summary.stale_sources, summary.stepped, summary.held) == (("cs",), 1, 1)
    assert warehouse.execute("SELECT org_no, state, held FROM alarm_state").fetchall() == [("X01", "ok", True)]


def test_a_firing_alarm_is_rewritten_only_when_its_row_was_recomputed(warehouse, registry, settings, app_db):
    # X02 at 60 % against a critical threshold of 95: fires, and stays firing
    put_value(warehouse, ONTIME, "X02", D, D + timedelta(days=1), 60.0, "critical", num=600, den=1000,
              computed_at=NOW - timedelta(minutes=2))
    at = NOW
    process(warehouse, registry, None, at, settings)
    while warehouse.execute("SELECT count(*) FROM alarm_state WHERE state = 'firing'").fetchone()[0] == 0:
        process(warehouse, registry, None, at, settings)
        at += timedelta(minutes=1)
        assert at < NOW + timedelta(minutes=10), "the alarm never fired"

    def state():
        return warehouse.execute("SELECT state, value, updated_at, json_extract(last_item, '$.value')::DOUBLE "
                                 "FROM alarm_state WHERE org_no = 'X02'").fetchone()

    fired = state()
    # a minute in which no pass recomputed the row: the state row stays as written
    process(warehouse, registry, None, at, settings)
    assert state() == fired
    # the row restated at 55 % (still critical) by the next pass: value and message follow
    put_value(warehouse, ONTIME, "X02", D, D + timedelta(days=1), 55.0, "critical", num=550, den=1000,
              computed_at=at + timedelta(seconds=50))
    process(warehouse, registry, None, at + timedelta(minutes=1), settings)
    assert state() == ("firing", 55.0, at + timedelta(minutes=1), 55.0)


def test_alarm_states_kept_before_row_at_existed_get_the_column_and_are_rewritten_once(
        warehouse, registry, settings, app_db):
    # an alarm_state table as a warehouse of session 19 holds it: no row_at column
    warehouse.execute("""CREATE TABLE alarm_state (
        kpi_id VARCHAR, org_no VARCHAR, state VARCHAR, severity VARCHAR, count INTEGER,
        since TIMESTAMP, last_sent TIMESTAMP, held BOOLEAN, grain VARCHAR, period_start TIMESTAMP,
        value DOUBLE, updated_at TIMESTAMP, acked_at TIMESTAMP, acked_by VARCHAR,
        escalated_at TIMESTAMP, escalate_after_s INTEGER, last_item VARCHAR)""")
    warehouse.execute("INSERT INTO alarm_state (kpi_id, org_no, state, severity, count, since, last_sent, "
                      "held, grain, period_start, value, updated_at) VALUES (?, 'X02', 'firing', 'critical', "
                      "0, ?, ?, FALSE, 'daily', ?, 61.0, ?)",
                      [ONTIME.id, NOW - timedelta(hours=1), NOW - timedelta(hours=1), D, NOW - timedelta(minutes=1)])
    put_value(warehouse, ONTIME, "X02", D, D + timedelta(days=1), 60.0, "critical", num=600, den=1000,
              computed_at=NOW - timedelta(minutes=5))
    process(warehouse, registry, None, NOW, settings)
    assert warehouse.execute("SELECT state, value, updated_at, row_at FROM alarm_state").fetchall() == [
        ("firing", 60.0, NOW, NOW - timedelta(minutes=5))]
