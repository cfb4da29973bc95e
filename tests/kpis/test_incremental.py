"""Incremental evaluation after ETL passes: what is re-evaluated when, and revisions of past values.

Hand-worked with newconn.applications (daily/monthly count of applications by acceptance time)
over the standard org tree of the case harness. Each step inserts rows and the etl_dirty rows an
ETL pass would write for them, then runs kpis.evaluate.evaluate_incremental as the worker does.
"""
from __future__ import annotations

from datetime import datetime

import duckdb
import pytest

from kpis.evaluate import SWEEP_EVERY, evaluate_incremental
from kpis.registry import Registry, load_registry
from tests.kpis.harness import load_inputs

KPI = "newconn.applications"


def app(no: str, accepted: str, org: str = "S1") -> dict:
    return {"app_no": no, "busi_type_code": "101", "org_no": org, "grid_no": "G1",
            "status_code": "01", "accept_time": accepted}


def insert(con: duckdb.DuckDBPyConnection, run_id: int, *apps: dict) -> None:
    """The rows and the business dates an ETL pass would merge and mark dirty."""
    for a in apps:
        con.execute("INSERT INTO mis_app (app_no, busi_type_code, org_no, grid_no, status_code, "
                    "accept_time, created_at, updated_at, is_deleted) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                    [a["app_no"], a["busi_type_code"], a["org_no"], a["grid_no"], a["status_code"],
                     a["accept_time"], a["accept_time"], a["accept_time"]])
        con.execute("INSERT INTO etl_dirty VALUES (?, 'mis', 'mis_app', CAST(? AS DATE))",
                    [run_id, a["accept_time"][:10]])


def value(con, grain: str, start: str, org: str = "S1") -> float | None:
    row = con.execute("SELECT value FROM kpi_value WHERE kpi_id = ? AND grain = ? AND org_no = ? "
                      "AND period_start = CAST(? AS TIMESTAMP)", [KPI, grain, org, start]).fetchone()
    return None if row is None else row[0]


@pytest.fixture()
def con():
    c = duckdb.connect()
    load_inputs(c, {"calendar": "2024-04-01..2024-08-31", "inputs": {"mis_app": [
        app("A1", "2024-06-05 09:00:00"), app("A2", "2024-06-05 15:00:00"),
        app("A3", "2024-07-10 08:00:00"), app("A4", "2024-07-08 10:00:00", org="S2")]}})
    c.execute("CREATE TABLE etl_dirty (run_id BIGINT, source VARCHAR, table_name VARCHAR, "
              "business_date DATE)")
    c.execute("INSERT INTO etl_dirty VALUES (1, 'mis', 'mis_app', DATE '2024-06-05')")
    yield c
    c.close()


@pytest.fixture(scope="module")
def registry() -> Registry:
    full = load_registry()
    return Registry(kpis={KPI: full.get(KPI)}, where={KPI: full.where[KPI]})


def test_restatements_of_closed_months_wait_for_the_sweep_and_are_revised(con, registry):
    t0 = datetime(2024, 7, 10, 12, 0)
    # first run: the backfill. S1 on 06-05: A1, A2 = 2; June 2; today 07-10 (A3) 1; July 1.
    assert not evaluate_incremental(con, registry, t0).errors
    assert value(con, "daily", "2024-06-05") == 2
    assert value(con, "monthly", "2024-06-01") == 2
    assert value(con, "daily", "2024-07-10") == 1
    assert value(con, "monthly", "2024-07-01") == 1
    assert value(con, "monthly", "2024-07-01", org="K1") == 2      # S1 A3 + S2 A4

    # one minute later: a late application for 06-05 (closed month), one for today and one for
    # 07-08 (a past day of the open month).
    insert(con, 2, app("L1", "2024-06-05 11:00:00"), app("T1", "2024-07-10 12:00:30"),
           app("P1", "2024-07-08 16:00:00"))
    t1 = datetime(2024, 7, 10, 12, 1)
    assert not evaluate_incremental(con, registry, t1).errors
    assert value(con, "daily", "2024-07-10") == 2                   # open: A3 + T1
    assert value(con, "daily", "2024-07-08") == 1                   # open month's past day: P1
    assert value(con, "monthly", "2024-07-01") == 3                 # A3, T1, P1
    assert value(con, "daily", "2024-06-05") == 2                   # closed month: not yet
    assert value(con, "monthly", "2024-06-01") == 2

    # another pass inside the sweep interval, with nothing new: June still waits
    t2 = datetime(2024, 7, 10, 12, 2)
    assert not evaluate_incremental(con, registry, t2).errors
    assert value(con, "daily", "2024-06-05") == 2

    # the sweep (SWEEP_EVERY after the last one) takes every restatement since the last sweep,
    # though later passes have read newer etl_dirty rows meanwhile
    t3 = t0 + SWEEP_EVERY
    assert not evaluate_incremental(con, registry, t3).errors
    assert value(con, "daily", "2024-06-05") == 3                   # A1, A2, L1
    assert value(con, "monthly", "2024-06-01") == 3
    assert value(con, "monthly", "2024-06-01", org="P") == 3
    revised = con.execute(
        "SELECT grain, CAST(period_start AS DATE), old_value, new_value FROM kpi_value_revision "
        "WHERE kpi_id = ? AND org_no = 'S1' ORDER BY grain, period_start", [KPI]).fetchall()
    # final past values that changed are revisions (07-08 at t1: 0 -> 1); the open day and
    # month are not
    assert [(g, str(d), o, n) for g, d, o, n in revised] == [
        ("daily", "2024-06-05", 2.0, 3.0), ("daily", "2024-07-08", 0.0, 1.0),
        ("monthly", "2024-06-01", 2.0, 3.0)]


def test_a_new_hour_is_a_sweep(con, registry):
    assert not evaluate_incremental(con, registry, datetime(2024, 7, 10, 12, 58)).errors
    insert(con, 2, app("L1", "2024-06-05 11:00:00"))
    assert not evaluate_incremental(con, registry, datetime(2024, 7, 10, 12, 59)).errors
    assert value(con, "daily", "2024-06-05") == 2
    assert not evaluate_incremental(con, registry, datetime(2024, 7, 10, 13, 0)).errors
    assert value(con, "daily", "2024-06-05") == 3


def test_a_pass_skips_kpis_whose_tables_did_not_change(con, registry):
    assert not evaluate_incremental(con, registry, datetime(2024, 7, 10, 12, 0)).errors
    # terminal heartbeats (meter_terminal) are not read by newconn.applications: skipped
    con.execute("INSERT INTO etl_dirty VALUES (2, 'meter', 'meter_terminal', DATE '2024-07-10')")
    assert evaluate_incremental(con, registry, datetime(2024, 7, 10, 12, 1)).kpis == 0
    # a new application is: evaluated
    insert(con, 3, app("T1", "2024-07-10 12:01:30"))
    summary = evaluate_incremental(con, registry, datetime(2024, 7, 10, 12, 2))
    assert summary.kpis == 1 and value(con, "daily", "2024-07-10") == 2
    # the org tree is read by every KPI (attribution, roll-up)
    con.execute("INSERT INTO etl_dirty VALUES (4, 'mis', 'mis_org', NULL)")
    assert evaluate_incremental(con, registry, datetime(2024, 7, 10, 12, 3)).kpis == 1
