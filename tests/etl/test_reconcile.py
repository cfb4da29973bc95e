"""Nightly reconciliation finds rows the window missed and rows gone from the source."""
from __future__ import annotations

import sqlite3
from datetime import date

from etl.pipeline import run_pass
from etl.reconcile import reconcile
from tests.etl.sources_kit import U0, U1, insert


def wo(wo_no, upd, accept="2029-12-31 08:00:00", **kw):
    # business day 2029-12-31: inside the last 7 days of the sources' clock (2030-01-01)
    return {"wo_no": wo_no, "accept_time": accept, "created_at": U0, "updated_at": upd,
            "busi_type_code": "01", "accept_channel": "01", "status_code": "01", **kw}


def test_reconcile_reloads_a_row_stamped_behind_the_window_and_flags_hard_deletes(env, settings, wh):
    insert(env, {"cs_work_order": [wo("W1", U1), wo("W2", U1)]})
    assert run_pass(settings, wh).ok
    # committed late with an old stamp (09:00 high, 10-minute overlap): the window never sees it
    insert(env, {"cs_work_order": [wo("W3", "2030-01-01 07:00:00")]})
    con = sqlite3.connect(env["SOURCE_CS_URL"].removeprefix("sqlite:///"))
    con.execute("DELETE FROM cs_work_order WHERE wo_no = 'W2'")          # a hard delete
    con.commit()
    con.close()
    assert run_pass(settings, wh).ok
    cur = wh.cursor()
    assert cur.execute("SELECT count(*) FROM cs_work_order WHERE wo_no = 'W3'").fetchone()[0] == 0
    results = {r.table_name: r for r in reconcile(settings, wh, days=7)}
    wo_r = results["cs_work_order"]
    assert wo_r.error is None and wo_r.rows_merged == 1 and wo_r.missing_at_source == 1
    assert cur.execute("SELECT wo_no FROM cs_work_order ORDER BY 1").fetchall() == [("W1",), ("W2",), ("W3",)]
    assert cur.execute("SELECT row_key FROM etl_dq WHERE rule = 'missing_at_source'").fetchall() == [("W2",)]
    assert all(not r.days_differing or r.table_name == "cs_work_order" for r in results.values())


def test_reconcile_compares_by_business_day_not_creation_day(env, settings, wh):
    insert(env, {"cs_work_order": [wo("W1", U1)]})
    assert run_pass(settings, wh).ok
    # accepted yesterday, but its record was created a month ago (a reopened order) and its last
    # change was stamped behind the window: only a comparison by business day sees it
    insert(env, {"cs_work_order": [wo("W4", "2030-01-01 07:00:00", accept="2029-12-31 10:00:00",
                                      created_at="2029-12-01 08:00:00")]})
    # and an order of an old business day created yesterday is outside the 7 days compared
    insert(env, {"cs_work_order": [wo("W5", "2030-01-01 07:00:00", accept="2029-11-01 10:00:00",
                                      created_at="2029-12-31 08:00:00")]})
    assert run_pass(settings, wh).ok
    results = {r.table_name: r for r in reconcile(settings, wh, days=7)}
    assert results["cs_work_order"].days_differing == [date(2029, 12, 31)]
    assert results["cs_work_order"].rows_merged == 1
    cur = wh.cursor()
    assert cur.execute("SELECT wo_no FROM cs_work_order ORDER BY 1").fetchall() == [("W1",), ("W4",)]
    dirty = cur.execute("SELECT DISTINCT business_date::VARCHAR FROM etl_dirty WHERE table_name = 'cs_work_order' "
                        "AND run_id = (SELECT max(run_id) FROM etl_dirty)").fetchall()
    assert ("2029-12-31",) in dirty
