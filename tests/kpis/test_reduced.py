"""Reduced facts (kpis/spec.py `reduced`) against the facts they stand for, on an archive built to
reach every branch of the groupings (kpis/sql/shared.sql k_cust_groups, k_settle_groups, and
customer.archive_completeness_rate's own): customers built before, between and after the
periods' ends, or without a build date (created_at stands in); closed before, between and after
them, or closed without a date (status 04); deleted rows; unknown codes, orgs, grids and 台区;
capacities on the 315 kVA line; blank text fields; settlement points with and without running,
smart or collected meters and terminals in their own 台区 or another. The simulator's archive
has no customer built during its span, so it cannot test the clamping of late build dates.

The facts are the definition (one row per customer and period, what detail pages list); the
engine sums the reduced facts. Both, summed by period, org and grid, must agree exactly."""
from __future__ import annotations

import random
from datetime import date, datetime, timedelta

import duckdb
import pandas as pd
import pytest

from etl.schema import ods_statements
from kpis.batch import fact_columns, load_periods
from kpis.periods import day, month
from kpis.prelude import apply_prelude
from kpis.registry import load_registry

D0 = date(2026, 3, 10)     # the periods' days run from D0 to D0 + 9


def _archive(con: duckdb.DuckDBPyConnection, n: int = 600, seed: int = 7) -> None:
    rnd = random.Random(seed)
    con.execute("INSERT INTO mis_code (code_type, code_value, code_name, parent_type, parent_value, "
                "created_at, updated_at, is_deleted) VALUES "
                "('ELEC_TYPE', '101', 'a', 'CUST_CLASS', '1', now(), now(), 0), "
                "('ELEC_TYPE', '201', 'b', 'CUST_CLASS', '2', now(), now(), 0), "
                "('ELEC_TYPE', '301', 'c', 'CUST_CLASS', '3', now(), now(), 0), "
                "('ELEC_TYPE', '401', 'd', 'CUST_CLASS', '4', now(), now(), 0), "
                "('ELEC_TYPE', '501', 'e', 'CUST_CLASS', '5', now(), now(), 0), "
                "('ELEC_TYPE', '601', 'f', 'CUST_CLASS', NULL, now(), now(), 0), "
                "('ELEC_TYPE', '701', 'g', 'CUST_CLASS', '2', now(), now(), 1), "
                "('VOLT', 'AC02202', 'h', NULL, NULL, now(), now(), 0)")
    # the org, grid and 台区 look-ups of the archive completeness test (O2 and G3 deleted)
    con.execute("INSERT INTO mis_org (org_no, org_name, org_type, status_code, created_at, updated_at, "
                "is_deleted) VALUES ('O1', 'a', '05', '01', now(), now(), 0), "
                "('O2', 'b', '05', '01', now(), now(), 1)")
    con.execute("INSERT INTO mis_grid (grid_no, grid_name, org_no, status_code, created_at, updated_at, "
                "is_deleted) VALUES ('G1', 'a', 'O1', '01', now(), now(), 0), "
                "('G2', 'b', 'O1', '01', now(), now(), 0), ('G3', 'c', 'O1', '01', now(), now(), 1)")
    con.execute("INSERT INTO dist_tg (tg_no, tg_name, feeder_no, pub_priv_flag, org_no, urban_rural, "
                "run_status, created_at, updated_at, is_deleted) VALUES "
                "('T1', 'a', 'F1', '01', 'O1', '01', '01', now(), now(), 0), "
                "('T2', 'b', 'F1', '01', 'O1', '01', '01', now(), now(), 1)")

    def a_date(none_share: float) -> date | None:
        if rnd.random() < none_share:
            return None
        return D0 + timedelta(days=rnd.choice([-400, -30, -1, 0, 1, 2, 4, 5, 8, 9, 10, 11, 40]))

    rows = []
    for i in range(n):
        build = a_date(0.15)
        cancel = a_date(0.6)
        status = rnd.choice(["01", "01", "02", "03", "04", "05"])
        rows.append((
            f"C{i:06d}", rnd.choice(["01", "02", "03"]),
            rnd.choice(["101", "201", "301", "401", "501", "601", "701", "999"]), "AC02202",
            rnd.choice([None, 0, 10.5, 314.99, 315, 315.01, 2000]),
            rnd.choice([None, "01", "02", "03"]), rnd.choice([None, "01", "02", "03", "04", "05"]),
            rnd.choice(["O1", "O1", "O1", "O2", "UNKNOWN"]), rnd.choice(["G1", "G1", "G2", "G3", None]),
            status, build, cancel,
            rnd.choice([None, "", "   ", "13800000000"]), rnd.choice([None, "", "\u3000", "101", "101", "101"]),
            rnd.choice([None, "addr", "addr"]), rnd.choice([None, " ", "A01", "A01", "A01"]), rnd.randint(0, 1), rnd.randint(0, 1),
            rnd.randint(0, 1), rnd.randint(0, 1), rnd.choice([None, "01", "02", "03", "04"]),
            rnd.randint(0, 1),
            datetime.combine(D0 + timedelta(days=rnd.choice([-500, -2, 3, 7, 20])), datetime.min.time()),
            1 if rnd.random() < 0.08 else 0))
    con.executemany("""INSERT INTO mis_customer (cons_no, cons_sort_code, elec_type_code, volt_code,
        contract_cap, pay_mode, impt_level, org_no, grid_no, status_code, build_date, cancel_date,
        mobile_no, prc_code, elec_addr, trade_code, mobile_verified_flag, echannel_bind_flag,
        ebill_flag, dg_flag, supply_mode, emergency_power_flag, created_at, updated_at, is_deleted)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now(), ?)""", rows)
    # settlement points (k_settle_mp): none, one or two a customer, some not settling or stopped;
    # each with no, one or two meters, collected (or not) by terminals in its 台区 or another
    tgs = ["T1", "T2", None]
    con.executemany("INSERT INTO meter_terminal (terminal_id, terminal_type, tg_no, org_no, run_status, "
                    "created_at, updated_at, is_deleted) VALUES (?, '01', ?, 'O1', ?, now(), now(), ?)",
                    [(f"R{j}", tgs[j % 3], ["01", "01", "02"][j % 3], int(j == 4)) for j in range(6)])
    points, meters, objs = [], [], []
    for i in range(n):
        for j in range(rnd.choice([0, 1, 1, 2])):
            mp = f"P{i:06d}{j}"
            points.append((mp, f"C{i:06d}", rnd.choice(["01", "01", "02"]), rnd.choice(tgs),
                           rnd.choice(["01", "02", "03"]), int(rnd.random() < 0.05)))
            for m in range(rnd.choice([0, 1, 1, 2])):
                asset = f"{mp}M{m}"
                meters.append((asset, rnd.choice(["26", "28", "29", "10", None]), mp,
                               rnd.choice(["01", "01", "03"]), int(rnd.random() < 0.05)))
                if rnd.random() < 0.8:
                    objs.append((asset, f"R{rnd.randrange(6)}", rnd.choice(tgs), rnd.choice([0, 1, 1]),
                                 rnd.choice(["01", "01", "02"]), int(rnd.random() < 0.05)))
    con.executemany("INSERT INTO mis_metering_point (mp_no, cons_no, mp_attr_code, usage_type_code, tg_no, "
                    "org_no, status_code, created_at, updated_at, is_deleted) "
                    "VALUES (?, ?, ?, '01', ?, 'O1', ?, now(), now(), ?)", points)
    con.executemany("INSERT INTO mis_meter (meter_asset_no, meter_type, mp_no, status_code, created_at, "
                    "updated_at, is_deleted) VALUES (?, ?, ?, ?, now(), now(), ?)", meters)
    con.executemany("INSERT INTO meter_coll_obj (meter_asset_no, terminal_id, tg_no, org_no, coll_flag, "
                    "status_code, created_at, updated_at, is_deleted) "
                    "VALUES (?, ?, ?, 'O1', ?, ?, now(), now(), ?)", objs)


