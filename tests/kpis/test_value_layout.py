"""kpi_value's physical order: the nightly re-append of the rows written since, in period order,
keeps every row and moves only those; the store names its periods' starts as literals."""
from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pytest

from kpis import value_layout
from kpis.evaluate import ensure_schema

DAY = datetime(2026, 11, 20)


def put(con, kpi: str, org: str, grain: str, start: datetime, computed: datetime, value: float) -> None:
    con.execute("INSERT INTO kpi_value (kpi_id, org_no, grain, period_start, period_end, value, "
                "computed_at) VALUES (?, ?, ?, ?, ?, ?, ?)", [kpi, org, grain, start, start, value, computed])


def physical(con) -> list[tuple]:
    return con.execute("SELECT period_start, grain, kpi_id, org_no, value FROM kpi_value "
                       "ORDER BY rowid").fetchall()


@pytest.fixture()
def con():
    c = duckdb.connect()
    ensure_schema(c)
    # one day's passes as the store appends them: each minute the month, the day and a snapshot
    for minute in range(3):
        at = DAY + timedelta(hours=9, minutes=minute)
        put(c, "a", "S1", "monthly", datetime(2026, 11, 1), at, minute)
        put(c, "a", "S1", "daily", DAY, at, 10 + minute)
        put(c, "b", "S2", "near-real-time", at, at, 20 + minute)
    yield c
    c.close()


def test_rows_written_since_are_re_appended_in_period_order(con) -> None:
    before = sorted(physical(con))
    assert value_layout.sort_recent(con) == 9
    assert physical(con) == before          # all rows kept, now in (period_start, grain, kpi, org)
    assert [r[0] for r in physical(con)][:3] == [datetime(2026, 11, 1)] * 3
    # the next night: only the rows computed after the last sort move, after the sorted ones
    late = DAY + timedelta(days=1, hours=1)
    put(con, "a", "S1", "daily", DAY + timedelta(days=1), late, 30)
    put(con, "a", "S1", "monthly", datetime(2026, 11, 1), late, 31)
    assert value_layout.sort_recent(con) == 2
    rows = physical(con)
    assert rows[:9] == before
    assert rows[9:] == [(datetime(2026, 11, 1), "monthly", "a", "S1", 31),
                        (DAY + timedelta(days=1), "daily", "a", "S1", 30)]
    assert value_layout.sort_recent(con) == 0


def test_the_store_names_its_periods_as_literals() -> None:
    starts = [datetime(2026, 11, 1), datetime(2026, 11, 30, 22, 31, 0, 500)]
    assert value_layout.among("o", starts) == ("AND o.period_start IN (TIMESTAMP '2026-11-01 00:00:00', "
                                               "TIMESTAMP '2026-11-30 22:31:00.000500')")
    assert value_layout.among("v", []) == ""
    many = [DAY + timedelta(hours=h) for h in range(value_layout.MAX_LISTED + 1)]
    assert value_layout.among("v", many) == ""          # a backfill: the join alone


def test_a_pass_of_millions_of_rows_is_sorted_at_once_and_a_minute_is_not(con, monkeypatch) -> None:
    # the worker's first pass (its backfill: 23 M rows at city for 10 days) is sorted after it,
    # not at 02:30: until then every minute's lookups would read those rows unsorted
    before = physical(con)
    con.execute(value_layout.STATE_DDL)
    monkeypatch.setattr(value_layout, "SORT_AFTER_ROWS", 9)
    assert value_layout.sort_after_large_pass(con, 8) == 0          # a minute's pass
    assert physical(con) == before
    assert con.execute("SELECT COUNT(*) FROM kpi_value_sorted").fetchone()[0] == 0
    assert value_layout.sort_after_large_pass(con, 9) == 9
    assert physical(con) == sorted(before)
    assert con.execute("SELECT upto FROM kpi_value_sorted").fetchone()[0] == DAY + timedelta(hours=9, minutes=2)


class _Sent:
    """A connection that keeps the text of each statement sent."""

    def __init__(self, con) -> None:
        self.con, self.sql = con, []

    def execute(self, sql, *args):
        self.sql.append(" ".join(sql.split()))
        return self.con.execute(sql, *args)


def test_baselines_read_the_history_only_of_kpis_with_rows_to_fill(con) -> None:
    """A pass whose facts left every unit of a KPI as stored (kpis/fact_diff.py) has no row of it
    in _result: no period start names what its baseline would read, and its statement read the
    KPI's whole history. Now only KPIs with rows are looked up; those still get their baselines."""
    from kpis.batch import RESULT_COLUMNS
    from kpis.evaluate import apply_baselines
    from kpis.periods import day, month, snapshot
    from kpis.registry import load_registry

    reg = load_registry()
    sensitive, queue, arrears = (reg.get("customer.sensitive_count"), reg.get("call.queue_now"),
                                 reg.get("billing.old_arrears_amount"))
    at = DAY + timedelta(hours=9)
    put(con, sensitive.id, "S1", "daily", datetime(2026, 10, 31), at, 40.0)   # the month end before
    put(con, queue.id, "S1", "near-real-time", at - timedelta(days=1), at, 7.0)
    put(con, arrears.id, "S1", "monthly", datetime(2026, 10, 1), at, 900.0)
    con.execute(f"CREATE TEMP TABLE _result AS SELECT {', '.join(RESULT_COLUMNS)} FROM kpi_value LIMIT 0")
    con.execute("INSERT INTO _result (kpi_id, org_no, org_level, grain, period_start, period_end, value, "
                "status) VALUES (?, 'S1', 'station', 'daily', ?, ?, 60.0, 'ok')",
                [sensitive.id, DAY, DAY + timedelta(days=1)])
    sent = _Sent(con)
    apply_baselines(sent, [(sensitive, [day(DAY.date())]), (queue, [snapshot(at)]),
                           (arrears, [month(2026, 11)])])
    reads = [s for s in sent.sql if "kpi_value" in s]
    assert reads and all(queue.id not in s and arrears.id not in s for s in reads), reads
    # 60 against 40: over rel:1.25 (critical), so the row's status moved with its baseline
    assert con.execute("SELECT baseline, status FROM _result").fetchall() == [(40.0, "critical")]
