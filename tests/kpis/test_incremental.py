"""Incremental evaluation after ETL passes: what is re-evaluated when, and revisions of past values.

Hand-worked with newconn.applications (daily/monthly count of applications by acceptance time)
over the standard org tree of the case harness. Each step inserts rows and the etl_dirty rows an
ETL pass would write for them, then runs kpis.evaluate.evaluate_incremental as the worker does.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from datetime import date, datetime, timedelta

import duckdb
import pytest

from kpis.evaluate import SWEEP_EVERY, evaluate_incremental
from kpis.periods import Period, day, month
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
        con.execute("INSERT INTO etl_dirty (run_id, source, table_name, business_date) "
                    "VALUES (?, 'mis', 'mis_app', CAST(? AS DATE))", [run_id, a["accept_time"][:10]])


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


def registry_of(kid: str) -> Registry:
    full = load_registry()
    return Registry(kpis={kid: full.get(kid)}, where={kid: full.where[kid]})


@pytest.fixture(scope="module")
def registry() -> Registry:
    return registry_of(KPI)


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


def test_a_past_day_is_read_again_only_when_a_column_the_kpi_reads_changed_on_it(con, registry):
    """The ETL records, per dirty date, the columns changed in the rows carrying it (a call's
    quality check filled two days later marks the call's day). newconn.applications counts by
    intake time, type and unit: A4 (07-08, S2) getting a status changes none of those, so 07-08
    is not read again; A4 moving to S1 is."""
    con.execute("ALTER TABLE etl_dirty ADD COLUMN changed_columns VARCHAR[]")
    t0 = datetime(2024, 7, 10, 12, 0)
    assert not evaluate_incremental(con, registry, t0).errors
    assert value(con, "daily", "2024-07-08", org="S2") == 1
    con.execute("UPDATE mis_app SET status_code = '05', updated_at = ? WHERE app_no = 'A4'", [t0])
    con.execute("INSERT INTO etl_dirty VALUES (2, 'mis', 'mis_app', DATE '2024-07-08', "
                "['status_code', 'updated_at'])")
    quiet = evaluate_incremental(con, registry, t0 + timedelta(minutes=1))
    assert not quiet.errors
    assert quiet.periods == 2                                        # today and July only
    con.execute("UPDATE mis_app SET org_no = 'S1', updated_at = ? WHERE app_no = 'A4'", [t0])
    con.execute("INSERT INTO etl_dirty VALUES (3, 'mis', 'mis_app', DATE '2024-07-08', "
                "['org_no', 'updated_at'])")
    moved = evaluate_incremental(con, registry, t0 + timedelta(minutes=2))
    assert not moved.errors
    assert moved.periods == 3                                        # and 07-08
    assert value(con, "daily", "2024-07-08", org="S1") == 1
    assert value(con, "daily", "2024-07-08", org="S2") == 0
    assert value(con, "monthly", "2024-07-01", org="S1") == 2       # A3, A4
    # a date marked without its columns (a new row, an older ETL) counts as any column
    insert(con, 4, app("P1", "2024-07-08 16:00:00"))
    assert evaluate_incremental(con, registry, t0 + timedelta(minutes=3)).periods == 3
    assert value(con, "daily", "2024-07-08", org="S1") == 2


def test_a_past_day_is_judged_from_the_changed_rows_images(con, registry, monkeypatch):
    """With the ETL's row images (kpis/images.py) a past day that a changed column of the KPI's
    opened is read again only when the changed rows' facts or presence differ before and after.
    newconn.applications counts types 101-103, 111, 112 by intake day and unit, present on a day
    with any application (deleted or not). A4 (07-08, S2) turning 102: still counted there, the
    day is left as stored; turning 201: not counted, 07-08 S2 falls 1 -> 0 (present: A4 is
    still there); moving to 07-09 as a 201: no fact on either day before or after, but 07-08
    has no application any more (no_data) and 07-09 has one (0)."""
    con.execute("ALTER TABLE etl_dirty ADD COLUMN changed_columns VARCHAR[]")
    con.execute("CREATE TABLE etl_image_run (run_id BIGINT, source VARCHAR, table_name VARCHAR, "
                "kept BOOLEAN)")
    con.execute("CREATE TABLE etl_image__mis_app AS SELECT CAST(NULL AS BIGINT) AS _run_id, "
                "CAST(NULL AS BOOLEAN) AS _after, * FROM mis_app LIMIT 0")
    t0 = datetime(2024, 7, 10, 12, 0)
    assert not evaluate_incremental(con, registry, t0).errors
    assert value(con, "daily", "2024-07-08", org="S2") == 1

    def change(run: int, sets: str, dates: tuple[str, ...]) -> None:
        con.execute("INSERT INTO etl_image__mis_app SELECT ?, FALSE, * FROM mis_app "
                    "WHERE app_no = 'A4'", [run])
        con.execute(f"UPDATE mis_app SET {sets}, updated_at = ? WHERE app_no = 'A4'", [t0])
        con.execute("INSERT INTO etl_image__mis_app SELECT ?, TRUE, * FROM mis_app "
                    "WHERE app_no = 'A4'", [run])
        con.execute("INSERT INTO etl_image_run VALUES (?, 'mis', 'mis_app', TRUE)", [run])
        cols = sorted({c.split("=")[0].strip() for c in sets.split(",")} | {"updated_at"})
        for d in dates:
            con.execute("INSERT INTO etl_dirty VALUES (?, 'mis', 'mis_app', CAST(? AS DATE), ?)",
                        [run, d, cols])

    change(2, "busi_type_code = '102'", ("2024-07-08",))
    same = evaluate_incremental(con, registry, t0 + timedelta(minutes=1))
    assert not same.errors and same.as_stored == [(KPI, date(2024, 7, 8))]
    assert same.periods == 2                                         # today and July only
    assert value(con, "daily", "2024-07-08", org="S2") == 1
    change(3, "busi_type_code = '201'", ("2024-07-08",))
    fell = evaluate_incremental(con, registry, t0 + timedelta(minutes=2))
    assert not fell.errors and fell.as_stored == [] and fell.periods == 3
    assert value(con, "daily", "2024-07-08", org="S2") == 0
    assert value(con, "monthly", "2024-07-01", org="S2") == 0
    change(4, "accept_time = TIMESTAMP '2024-07-09 10:00:00'", ("2024-07-08", "2024-07-09"))
    moved = evaluate_incremental(con, registry, t0 + timedelta(minutes=3))
    assert not moved.errors and moved.as_stored == [] and moved.periods == 4
    assert value(con, "daily", "2024-07-08", org="S2") is None      # no application: no_data
    assert value(con, "daily", "2024-07-09", org="S2") == 0
    # a judgement that fails (a KPI's SQL, a lost image table) leaves the days to be read
    from kpis import images

    def broken(*_args):
        raise duckdb.CatalogException("etl_image__mis_app is gone")

    monkeypatch.setattr(images, "_judge", broken)
    change(5, "busi_type_code = '301'", ("2024-07-09",))
    failed = evaluate_incremental(con, registry, t0 + timedelta(minutes=4))
    assert not failed.errors and failed.as_stored == [] and failed.periods == 3
    assert value(con, "daily", "2024-07-09", org="S2") == 0


def test_a_past_day_waits_for_the_sweep_unless_its_month_is_summed_from_days(con):
    """The same counts, with months read from the facts (day_additive: false, as for stocks,
    distinct counts and rolling windows): a late row for 07-08 changes the open month at
    once, but 07-08 itself is a closed day, restated at the next sweep. (With months summed
    from stored days the day is read at once: the month needs it; first test above.)"""
    full = load_registry()
    k = full.get(KPI).model_copy(update={"day_additive": False})
    registry = Registry(kpis={KPI: k}, where={KPI: full.where[KPI]})
    t0 = datetime(2024, 7, 10, 12, 0)
    assert not evaluate_incremental(con, registry, t0).errors
    assert value(con, "daily", "2024-07-08") == 0                   # S1 had none that day
    insert(con, 2, app("P1", "2024-07-08 16:00:00"))
    assert not evaluate_incremental(con, registry, t0 + timedelta(minutes=1)).errors
    assert value(con, "monthly", "2024-07-01") == 2                 # A3, P1: open, fresh
    assert value(con, "daily", "2024-07-08") == 0                   # closed: not yet
    assert not evaluate_incremental(con, registry, t0 + SWEEP_EVERY).errors
    assert value(con, "daily", "2024-07-08") == 1
    assert value(con, "monthly", "2024-07-01") == 2


def test_a_stock_is_restated_from_the_earliest_changed_date_to_today():
    """customer.active_total (a stock at each day's end), hand-worked for S1. C1 (built 06-01)
    and C2 (06-20) are on the books; on 07-10 C3, built on 07-05, is keyed in late, and C1 is
    closed back-dated to 07-07 (ACTIVE needs cancel_date > the day: C1 is off from 07-07).
    A changed date moves the stock of every day after it, not only its own: the sweep restates
    07-05 .. 07-09 for C3 (2 -> 3) and 07-07 .. 07-09 for C1 (3 -> 2); the days before stay.
        day    06-30 07-04 07-05 07-06 07-07 07-08 07-09 07-10
        first    2     2     2     2     2     2     2     2
        C3       2     2     3     3     3     3     3     3
        C1       2     2     3     3     2     2     2     2"""
    kid = "customer.active_total"
    registry = registry_of(kid)

    def cust(no: str, built: str, **kw) -> dict:
        return {"cons_no": no, "cons_name": no, "org_no": "S1", "grid_no": "G1", "build_date": built,
                "status_code": "01", "cons_sort_code": "03", "elec_type_code": "201", **kw}

    def dirty(run: int, *dates: str) -> None:
        con.executemany("INSERT INTO etl_dirty VALUES (?, 'mis', 'mis_customer', CAST(? AS DATE))",
                        [[run, d] for d in dates])

    def days() -> dict[str, float]:
        return {str(d)[5:]: v for d, v in con.execute(
            "SELECT CAST(period_start AS DATE), value FROM kpi_value WHERE kpi_id = ? AND org_no = 'S1' "
            "AND grain = 'daily' AND (period_start BETWEEN '2024-07-04' AND '2024-07-10' "
            "OR period_start = '2024-06-30')", [kid]).fetchall()}

    con = duckdb.connect()
    load_inputs(con, {"calendar": "2024-04-01..2024-08-31", "inputs": {"mis_customer": [
        cust("C1", "2024-06-01"), cust("C2", "2024-06-20")]}})
    con.execute("CREATE TABLE etl_dirty (run_id BIGINT, source VARCHAR, table_name VARCHAR, "
                "business_date DATE)")
    dirty(1, "2024-06-01", "2024-06-20")
    t0 = datetime(2024, 7, 10, 12, 0)
    assert not evaluate_incremental(con, registry, t0).errors
    assert set(days().values()) == {2}
    # C3 keyed in late: a new row marks its build date
    con.execute("INSERT INTO mis_customer BY NAME SELECT 'C3' AS cons_no, 'S1' AS org_no, "
                "'G1' AS grid_no, DATE '2024-07-05' AS build_date, '01' AS status_code, "
                "'03' AS cons_sort_code, '201' AS elec_type_code, TIMESTAMP '2024-07-10 12:00:30' AS "
                "created_at, TIMESTAMP '2024-07-10 12:00:30' AS updated_at, 0 AS is_deleted")
    dirty(2, "2024-07-05")
    assert not evaluate_incremental(con, registry, t0 + SWEEP_EVERY).errors
    assert days() == {"06-30": 2, "07-04": 2, "07-05": 3, "07-06": 3, "07-07": 3, "07-08": 3,
                      "07-09": 3, "07-10": 3}
    # C1 closed on 07-10 with cancel date 07-07: its cancel date and the day of the update
    con.execute("UPDATE mis_customer SET status_code = '04', cancel_date = DATE '2024-07-07', "
                "updated_at = TIMESTAMP '2024-07-10 12:15:00' WHERE cons_no = 'C1'")
    dirty(3, "2024-07-07", "2024-07-10")
    assert not evaluate_incremental(con, registry, t0 + 2 * SWEEP_EVERY).errors
    assert days() == {"06-30": 2, "07-04": 2, "07-05": 3, "07-06": 3, "07-07": 2, "07-08": 2,
                      "07-09": 2, "07-10": 2}
    assert con.execute("SELECT value FROM kpi_value WHERE kpi_id = ? AND org_no = 'S1' AND "
                       "grain = 'monthly' AND period_start = '2024-06-01'", [kid]).fetchone() == (2,)


def test_a_stock_over_events_is_restated_from_a_late_rows_date_to_today():
    """billing.arrears_customers (customers with an overdue bill outstanding at each day's end),
    hand-worked for S1. BK1's bill B1 (100.00, due 07-01) is unpaid until, on 07-10, a payment
    made on 07-05 10:00 is keyed in late: OUT(B1) is 0 from 07-05 10:00, so every day's end from
    07-05 on has no customer in arrears, not only the payment's own day. Before it, and for the
    days before 07-05 after it, BK1 counts (te of 07-01 is 07-02 00:00, past the due date).
        day    06-30 07-01 07-04 07-05 07-06 07-09 07-10
        first    0     1     1     1     1     1     1
        paid     0     1     1     0     0     0     0"""
    kid = "billing.arrears_customers"
    registry = registry_of(kid)
    con = duckdb.connect()
    load_inputs(con, {"calendar": "2024-04-01..2024-08-31", "inputs": {
        "mis_customer": [{"cons_no": "BK1", "cons_sort_code": "03", "elec_type_code": "200",
                          "org_no": "S1", "status_code": "01", "build_date": "2020-01-01",
                          "grid_no": "G1"}],
        "mis_bill": [{"bill_id": "B1", "cons_no": "BK1", "org_no": "S1", "rcvbl_ym": "202406",
                      "amt_type": "01", "rcvbl_amt": 100.0, "release_date": "2024-06-05",
                      "due_date": "2024-07-01", "settle_flag": "01"}],
        "mis_rcved_flow": []}})
    con.execute("CREATE TABLE etl_dirty (run_id BIGINT, source VARCHAR, table_name VARCHAR, "
                "business_date DATE)")
    con.execute("INSERT INTO etl_dirty VALUES (1, 'mis', 'mis_bill', DATE '2024-07-01')")

    def days() -> dict[str, float]:
        return {str(d)[5:]: v for d, v in con.execute(
            "SELECT CAST(period_start AS DATE), value FROM kpi_value WHERE kpi_id = ? AND org_no = 'S1' "
            "AND grain = 'daily' AND period_start IN ('2024-06-30', '2024-07-01', '2024-07-04', "
            "'2024-07-05', '2024-07-06', '2024-07-09', '2024-07-10')", [kid]).fetchall()}

    t0 = datetime(2024, 7, 10, 12, 0)
    assert not evaluate_incremental(con, registry, t0).errors
    assert days() == {"06-30": 0, "07-01": 1, "07-04": 1, "07-05": 1, "07-06": 1, "07-09": 1,
                      "07-10": 1}
    # the late payment: a new row of the payments, marked by its only business date
    con.execute("INSERT INTO mis_rcved_flow BY NAME SELECT 'F1' AS rcved_id, 'B1' AS bill_id, "
                "'BK1' AS cons_no, 'S1' AS org_no, 100.0 AS rcved_amt, 0 AS rcved_penalty, "
                "TIMESTAMP '2024-07-05 10:00:00' AS rcved_time, '01' AS status_code, "
                "TIMESTAMP '2024-07-10 12:03:00' AS created_at, "
                "TIMESTAMP '2024-07-10 12:03:00' AS updated_at, 0 AS is_deleted")
    con.execute("INSERT INTO etl_dirty VALUES (2, 'mis', 'mis_rcved_flow', DATE '2024-07-05')")
    assert not evaluate_incremental(con, registry, t0 + SWEEP_EVERY).errors
    assert days() == {"06-30": 0, "07-01": 1, "07-04": 1, "07-05": 0, "07-06": 0, "07-09": 0,
                      "07-10": 0}


def test_a_rolling_window_is_restated_in_every_month_that_contains_the_changed_date():
    """order.complaint_rate_10k (valid complaints over the 12 months ending at we, per 10,000
    customers active at we), hand-worked for S1 with two customers built in 2020. A complaint
    accepted on 05-15 is keyed in on 07-10 (CONVENTIONS §6: "every rolling window that contains
    a changed date"). The windows of May [2023-06-01, 2024-06-01), June [2023-07-01, 2024-07-01)
    and July (to as_of) all contain 05-15, so each month's value goes from 0 to
    10000 * 1 / 2 = 5000; April's [2023-05-01, 2024-05-01) does not, and stays 0. Likewise every
    day from 05-15 on; 05-14 stays 0."""
    kid = "order.complaint_rate_10k"
    registry = registry_of(kid)

    def cust(no: str) -> dict:
        return {"cons_no": no, "cons_sort_code": "03", "elec_type_code": "201", "org_no": "S1",
                "grid_no": "G1", "status_code": "01", "build_date": "2020-01-01"}

    con = duckdb.connect()
    load_inputs(con, {"calendar": "2024-01-01..2024-08-31", "inputs": {
        "mis_customer": [cust("CA1"), cust("CA2")], "cs_work_order": []}})
    con.execute("CREATE TABLE etl_dirty (run_id BIGINT, source VARCHAR, table_name VARCHAR, "
                "business_date DATE)")
    con.execute("INSERT INTO etl_dirty VALUES (1, 'mis', 'mis_customer', DATE '2020-01-01')")

    def values(grain: str, *starts: str) -> dict[str, float]:
        return {str(d)[5:]: v for d, v in con.execute(
            "SELECT CAST(period_start AS DATE), value FROM kpi_value WHERE kpi_id = ? AND org_no = 'S1' "
            "AND grain = ? AND list_contains(?, CAST(CAST(period_start AS DATE) AS VARCHAR))",
            [kid, grain, list(starts)]).fetchall()}

    months = ("2024-04-01", "2024-05-01", "2024-06-01", "2024-07-01")
    days = ("2024-05-14", "2024-05-15", "2024-06-20", "2024-07-09")
    t0 = datetime(2024, 7, 10, 12, 0)
    assert not evaluate_incremental(con, registry, t0).errors
    assert values("monthly", *months) == {"04-01": 0, "05-01": 0, "06-01": 0, "07-01": 0}
    assert set(values("daily", *days).values()) == {0}
    con.execute("INSERT INTO cs_work_order BY NAME SELECT 'Q1' AS wo_no, '02' AS busi_type_code, "
                "'01' AS accept_channel, TIMESTAMP '2024-05-15 10:00:00' AS accept_time, "
                "'06' AS status_code, 'S1' AS org_no, '01' AS complaint_valid, "
                "TIMESTAMP '2024-07-10 12:03:00' AS created_at, "
                "TIMESTAMP '2024-07-10 12:03:00' AS updated_at, 0 AS is_deleted")
    con.execute("INSERT INTO etl_dirty VALUES (2, 'cs', 'cs_work_order', DATE '2024-05-15')")
    assert not evaluate_incremental(con, registry, t0 + SWEEP_EVERY).errors
    assert values("monthly", *months) == {"04-01": 0, "05-01": 5000, "06-01": 5000, "07-01": 5000}
    assert values("daily", *days) == {"05-14": 0, "05-15": 5000, "06-20": 5000, "07-09": 5000}


def test_a_flow_per_customers_at_the_end_carries_a_late_customer_like_a_stock():
    """repair.orders_per_10k (main repair tasks received in the month per 10,000 customers
    active at its end), hand-worked for S1: CA1 and CA2 built in 2020, one task received on
    06-10. On 07-10 CA3, built on 05-20, is keyed in late (its build date is marked). Every
    month ending after 05-20 counts it: June 10000 * 1 / 2 = 5000 -> 10000 * 1 / 3 = 3333.33;
    May (no task) 0 over 3; April, ending before 05-20, stays 0 over 2."""
    kid = "repair.orders_per_10k"
    registry = registry_of(kid)

    def cust(no: str, built: str) -> dict:
        return {"cons_no": no, "cons_sort_code": "03", "elec_type_code": "201", "org_no": "S1",
                "grid_no": "G1", "status_code": "01", "build_date": built}

    con = duckdb.connect()
    load_inputs(con, {"calendar": "2024-01-01..2024-08-31", "inputs": {
        "mis_customer": [cust("CA1", "2020-01-01"), cust("CA2", "2020-01-01")],
        "dist_repair_task": [{"task_id": "O1", "org_no": "S1", "receive_time": "2024-06-10 10:00:00",
                              "status_code": "07"}]}})
    con.execute("CREATE TABLE etl_dirty (run_id BIGINT, source VARCHAR, table_name VARCHAR, "
                "business_date DATE)")
    con.execute("INSERT INTO etl_dirty VALUES (1, 'mis', 'mis_customer', DATE '2020-01-01')")

    def months() -> dict[str, tuple]:
        return {str(d)[5:7]: (n, den) for d, n, den in con.execute(
            "SELECT CAST(period_start AS DATE), numerator, denominator FROM kpi_value "
            "WHERE kpi_id = ? AND org_no = 'S1' AND grain = 'monthly' "
            "AND period_start BETWEEN '2024-04-01' AND '2024-06-01'", [kid]).fetchall()}

    t0 = datetime(2024, 7, 10, 12, 0)
    assert not evaluate_incremental(con, registry, t0).errors
    assert months() == {"04": (0, 2), "05": (0, 2), "06": (1, 2)}
    con.execute("INSERT INTO mis_customer BY NAME SELECT 'CA3' AS cons_no, 'S1' AS org_no, "
                "'G1' AS grid_no, DATE '2024-05-20' AS build_date, '01' AS status_code, "
                "'03' AS cons_sort_code, '201' AS elec_type_code, TIMESTAMP '2024-07-10 12:00:30' AS "
                "created_at, TIMESTAMP '2024-07-10 12:00:30' AS updated_at, 0 AS is_deleted")
    con.execute("INSERT INTO etl_dirty VALUES (2, 'mis', 'mis_customer', DATE '2024-05-20')")
    assert not evaluate_incremental(con, registry, t0 + SWEEP_EVERY).errors
    assert months() == {"04": (0, 2), "05": (0, 3), "06": (1, 3)}
    assert con.execute("SELECT round(value, 2) FROM kpi_value WHERE kpi_id = ? AND org_no = 'S1' "
                       "AND grain = 'monthly' AND period_start = '2024-06-01'", [kid]).fetchone() == (3333.33,)


def test_a_stock_carries_a_change_back_to_the_previous_month_and_a_year_of_month_ends():
    from kpis.evaluate import stock_carried
    at = datetime(2024, 7, 10, 12, 0)
    got = stock_carried(date(2021, 3, 5), at)         # a customer built in 2021, deleted today
    days = sorted(p.ws.date() for p in got if p.grain == "daily")
    months = sorted(p.ws.date() for p in got if p.grain == "monthly")
    assert days[0] == date(2024, 6, 1) and days[-1] == date(2024, 7, 10) and len(days) == 40
    assert months == [date(2023, 7 + i, 1) if i < 6 else date(2024, i - 5, 1) for i in range(13)]
    got = stock_carried(date(2024, 7, 8), at)
    assert sorted((p.grain, p.ws.day) for p in got) == [("daily", 8), ("daily", 9), ("daily", 10),
                                                         ("monthly", 1)]


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


def test_a_pass_skips_kpis_whose_columns_of_a_woken_table_did_not_change(con, registry):
    """newconn.applications reads app_no, busi_type_code, org_no, grid_no, accept_time and
    is_deleted of mis_app: a change of another column (the current step) wakes it by table but
    not by columns (kpis/wake.py)."""
    assert not evaluate_incremental(con, registry, datetime(2024, 7, 10, 12, 0)).errors

    def touch(run_id: int, sql: str) -> None:
        con.execute(sql)
        con.execute("INSERT INTO etl_dirty VALUES (?, 'mis', 'mis_app', DATE '2024-07-10')", [run_id])

    touch(2, "UPDATE mis_app SET current_step = '03' WHERE app_no = 'A3'")
    assert evaluate_incremental(con, registry, datetime(2024, 7, 10, 12, 1)).kpis == 1  # no fingerprint yet
    touch(3, "UPDATE mis_app SET current_step = '04' WHERE app_no = 'A3'")
    assert evaluate_incremental(con, registry, datetime(2024, 7, 10, 12, 2)).kpis == 0  # same columns read
    touch(4, "UPDATE mis_app SET org_no = 'S2' WHERE app_no = 'A3'")
    assert evaluate_incremental(con, registry, datetime(2024, 7, 10, 12, 3)).kpis == 1
    assert value(con, "daily", "2024-07-10") is None or value(con, "daily", "2024-07-10") == 0
    assert value(con, "daily", "2024-07-10", org="S2") == 1
    # a sweep evaluates everything and forgets the fingerprints: the next pass evaluates again
    assert evaluate_incremental(con, registry, datetime(2024, 7, 10, 13, 0)).kpis == 1
    touch(5, "UPDATE mis_app SET current_step = '05' WHERE app_no = 'A3'")
    assert evaluate_incremental(con, registry, datetime(2024, 7, 10, 13, 1)).kpis == 1


def test_a_pass_skips_kpis_by_the_columns_the_etl_changed(con, registry):
    """The ETL records per dirty table and run the columns its merged rows changed ('' = the
    record was kept, '*' = rows were added): newconn.applications does not read current_step."""
    con.execute("CREATE TABLE etl_changed (run_id BIGINT, source VARCHAR, table_name VARCHAR, "
                "column_name VARCHAR)")
    assert not evaluate_incremental(con, registry, datetime(2024, 7, 10, 12, 0)).errors

    def merged(run_id: int, *marks: str) -> None:
        con.execute("INSERT INTO etl_dirty VALUES (?, 'mis', 'mis_app', DATE '2024-07-10')", [run_id])
        for m in marks:
            con.execute("INSERT INTO etl_changed VALUES (?, 'mis', 'mis_app', ?)", [run_id, m])

    con.execute("UPDATE mis_app SET current_step = '03' WHERE app_no = 'A3'")
    merged(2, "", "current_step", "updated_at")
    assert evaluate_incremental(con, registry, datetime(2024, 7, 10, 12, 1)).kpis == 0
    con.execute("UPDATE mis_app SET current_step = '04' WHERE app_no = 'A3'")
    merged(3, "", "current_step")
    con.execute("UPDATE mis_app SET org_no = 'S2' WHERE app_no = 'A3'")
    merged(4, "", "org_no")             # two runs since the last pass: one changed a column read
    assert evaluate_incremental(con, registry, datetime(2024, 7, 10, 12, 2)).kpis == 1
    assert value(con, "daily", "2024-07-10", org="S2") == 1
    insert(con, 5, app("T1", "2024-07-10 12:02:30", org="S2"))
    merged(5, "", "*")                  # a new row
    assert evaluate_incremental(con, registry, datetime(2024, 7, 10, 12, 3)).kpis == 1
    assert value(con, "daily", "2024-07-10", org="S2") == 2
    # not recorded (an ETL before etl_changed): the fingerprint of the small table decides
    con.execute("UPDATE mis_app SET org_no = 'S1' WHERE app_no = 'T1'")
    merged(6)
    assert evaluate_incremental(con, registry, datetime(2024, 7, 10, 12, 4)).kpis == 1
    assert value(con, "daily", "2024-07-10", org="S2") == 1


def test_columns_named_through_a_star_of_the_prelude():
    """k_wo passes every work-order column on (w.*); order.total reads those it names, by hand
    from its definition and k_wo's: not the reply or close times, nor the urgency."""
    from kpis.dependencies import columns_named
    full = load_registry()
    cols = columns_named(full.get("order.total"), "cs_work_order")
    assert cols is not None and {"accept_time", "org_no", "status_code",
                                 "merged_into_wo_no", "is_deleted", "cons_no", "tg_no"} <= cols
    # every type of request counts: the type is read by k_wo's vcomp, which order.total does
    # not name
    assert not cols & {"reply_time", "close_time", "urgency", "updated_at", "busi_type_code"}
    assert columns_named(full.get(KPI), "mis_org") is None
    # k_bill names its bill columns one by one (b.invoice_time, ...): sales read the energy and
    # the billing month, not the invoice; the e-invoice rate reads the invoice type
    sales = columns_named(full.get("billing.sales_kwh"), "mis_bill")
    assert {"t_pq", "rcvbl_ym", "amt_type", "is_deleted", "cons_no"} <= sales
    assert not sales & {"invoice_time", "invoice_type", "due_date", "rcvbl_amt"}
    assert "invoice_type" in columns_named(full.get("billing.einvoice_rate"), "mis_bill")


def test_an_item_of_the_prelude_counts_only_for_a_kpi_that_names_it():
    """By hand from k_wo (kpis/sql/prelude.sql): the visit satisfaction KPIs read its attribution
    (org, city and province orgs, the customer's grid, the 台区's grid), its deletion and merge
    flags and its request type, not `vwo` (status_code) nor `vcomp` (complaint_valid) nor the
    customer columns it carries (cust_*): a past order's status change does not reopen the days
    of its visits. A KPI that names vwo reads status_code."""
    from kpis.dependencies import columns_named
    full = load_registry()
    sat = columns_named(full.get("order.callback_satisfaction"), "cs_work_order")
    assert sat == {"wo_no", "is_deleted", "merged_into_wo_no", "busi_type_code", "org_no",
                   "city_org_no", "prov_org_no", "cons_no", "tg_no"}
    assert "status_code" in columns_named(full.get("order.total"), "cs_work_order")
    assert "complaint_valid" in columns_named(full.get("order.complaint_rate_10k"), "cs_work_order")
    # the customers k_wo joins: their grid and deletion (the attribution), not their dates
    cust = columns_named(full.get("order.callback_satisfaction"), "mis_customer")
    assert {"cons_no", "is_deleted", "grid_no"} <= cust
    assert not cust & {"build_date", "cancel_date", "sensitive_flag", "status_code"}


def test_an_aliased_item_goes_only_when_nothing_names_it():
    from kpis.dependencies import _without_passed_columns as strip
    sql = "select b.k, upper(b.w) as w2, cast(b.z as int) as z2, b.y + 1 as y2 from b where y2 > 0"
    out = strip(sql, named={"k", "z2"})
    assert "upper(b.w)" not in out                  # w2 named by nobody
    assert "cast(b.z as int) as z2" in out          # named by the reader
    assert "b.y + 1 as y2" in out                   # a filter of the statement reads it
    assert strip(sql) == strip(sql, named=None)
    assert "upper(b.w) as w2" in strip(sql)         # without the reader's words, kept


def test_only_plain_items_of_the_outer_select_pass_through():
    from kpis.dependencies import _without_passed_columns as strip
    sql = ("create or replace table t as with x as (select a.p, a.q from a) "
           "select b.k, b.v, upper(b.w) as w2, b.z as z2, x.p from b join x on x.p = b.j "
           "where b.f = 1 group by b.k, b.v, b.w, b.z, x.p, b.j, b.f")
    out = strip(sql)
    outer = out.split(" from b ")[0].split("from a)")[1]
    assert "b.k" not in outer and "b.v" not in outer and "x.p" not in outer
    assert "upper(b.w) as w2" in outer and "b.z as z2" in outer
    assert "select a.p, a.q from a" in out and "group by b.k, b.v" in out and "b.f = 1" in out
    assert strip("select distinct b.k, b.v from b") == "select distinct b.k, b.v from b"


def test_columns_a_kpi_reads_of_a_table():
    """By hand from the definitions: the terminal stocks do not read the heartbeat column, the
    online rate does; a table read through k_wo (w.*) or the org tree may count whole."""
    from kpis.dependencies import columns_read
    full = load_registry()
    tq = columns_read(full.get("customer.tq_relation_consistency_rate"), "meter_terminal")
    assert tq is not None and "last_online_time" not in tq and {"terminal_id", "tg_no"} <= tq
    assert "last_online_time" in columns_read(full.get("metering.terminal_online_rate"), "meter_terminal")
    assert columns_read(full.get("order.total"), "cs_work_order") is None
    assert columns_read(full.get(KPI), "mis_org") is None
    assert columns_read(full.get(KPI), "mis_app") == {"app_no", "busi_type_code", "org_no", "grid_no",
                                                      "accept_time", "is_deleted"}


def test_a_column_qualified_by_another_tables_alias_is_not_the_tables():
    """A customer's closure changes its status_code and cancel_date. k_wo reads the customer
    for attribution and writes `w.status_code <> '09'` of the work order (w: cs_work_order):
    by words alone every work-order KPI read the customer's status. By hand from the texts:
    order.total names no customer status; order.repair names `w.status_code` of k_wo, which
    passes it on from `w.*` (cs_work_order), not from `c.status_code as cust_status_code`;
    customer.active_total reads it through is_active."""
    from kpis.dependencies import _columns_in, _passed_from, columns_named
    full = load_registry()
    for kid in ("order.total", "order.repair", "order.overdue_open"):
        assert "status_code" not in columns_named(full.get(kid), "mis_customer"), kid
        assert "status_code" in columns_named(full.get(kid), "cs_work_order"), kid
    assert {"status_code", "cancel_date"} <= columns_named(full.get("customer.active_total"),
                                                           "mis_customer")
    assert _passed_from("k_wo", "status_code") == {"cs_work_order"}
    assert _passed_from("k_wo", "cust_status_code") is None      # an expression's name: unknown
    cols = {"status_code", "grid_no", "org_no"}
    sql = ("select w.status_code, c.grid_no, org_no from cs_work_order w "
           "left join mis_customer c on c.cons_no = w.cons_no where x.status_code = '1'")
    # w is another contract table; c is the table; org_no and x (unknown) count
    assert _columns_in(sql, "mis_customer", cols) == {"grid_no", "org_no", "status_code"}
    assert _columns_in(sql.replace("x.status_code", "w.grid_no"), "mis_customer", cols) == {
        "grid_no", "org_no"}
    # an alias naming the table in one place and another table elsewhere counts
    assert _columns_in(sql.replace("x.status_code", "w.grid_no") + " union select w.status_code "
                       "from mis_customer w", "mis_customer", cols) == {"grid_no", "org_no", "status_code"}


def test_only_small_tables_are_fingerprinted(con, monkeypatch):
    """A fingerprint scans the whole table each pass: tables above FP_MAX_ROWS wake by table."""
    from kpis import wake
    assert wake.worth_a_scan(con, {"mis_app", "mis_grid"}) == {"mis_app", "mis_grid"}
    monkeypatch.setattr(wake, "FP_MAX_ROWS", 3)                          # mis_app holds 4 rows
    assert wake.worth_a_scan(con, {"mis_app", "mis_grid"}) == {"mis_grid"}      # 3 rows
    assert not evaluate_incremental(con, registry_of(KPI), datetime(2024, 7, 10, 12, 0)).errors
    for run_id, step in ((2, "03"), (3, "04")):
        con.execute(f"UPDATE mis_app SET current_step = '{step}' WHERE app_no = 'A3'")
        con.execute("INSERT INTO etl_dirty VALUES (?, 'mis', 'mis_app', DATE '2024-07-10')", [run_id])
        assert evaluate_incremental(con, registry_of(KPI), datetime(2024, 7, 10, 12, run_id)).kpis == 1


# --- the worker's passes on simulated data equal a direct evaluation, bit for bit -------------

LIVE_START = date(2026, 5, 25)     # 10 days: May closed, June runs to 06-04
LIVE_DAYS = 10
VALUE_COLUMNS = ("org_no, org_level, period_end, value, numerator, denominator, baseline, status, "
                 "is_final, sample")


@contextmanager
def _backfilled(settings, registry: Registry, clock, stamp: dict):
    """(warehouse, connection) after the first ETL pass and the worker's backfill, stamped (and
    evaluated) a second before the sources' clock."""
    from etl.pipeline import run_pass
    from etl.warehouse import Warehouse

    with Warehouse(settings.warehouse_path, threads=2, memory_limit="2GB") as wh:
        assert run_pass(settings, wh).ok
        con = wh.cursor()
        stamp["at"] = clock() - timedelta(seconds=1)
        assert not evaluate_incremental(con, registry, stamp["at"]).errors
        yield wh, con


def _pass_plan(con: duckdb.DuckDBPyConnection, registry: Registry, at: datetime,
               as_of: datetime) -> list[tuple]:
    """The (KPI, periods) a pass stored rows of, read back from its computed_at (an ordinary
    pass writes the rows of changed units only: kpis/fact_diff.py)."""
    rows = con.execute("SELECT DISTINCT kpi_id, grain, period_start FROM kpi_value "
                       "WHERE computed_at = $at ORDER BY ALL", {"at": at}).fetchall()
    plan: dict[str, list[Period]] = {}
    for kid, grain, ws in rows:
        if grain == "monthly":
            p = month(ws.year, ws.month)
        elif grain == "daily":
            p = day(ws.date())
        elif grain == "hourly":
            p = Period("hourly", ws, ws + timedelta(hours=1))
        else:
            p = Period(grain, as_of, as_of)
        plan.setdefault(kid, []).append(p)
    return [(registry.get(kid), ps) for kid, ps in plan.items()]


def _stored(con: duckdb.DuckDBPyConnection, evaluated: list[tuple[str, Period]]) -> list[tuple]:
    """The stored rows of these (KPI, period) pairs, as the bit-for-bit test compares them."""
    keys = sorted({(kid, p.grain, p.ws) for kid, p in evaluated})
    return con.execute(f"""SELECT v.kpi_id, v.grain, v.period_start, {VALUE_COLUMNS} FROM kpi_value v
                           SEMI JOIN (SELECT unnest($k) AS kpi_id, unnest($g) AS grain,
                                             unnest($s) AS period_start) w
                                ON w.kpi_id = v.kpi_id AND w.grain = v.grain
                               AND w.period_start = v.period_start
                           ORDER BY ALL""",
                       {"k": [k[0] for k in keys], "g": [k[1] for k in keys],
                        "s": [k[2] for k in keys]}).fetchall()


def change_collection(root, at: datetime, retried: date, corrected: date | None) -> None:
    """Collection readings edited at the meter source: a reading of `retried` that had failed is
    collected late (a retry at `at`, after 09:00 of the next day: its day's success rate stays
    as it was), and, when given, a reading of `corrected` that counted is corrected to a
    failure (its day's rate falls)."""
    import sqlite3
    from contextlib import closing

    stamp = at.strftime("%Y-%m-%d %H:%M:%S")
    scope = ("data_date = ? AND meter_asset_no IN (SELECT meter_asset_no FROM meter_coll_obj "
             "WHERE is_deleted = 0 AND coll_flag = 1) AND is_deleted = 0")
    with closing(sqlite3.connect(root / "source_meter.db", isolation_level=None)) as db:
        meter = db.execute(f"SELECT min(meter_asset_no) FROM meter_collection_daily WHERE {scope} "
                           "AND coll_status IN ('02', '03')", [str(retried)]).fetchone()[0]
        assert meter is not None, f"no failed reading on {retried}"
        db.execute("UPDATE meter_collection_daily SET coll_status = '01', success_time = ?, "
                   "try_count = try_count + 1, data_src = '02', updated_at = ? "
                   "WHERE meter_asset_no = ? AND data_date = ?", [stamp, stamp, meter, str(retried)])
        if corrected is None:
            return
        meter = db.execute(f"SELECT min(meter_asset_no) FROM meter_collection_daily WHERE {scope} "
                           "AND coll_status = '01' AND success_time IS NOT NULL",
                           [str(corrected)]).fetchone()[0]
        db.execute("UPDATE meter_collection_daily SET coll_status = '02', success_time = NULL, "
                   "fail_reason = '02', updated_at = ? WHERE meter_asset_no = ? AND data_date = ?",
                   [stamp, meter, str(corrected)])


def test_worker_passes_equal_direct_evaluation_bit_for_bit(tmp_path, monkeypatch) -> None:
    """Backfill, then ETL passes after simulated live minutes, with random edits of the kept
    prelude tables' inputs besides (test_prelude_follow): every value a pass stores equals the
    direct evaluation of the same KPIs and periods (prelude built whole in a connection of its
    own, months read from the facts, baselines from the same stored history) in value,
    numerator, denominator, baseline, status, is_final and sample. Covers the kept on-demand
    tables, the day store and the baseline statements.

    Passes at +3 min (a new hour: a sweep), +6 and +8 min (ordinary: work orders and repair
    tasks edited, whose dates the ETL marks dirty; the second skips the KPIs that terminal
    heartbeats wake by table only, kpis/wake.py) and +16 min (a sweep again, with customers,
    台区 and metering points edited too: a joined row's change reaches stored days at the sweep,
    kpis/day_store.py, so an ordinary pass may still show the day as stored).

    The ordinary passes also see collection readings of settled June days edited: a late retry
    (+6 min, on 06-01), which the row images show leaves the day's collection rates as stored
    (kpis/images.py: the day is not read, and its stored values still equal the direct
    evaluation), and a late retry beside a correction (+8 min, on 06-01 and 06-02), which
    changes 06-02's rates: that day is evaluated again (brought forward from its stored rows by
    the changed readings, kpis/carry.py, as yesterday's unsettled day is in every ordinary pass
    here)."""
    pytest.importorskip("simulator")
    from simulator import live, state

    from etl.pipeline import run_pass
    from etl.settings import SOURCE_NAMES
    from kpis import evaluate, wake
    from kpis.batch import compute_plan
    from kpis.prelude import apply_prelude
    from tests.kpis.harness import simulated_small
    from tests.kpis.test_prelude_follow import change_sources

    settings = simulated_small(tmp_path, LIVE_START, LIVE_DAYS)
    urls = {s: settings.source_url(s) for s in SOURCE_NAMES}
    side = tmp_path / "side"
    registry = load_registry()
    rng = random.Random(7)

    def clock() -> datetime:
        return datetime(2000, 1, 1) + timedelta(seconds=state.load(side).clock)

    stamp = {"at": None}
    monkeypatch.setattr(evaluate, "local_now", lambda: stamp["at"])
    skipped: list[set[str]] = []
    by_record: list[set[str]] = []
    unchanged, untouched = wake.unchanged, wake.untouched

    def spy_record(con, candidates, since):
        same = untouched(con, candidates, since)
        by_record.append(set(same))
        return same

    def spy(con, candidates):
        same, now = unchanged(con, candidates)
        skipped.append(set(same) | by_record[-1])
        return same, now

    monkeypatch.setattr(wake, "untouched", spy_record)
    monkeypatch.setattr(wake, "unchanged", spy)
    with _backfilled(settings, registry, clock, stamp) as (wh, con):
        compared = compared_skipped = 0
        for step, seconds in enumerate((180, 180, 120, 480)):
            live.step(urls, seconds, side=side)
            change_sources(tmp_path, rng, clock(), joined=step == 3)
            if step in (1, 2):
                change_collection(tmp_path, clock(), date(2026, 6, 1),
                                  date(2026, 6, 2) if step == 2 else None)
            assert run_pass(settings, wh).ok
            as_of = clock()
            stamp["at"] = as_of
            summary = evaluate_incremental(con, registry, as_of)
            assert not summary.errors and summary.kpis > 0
            # the pass says how it brought its kept tables up to date: the edited work orders
            # re-derived in k_wo, the meters, terminals and points (+16 min) in k_settle_mp
            assert summary.kept.get("k_wo") == "delta", (step, summary.kept)
            if step == 3:
                assert summary.kept.get("k_settle_mp") == "delta", summary.kept
            collection = {p.ws.date() for kid, p in summary.evaluated
                          if kid == "metering.daily_collect_success_rate" and p.grain == "daily"}
            if step in (1, 2):
                rates = ("metering.collect_success_rate_special", "metering.daily_collect_success_rate")
                assert {(kid, date(2026, 6, 1)) for kid in rates} <= set(summary.as_stored)
                assert date(2026, 6, 1) not in collection
                assert (date(2026, 6, 2) in collection) == (step == 2), collection
                # the days left as stored hold what a direct evaluation gives now
                kept_plan = [(registry.get(kid), [day(d)]) for kid, d in summary.as_stored]
                ref = wh.cursor()
                apply_prelude(ref, temp=True)
                errors: dict[str, str] = {}
                evaluate.apply_baselines(ref, compute_plan(ref, kept_plan, as_of, errors))
                again = ref.execute(f"SELECT kpi_id, grain, period_start, {VALUE_COLUMNS} FROM _result "
                                    "ORDER BY ALL").fetchall()
                ref.close()
                kept = _stored(con, [(k.id, ps[0]) for k, ps in kept_plan])
                assert errors == {} and again and kept == again
            plan_of: dict[str, list] = {}
            for kid, p in summary.evaluated:
                plan_of.setdefault(kid, []).append(p)
            plan = [(registry.get(kid), ps) for kid, ps in plan_of.items()]
            assert sum(len(ps) for _, ps in plan) == summary.periods
            # the rows written are some of them (the units whose facts changed, all at a sweep)
            assert {(r[0], r[1], r[2]) for r in con.execute(
                "SELECT DISTINCT kpi_id, grain, period_start FROM kpi_value WHERE computed_at = $at",
                {"at": as_of}).fetchall()} <= {(kid, p.grain, p.ws) for kid, p in summary.evaluated}
            ref = wh.cursor()     # its own temp prelude: the kept tables are not touched
            apply_prelude(ref, temp=True)
            errors: dict[str, str] = {}
            done = compute_plan(ref, plan, as_of, errors)
            assert errors == {}
            ref.execute("CREATE TEMP TABLE _computed AS SELECT * FROM _result")
            evaluate.apply_baselines(ref, done)
            direct = ref.execute(f"SELECT kpi_id, grain, period_start, {VALUE_COLUMNS} FROM _result "
                                 "ORDER BY ALL").fetchall()
            # the baselines against the statements they replaced, written out below
            ref.execute("CREATE OR REPLACE TEMP TABLE _result AS SELECT * FROM _computed")
            with monkeypatch.context() as m:
                m.setattr(evaluate, "_offset_baselines", _reference_offset_baselines)
                evaluate.apply_baselines(ref, done)
            _reference_status(ref, [k for k, _ in done])
            assert ref.execute(f"SELECT kpi_id, grain, period_start, {VALUE_COLUMNS} FROM _result "
                               "ORDER BY ALL").fetchall() == direct
            assert any(r[9] is not None for r in direct)      # some baselines were found
            ref.close()
            # every stored row of the pass's KPIs and periods, the ones it left as they were too
            stored = _stored(con, summary.evaluated)
            diff = [(a, b) for a, b in zip(stored, direct) if a != b]
            assert len(stored) == len(direct) and diff == [], (step, len(stored), len(direct), diff[:5])
            written = con.execute("SELECT COUNT(*) FROM kpi_value WHERE computed_at = $at",
                                  {"at": as_of}).fetchone()[0]
            # the passes after the new hour's sweep (ordinary at +6 and +8 min, a sweep within the
            # hour at +16) left the rows of units whose facts did not change as they were, and
            # those still equal the direct evaluation (kpis/fact_diff.py); the new hour's sweep
            # (+3 min) wrote every row
            assert (0 < written < len(stored)) if step else written == len(stored), \
                (step, written, len(stored))
            compared += len(stored)
            # a KPI the pass skipped by columns keeps values that its inputs, as they are now,
            # still give at the as_of they were computed at
            for kid in sorted(skipped[-1]):
                last = con.execute("SELECT MAX(computed_at) FROM kpi_value WHERE kpi_id = $k",
                                   {"k": kid}).fetchone()[0]
                assert last < as_of
                plan = [(k, ps) for k, ps in _pass_plan(con, registry, last, last) if k.id == kid]
                ref = wh.cursor()
                apply_prelude(ref, temp=True)
                evaluate.apply_baselines(ref, compute_plan(ref, plan, last, errors))
                again = ref.execute(f"SELECT kpi_id, grain, period_start, {VALUE_COLUMNS} FROM _result "
                                    "ORDER BY ALL").fetchall()
                ref.close()
                kept = _stored(con, [(kid, p) for _, ps in plan for p in ps])
                assert errors == {} and kept == again and kept, kid
                compared_skipped += len(kept)
        assert compared > 10_000
        assert compared_skipped > 0, "no KPI was skipped by columns (meter_terminal heartbeats)"
        # the ETL's record of changed columns skips KPIs of large tables too (work order steps)
        assert any(by_record), "no KPI was skipped by the ETL's record of changed columns"
        con.close()


def _reference_offset_baselines(con, kpis, grains) -> None:
    """kpis.evaluate._offset_baselines as it was before the `need` keys (every stored row of
    the KPIs joined), the reference for the bit-for-bit check above."""
    from kpis.evaluate import _OFFSETS, _ids
    offsets = [(k.id, grain, off, len(offs)) for k in kpis
               for grain, offs in _OFFSETS[k.baseline].items() if grain in grains[k.id]
               for off in offs]
    if not offsets:
        return
    ids = _ids(kpis)
    values = ", ".join(f"('{kid}', '{grain}', INTERVAL '{off}', {n})" for kid, grain, off, n in offsets)
    con.execute(f"""
        UPDATE _result r SET baseline = b.base FROM (
            SELECT r.kpi_id, r.grain, r.org_no, r.period_start,
                   CASE WHEN COUNT(h.value) = MAX(o.n) THEN AVG(h.value ORDER BY o.off) END AS base
            FROM _result r
            JOIN (VALUES {values}) o(kpi_id, grain, off, n) ON o.kpi_id = r.kpi_id AND o.grain = r.grain
            LEFT JOIN (
                SELECT kpi_id, grain, org_no, period_start, value FROM _result WHERE kpi_id IN ({ids})
                UNION ALL
                SELECT v.kpi_id, v.grain, v.org_no, v.period_start, v.value FROM kpi_value v
                WHERE v.kpi_id IN ({ids})
                  AND NOT EXISTS (SELECT 1 FROM _result x WHERE x.kpi_id = v.kpi_id
                                  AND x.grain = v.grain AND x.period_start = v.period_start)
            ) h ON h.kpi_id = r.kpi_id AND h.grain = r.grain AND h.org_no = r.org_no
               AND h.period_start = r.period_start - o.off
            GROUP BY r.kpi_id, r.grain, r.org_no, r.period_start) b
        WHERE r.kpi_id = b.kpi_id AND r.grain = b.grain AND r.org_no = b.org_no
          AND r.period_start = b.period_start""")


def _reference_status(con, kpis) -> None:
    """The status of every row of a relative KPI recomputed (apply_baselines now skips rows
    left without a baseline)."""
    from kpis.compile import is_relative, status_sql
    from kpis.evaluate import _ids, per_kpi
    relative = [k for k in kpis if k.baseline is not None and is_relative(k)]
    status = per_kpi("kpi_id", [k.id for k in relative], [f"({status_sql(k)})" for k in relative])
    con.execute(f"UPDATE _result SET status = {status} WHERE kpi_id IN ({_ids(relative)})")


def test_an_ordinary_pass_evaluates_the_running_and_previous_hour_a_sweep_every_hour():
    """Today's closed hours are closed periods: a late row for 09:00 reaches the stored hour at
    the next sweep (at most SWEEP_EVERY later), as a late row of a closed month does; the running
    hour and the one before it (an ETL lag) are fresh every pass. By hand: calls at 09:10,
    13:20 and 14:05 (C1, inbound), then a late 09:30 and a new 14:31."""
    kid = "call.inbound_calls"
    registry = registry_of(kid)
    c = duckdb.connect()

    def call(no: str, at: str) -> dict:
        return {"call_id": no, "call_direction": "01", "org_no": "C1", "arrive_time": at,
                "call_result": "01"}

    load_inputs(c, {"calendar": "2024-06-01..2024-07-31", "inputs": {"cs_call": [
        call("K1", "2024-07-10 09:10:00"), call("K2", "2024-07-10 13:20:00"),
        call("K3", "2024-07-10 14:05:00")]}})
    c.execute("CREATE TABLE etl_dirty (run_id BIGINT, source VARCHAR, table_name VARCHAR, "
              "business_date DATE)")
    c.execute("INSERT INTO etl_dirty VALUES (1, 'cs', 'cs_call', DATE '2024-07-10')")

    def hour(h: int) -> float | None:
        row = c.execute("SELECT value FROM kpi_value WHERE kpi_id = ? AND grain = 'hourly' AND "
                        "org_no = 'C1' AND period_start = ?", [kid, datetime(2024, 7, 10, h)]).fetchone()
        return None if row is None else row[0]

    assert not evaluate_incremental(c, registry, datetime(2024, 7, 10, 14, 30)).errors
    assert (hour(9), hour(13), hour(14)) == (1, 1, 1)
    for no, at in (("K4", "2024-07-10 09:30:00"), ("K5", "2024-07-10 14:31:00")):
        c.execute("INSERT INTO cs_call (call_id, call_direction, org_no, arrive_time, call_result, "
                  "is_deleted, created_at, updated_at) VALUES (?, '01', 'C1', ?, '01', 0, ?, ?)",
                  [no, at, at, at])
    c.execute("INSERT INTO etl_dirty VALUES (2, 'cs', 'cs_call', DATE '2024-07-10')")
    evaluated = evaluate_incremental(c, registry, datetime(2024, 7, 10, 14, 32))
    # today, this month, hours 13 and 14
    assert evaluated.periods == 4
    assert (hour(9), hour(13), hour(14)) == (1, 1, 2)
    swept = evaluate_incremental(c, registry, datetime(2024, 7, 10, 14, 40))   # SWEEP_EVERY
    assert swept.periods > 4 and (hour(9), hour(13), hour(14)) == (2, 1, 2)
    c.close()


def test_a_sweep_restates_the_closed_days_a_restated_by_names(tmp_path, monkeypatch) -> None:
    """A repair task moved to another work order takes its start from that order's acceptance
    (repair.arrival_minutes_avg_*): a day of the closed month, which none of the task's own dirty
    dates names. restated_by names it; the day store asked it only of the months a pass
    evaluates, so the closed day kept its old mean for good. After live minutes with random
    edits (test_prelude_follow.change_sources: tasks relinked each step) and a sweep, every stored
    day and month of the KPIs with restated_by that read no register (whose updates count from
    their own day, docs/decisions.md session 31) equals a direct evaluation now. The on-time
    arrival rates (resolved-or-due, settling when none pending) have the same gap: 27 rows
    differed before they named their changed tasks' days (session 33)."""
    pytest.importorskip("simulator")
    from simulator import live, state

    from etl.pipeline import run_pass
    from etl.rules import ARCHIVES
    from etl.settings import SOURCE_NAMES
    from kpis import evaluate
    from kpis.batch import compute_plan
    from kpis.dependencies import tables_read
    from kpis.prelude import apply_prelude
    from tests.kpis.harness import simulated_small
    from tests.kpis.test_prelude_follow import change_sources

    settings = simulated_small(tmp_path, LIVE_START, LIVE_DAYS)
    urls = {s: settings.source_url(s) for s in SOURCE_NAMES}
    side = tmp_path / "side"
    registry = load_registry()
    kpis = [k for k in registry.kpis.values() if k.restated_by and not tables_read(k) & ARCHIVES]
    # the mean arrival times, and the on-time arrival rates, which settle when none pending too
    assert {"repair.arrival_minutes_avg_urban", "repair.arrival_minutes_avg_rural",
            "repair.arrival_ontime_rate", "repair.arrival_ontime_rate_urban"} <= {k.id for k in kpis}
    rng = random.Random(7)

    def clock() -> datetime:
        return datetime(2000, 1, 1) + timedelta(seconds=state.load(side).clock)

    stamp = {"at": None}
    monkeypatch.setattr(evaluate, "local_now", lambda: stamp["at"])
    with _backfilled(settings, registry, clock, stamp) as (wh, con):
        sweeps = 0
        for seconds in (180, 180, 120, 480):      # +16 min: a sweep within the hour
            live.step(urls, seconds, side=side)
            change_sources(tmp_path, rng, clock(), joined=False)
            assert run_pass(settings, wh).ok
            as_of = stamp["at"] = clock()
            before = con.execute("SELECT last_sweep_at FROM kpi_eval_state").fetchone()[0]
            assert not evaluate_incremental(con, registry, as_of).errors
            sweeps += con.execute("SELECT last_sweep_at FROM kpi_eval_state").fetchone()[0] != before
        assert sweeps >= 2 and as_of.date() == date(2026, 6, 4)
        rows = con.execute("SELECT DISTINCT kpi_id, grain, period_start FROM kpi_value "
                           "WHERE list_contains($k, kpi_id) AND grain IN ('daily', 'monthly') "
                           "AND period_start >= '2026-05-01' AND period_start < '2026-06-04'",
                           {"k": [k.id for k in kpis]}).fetchall()
        plan: dict[str, list[Period]] = {}
        for kid, grain, start in rows:
            plan.setdefault(kid, []).append(day(start.date()) if grain == "daily"
                                            else month(start.year, start.month))
        ref = wh.cursor()
        apply_prelude(ref, temp=True)
        errors: dict[str, str] = {}
        compute_plan(ref, [(registry.get(kid), ps) for kid, ps in plan.items()], as_of, errors)
        assert errors == {}
        compared, differ = ref.execute("""
            SELECT COUNT(*), COUNT(*) FILTER (WHERE v.value IS DISTINCT FROM r.value
                                               OR v.numerator IS DISTINCT FROM r.numerator
                                               OR v.denominator IS DISTINCT FROM r.denominator)
            FROM _result r JOIN kpi_value v USING (kpi_id, grain, period_start, org_no)""").fetchone()
        ref.close()
        assert compared > 1000 and differ == 0, (compared, differ)
        con.close()