@pytest.fixture(scope="module")
def con():
    c = duckdb.connect()
    for stmt in ods_statements():
        c.execute(stmt)
    _archive(c)
    apply_prelude(c)
    yield c
    c.close()


def _sums(con: duckdb.DuckDBPyConnection, sql: str, cols: list[str]) -> pd.DataFrame:
    sums = ", ".join(f"SUM(CAST({c} AS DECIMAL(38, 9))) AS {c}" for c in cols)
    return con.execute(f"SELECT pid, org_no, grid_no, {sums} FROM ({sql}) AS f "
                       "GROUP BY ALL ORDER BY ALL").df()


@pytest.mark.parametrize("as_of", [datetime.combine(D0 + timedelta(days=5), datetime.min.time())
                                   + timedelta(hours=13),
                                   datetime.combine(D0 + timedelta(days=10), datetime.min.time())])
def test_reduced_facts_equal_the_facts_summed(con, as_of: datetime) -> None:
    registry = load_registry()
    kpis = [k for k in registry.kpis.values() if k.reduced]
    assert len(kpis) >= 18
    periods = sorted({*(day(D0 + timedelta(days=i)) for i in range(10)),
                      month(D0.year, D0.month), month(D0.year, D0.month - 1)})
    periods = [p for p in periods if p.ws <= as_of]
    load_periods(con, "_periods", range(len(periods)), periods, as_of)
    compared = 0
    for k in kpis:
        cols = [c for c in ("num", "den", "sample") if c in fact_columns(con, k)]
        a, b = _sums(con, k.facts, cols), _sums(con, k.reduced, cols)
        assert len(a) > 0 and a.num.sum() > 0, f"{k.id}: the archive gives it no facts counted"
        pd.testing.assert_frame_equal(a, b, check_dtype=False, obj=k.id)
        compared += len(a)
    assert compared > 500
