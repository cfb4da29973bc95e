"""Incremental load semantics on hand-made sources: merge, versions, bad rows, flags, dims."""
from __future__ import annotations

import json
import sqlite3
from datetime import date

from etl.pipeline import run_pass as _run_pass
from etl.settings import load_settings
from etl.warehouse import Warehouse
from tests.etl.sources_kit import U0, U1, build_sources, insert


def run_pass(settings, wh):
    """All four sources: the hand-made ones are small, the pass is what users run."""
    return _run_pass(settings, wh)


def run_two(settings, wh):
    """mis (org tree) and cs only: the tests below touch nothing else."""
    return _run_pass(settings, wh, sources=("mis", "cs"))


def q(wh, sql, params=()):
    return wh.cursor().execute(sql, params).fetchall()


def wo(wo_no, accept="2026-10-15 08:00:00", upd=U0, **kw):
    return {"wo_no": wo_no, "accept_time": accept, "updated_at": upd, "created_at": accept,
            "busi_type_code": "01", "accept_channel": "01", "status_code": "01", **kw}


def test_first_load_then_incremental_change_and_soft_delete(env, settings, wh):
    insert(env, {"cs_work_order": [wo("W1"), wo("W2")]})
    assert run_two(settings, wh).ok
    assert q(wh, "SELECT wo_no, status_code FROM cs_work_order ORDER BY 1") == [("W1", "01"), ("W2", "01")]
    insert(env, {"cs_work_order": [wo("W1", upd=U1, status_code="05"),
                                   wo("W2", upd=U1, is_deleted=1),
                                   wo("W3", upd=U1)]})
    r = run_two(settings, wh)
    assert r.ok
    run = q(wh, "SELECT rows_merged FROM etl_run WHERE run_id = ? AND table_name = 'cs_work_order'", [r.run_id])
    assert run == [(3,)]
    assert q(wh, "SELECT wo_no, status_code, is_deleted FROM cs_work_order ORDER BY 1") == [
        ("W1", "05", 0), ("W2", "01", 1), ("W3", "01", 0)]


def test_stale_reread_never_overwrites_newer_row(env, settings, wh):
    insert(env, {"cs_work_order": [wo("W1", upd=U1, status_code="05")]})
    assert run_two(settings, wh).ok
    # the source now serves an older version (e.g. a replica lagging) and the window is re-read
    insert(env, {"cs_work_order": [wo("W1", upd=U0, status_code="01")]})
    wh.cursor().execute("DELETE FROM etl_watermark")
    assert run_two(settings, wh).ok
    assert q(wh, "SELECT status_code, updated_at::VARCHAR FROM cs_work_order") == [("05", U1)]


def test_one_batch_with_two_versions_keeps_the_newest(tmp_path):
    env = build_sources(tmp_path, loose=("cs_work_order",))
    insert(env, {"cs_work_order": [wo("W1", upd="2030-01-01 10:00:00", status_code="07"),
                                   wo("W1", upd=U1, status_code="03"),
                                   wo("W1", upd=U0, status_code="01")]}, replace=False)
    settings = load_settings(env)
    with Warehouse(settings.warehouse_path, threads=1) as wh:
        run_two(settings, wh)
        assert q(wh, "SELECT wo_no, status_code FROM cs_work_order") == [("W1", "07")]


def test_bad_rows_are_rejected_with_reason_and_released_when_corrected(tmp_path):
    env = build_sources(tmp_path, loose=("cs_work_order",))
    settings = load_settings(env)
    wh = Warehouse(settings.warehouse_path, threads=1)
    insert(env, {"cs_work_order": [
        wo("B1", accept="2026-13-45 99:00:00"),                 # unparseable timestamp
        wo("B2", call_count="abc"),                              # not a number
        wo("B3", call_count=2.5),                                # not an integer
        wo("B4", status_code=None),                              # required value missing
        wo("B5", org_no="X" * 17),                               # longer than VARCHAR(16)
        wo("", ),                                                # empty primary key
        wo("OK")]})
    insert(env, {"mis_bill": [{"bill_id": "BL1", "cons_no": "C", "org_no": "S1", "rcvbl_ym": "202610",
                               "amt_type": "01", "rcvbl_amt": "12,5", "release_date": "2026-10-01",
                               "settle_flag": "01"}]})
    r = run_two(settings, wh)
    assert r.ok
    got = dict(q(wh, "SELECT row_key, reason FROM etl_reject WHERE resolved_at IS NULL"))
    assert got == {"B1": "bad_timestamp:accept_time", "B2": "bad_number:call_count",
                   "B3": "bad_number:call_count", "B4": "missing_required:status_code",
                   "B5": "too_long:org_no", "": "missing_key:wo_no", "BL1": "bad_number:rcvbl_amt"}
    assert q(wh, "SELECT wo_no FROM cs_work_order") == [("OK",)]
    by_reason = json.loads(q(wh, "SELECT rejected_by_reason FROM etl_run WHERE run_id = ? AND "
                                 "table_name = 'cs_work_order'", [r.run_id])[0][0])
    assert by_reason == {"bad_timestamp": 1, "bad_number": 2, "missing_required": 1, "too_long": 1,
                         "missing_key": 1}
    raw = json.loads(q(wh, "SELECT raw FROM etl_reject WHERE row_key = 'B1'")[0][0])
    assert raw["accept_time"] == "2026-13-45 99:00:00"
    # a re-read of the same window does not duplicate the open rejections
    run_two(settings, wh)
    assert q(wh, "SELECT count(*) FROM etl_reject") == [(7,)]
    insert(env, {"cs_work_order": [wo("B1", accept="2026-10-15 07:00:00", upd=U1)]})
    r3 = run_two(settings, wh)
    assert q(wh, "SELECT resolved_run_id FROM etl_reject WHERE row_key = 'B1'") == [(r3.run_id,)]
    assert q(wh, "SELECT accept_time::VARCHAR FROM cs_work_order WHERE wo_no = 'B1'") == [("2026-10-15 07:00:00",)]


def test_business_rule_breaks_are_loaded_and_flagged_then_resolved(env, settings, wh):
    insert(env, {"cs_work_order": [
        wo("D1", busi_type_code="99"),                                         # unknown code
        wo("D2", org_no="NOPE"),                                               # org not in mis_org
        wo("D3", accept="2026-10-15 08:00:00", reply_time="2026-10-15 07:00:00"),  # end before start
        wo("D4", merged_into_wo_no="GHOST"),                                   # orphan parent
        wo("D5", org_no="S1")]})
    insert(env, {"meter_tg_energy_daily": [{"tg_no": "T1", "data_date": "2026-10-14", "org_no": "S1",
                                            "supply_kwh": -5, "calc_round": "1"}]})
    # a reference to another table: P2's customer is unknown, P1's is loaded
    insert(env, {"mis_customer": [{"cons_no": "C1", "org_no": "S1"}]})
    insert(env, {"mis_payment": [{"charge_id": p, "cons_no": c, "org_no": "S1", "pay_time": "2026-10-03 10:00:00",
                                  "rcv_amt": 10, "pay_channel": "01", "status_code": "01"}
                                 for p, c in (("P1", "C1"), ("P2", "NOBODY"))]})
    assert run_pass(settings, wh).ok
    assert q(wh, "SELECT row_key, rule FROM etl_dq WHERE table_name = 'mis_payment'") == [("P2", "orphan:cons_no")]
    flags = set(q(wh, "SELECT row_key, rule FROM etl_dq WHERE resolved_at IS NULL "
                      "AND table_name NOT IN ('mis_org', 'mis_customer', 'mis_payment')"))
    assert flags == {("D1", "unknown_code:busi_type_code"), ("D2", "unknown_org:org_no"),
                     ("D3", "end_before_start:accept_time>reply_time"), ("D4", "orphan:merged_into_wo_no"),
                     ("T1|2026-10-14", "negative:supply_kwh")}
    assert q(wh, "SELECT count(*) FROM cs_work_order") == [(5,)]        # loaded all the same
    insert(env, {"cs_work_order": [wo("D2", org_no="S1", upd=U1)]})
    assert run_pass(settings, wh).ok
    assert q(wh, "SELECT resolved_at IS NOT NULL FROM etl_dq WHERE row_key = 'D2'") == [(True,)]
    assert q(wh, "SELECT resolved_at IS NULL FROM etl_dq WHERE row_key = 'D1'") == [(True,)]


def test_dirty_dates_cover_new_and_replaced_versions(env, settings, wh):
    insert(env, {"mis_payment": [{"charge_id": "P1", "cons_no": "C", "org_no": "S1",
                                  "pay_time": "2026-10-03 10:00:00", "acct_time": None, "rcv_amt": 10,
                                  "pay_channel": "01", "status_code": "01"}]})
    run_pass(settings, wh)
    insert(env, {"mis_payment": [{"charge_id": "P1", "cons_no": "C", "org_no": "S1",
                                  "pay_time": "2026-10-05 10:00:00", "acct_time": None, "rcv_amt": 10,
                                  "pay_channel": "01", "status_code": "01",
                                  "updated_at": U1}]})
    r = run_pass(settings, wh)
    got = q(wh, "SELECT business_date FROM etl_dirty WHERE run_id = ? AND table_name = 'mis_payment' "
                "ORDER BY 1", [r.run_id])
    assert got == [(date(2026, 10, 3),), (date(2026, 10, 5),)]


def test_changed_columns_name_what_a_merge_changed(env, settings, wh):
    """The KPI worker leaves a KPI alone when no column it reads changed: the run records, per
    dirty table, the columns in which merged rows differ from the versions they replaced, and
    '*' when a row is new."""
    insert(env, {"cs_work_order": [wo("W1"), wo("W2")]})
    first = run_two(settings, wh)

    def marks(run_id):
        return sorted(r[0] for r in q(wh, "SELECT column_name FROM etl_changed WHERE run_id = ? "
                                          "AND table_name = 'cs_work_order'", [run_id]))

    assert marks(first.run_id) == ["", "*"]
    # W1's status moves on; W2 comes again unchanged but for its stamp
    insert(env, {"cs_work_order": [wo("W1", upd=U1, status_code="05"), wo("W2", upd=U1)]})
    r = run_two(settings, wh)
    assert marks(r.run_id) == ["", "status_code", "updated_at"]
    insert(env, {"cs_work_order": [wo("W3", upd="2030-01-01 10:00:00")]})
    r = run_two(settings, wh)
    assert marks(r.run_id) == ["", "*"]


def test_dirty_dates_name_the_columns_changed_on_them(env, settings, wh):
    """A KPI reads a past day again only when a column it reads changed on that day: each dirty
    date carries the columns changed in the rows that carry it (old and new versions alike),
    and NULL (any column) when one of them is new."""
    insert(env, {"cs_work_order": [wo("W1", accept="2026-10-15 08:00:00"),
                                   wo("W2", accept="2026-10-16 08:00:00")]})
    run_two(settings, wh)

    def dirty(run_id):
        return q(wh, "SELECT business_date::VARCHAR, changed_columns FROM etl_dirty WHERE run_id = ? "
                     "AND table_name = 'cs_work_order' ORDER BY 1", [run_id])

    # W1 (accepted 10-15) is replied on 10-17; W2 (10-16) only changes its status; W3 is new
    # on 10-16; accept_time is the one date column of W2 and W3, accept and reply of W1
    insert(env, {"cs_work_order": [
        wo("W1", accept="2026-10-15 08:00:00", upd=U1, reply_time="2026-10-17 09:00:00"),
        wo("W2", accept="2026-10-16 08:00:00", upd=U1, status_code="05"),
        wo("W3", accept="2026-10-16 09:00:00", upd=U1)]})
    r = run_two(settings, wh)
    assert dirty(r.run_id) == [("2026-10-15", ["reply_time", "updated_at"]),
                               ("2026-10-16", None),
                               ("2026-10-17", ["reply_time", "updated_at"])]
    # the day of W1 moves (wo() stamps created_at with it): its old and new days carry the change
    insert(env, {"cs_work_order": [
        wo("W1", accept="2026-10-14 08:00:00", upd="2030-01-01 10:00:00", reply_time="2026-10-17 09:00:00")]})
    r = run_two(settings, wh)
    moved = ["accept_time", "created_at", "updated_at"]
    assert dirty(r.run_id) == [("2026-10-14", moved), ("2026-10-15", moved), ("2026-10-17", moved)]



def test_a_registers_update_is_dated_by_its_own_day_and_the_dates_it_moves(env, settings, wh):
    """A customer closed today changes no period placed by its build date of 2019: an update of
    a register's row (etl.rules.ARCHIVES) marks the day of its updated_at and the dates it moves,
    old and new, not every date the row carries. A new row, and a row deleted or restored, mark
    all of them (a deleted customer leaves every value it counted in)."""
    def cust(cons_no, upd=U0, **kw):
        return {"cons_no": cons_no, "org_no": "S1", "build_date": "2019-05-06", "ps_date": "2019-05-10",
                "cancel_date": None, "status_code": "01", "updated_at": upd, **kw}

    def dirty(run_id):
        return q(wh, "SELECT business_date::VARCHAR, list_sort(changed_columns) FROM etl_dirty "
                     "WHERE run_id = ? AND table_name = 'mis_customer' ORDER BY 1", [run_id])

    insert(env, {"mis_customer": [cust("C1"), cust("C2"), cust("C3")]})
    run_two(settings, wh)
    # C1 is closed, with a cancel date two days before the update was keyed in (2030-01-01);
    # C2 moves grid; C4 is new
    insert(env, {"mis_customer": [
        cust("C1", upd=U1, status_code="04", cancel_date="2029-12-30"),
        cust("C2", upd=U1, grid_no="G2"),
        cust("C4", upd=U1, build_date="2029-12-20", ps_date=None)]})
    r = run_two(settings, wh)
    closed = ["cancel_date", "status_code", "updated_at"]
    assert dirty(r.run_id) == [("2029-12-20", None),
                               ("2029-12-30", closed),
                               ("2030-01-01", sorted(closed + ["grid_no"]))]
    # C3 is deleted, C1's build date is corrected: the deletion carries every date of C3, the
    # correction its old and new build date besides the day of the update
    insert(env, {"mis_customer": [
        cust("C3", upd="2030-01-02 10:00:00", is_deleted=1),
        cust("C1", upd="2030-01-02 10:00:00", build_date="2019-05-07", status_code="04",
             cancel_date="2029-12-30")]})
    r = run_two(settings, wh)
    assert dirty(r.run_id) == [("2019-05-06", ["build_date", "is_deleted", "updated_at"]),
                               ("2019-05-07", ["build_date", "updated_at"]),
                               ("2019-05-10", ["is_deleted", "updated_at"]),
                               ("2030-01-02", ["build_date", "updated_at"])]


def test_a_run_records_the_keys_it_merged(env, settings, wh, monkeypatch):
    """The KPI worker re-derives the rows of its kept tables (k_wo, k_bill, ...) for the keys a
    run merged: recorded per table with a one-column key, or one NULL key (not recorded) when a
    run merged more than KEYS_MAX_ROWS rows of it, and then the keys it added beside."""
    from etl import load
    insert(env, {"cs_work_order": [wo("W1"), wo("W2")]})
    first = run_two(settings, wh)

    def keys(run_id):
        return sorted((r[0] for r in q(wh, "SELECT key FROM etl_keys WHERE run_id = ? "
                                           "AND table_name = 'cs_work_order'", [run_id])),
                      key=str)

    assert keys(first.run_id) == ["W1", "W2"]
    insert(env, {"cs_work_order": [wo("W1", upd=U1, status_code="05")]})
    assert keys(run_two(settings, wh).run_id) == ["W1"]
    monkeypatch.setattr(load, "KEYS_MAX_ROWS", 1)
    insert(env, {"cs_work_order": [wo("W2", upd="2030-01-01 10:00:00", status_code="05"),
                                   wo("W3", upd="2030-01-01 10:00:00")]})
    big = run_two(settings, wh)
    assert keys(big.run_id) == [None]
    # over the limit, the keys it added (W3, not W2) are recorded beside (etl_added_keys)
    assert q(wh, "SELECT key FROM etl_added_keys WHERE run_id = ?", [big.run_id]) == [("W3",)]
    # none added: nothing; more added than the limit: one NULL key
    insert(env, {"cs_work_order": [wo(w, upd="2030-01-02 10:00:00", status_code="06") for w in ("W1", "W2")]})
    assert q(wh, "SELECT COUNT(*) FROM etl_added_keys WHERE run_id = ?", [run_two(settings, wh).run_id]) == [(0,)]
    insert(env, {"cs_work_order": [wo(w, upd="2030-01-03 10:00:00") for w in ("W4", "W5")]})
    assert q(wh, "SELECT key FROM etl_added_keys WHERE run_id = ?", [run_two(settings, wh).run_id]) == [(None,)]
    # the versions not compared (a batch over TRACK_MAX_ROWS): which keys are new is unknown
    monkeypatch.setattr(load, "TRACK_MAX_ROWS", 1)
    insert(env, {"cs_work_order": [wo(w, upd="2030-01-04 10:00:00", status_code="07") for w in ("W1", "W2")]})
    assert q(wh, "SELECT key FROM etl_added_keys WHERE run_id = ?", [run_two(settings, wh).run_id]) == [(None,)]


def test_changed_columns_are_kept_for_a_day_of_runs(env, settings, wh, monkeypatch):
    from etl import pipeline
    monkeypatch.setattr(pipeline, "CHANGED_KEEP_RUNS", 2)
    runs = []
    for i, upd in enumerate((U0, U1, "2030-01-01 10:00:00")):
        insert(env, {"cs_work_order": [wo(f"W{i}", upd=upd)]})
        runs.append(run_two(settings, wh).run_id)
    assert q(wh, "SELECT DISTINCT run_id FROM etl_changed ORDER BY 1") == [(runs[1],), (runs[2],)]
    assert q(wh, "SELECT DISTINCT run_id FROM etl_keys WHERE table_name = 'cs_work_order' "
                 "ORDER BY 1") == [(runs[1],), (runs[2],)]
    wh.cursor().execute("INSERT INTO etl_added_keys VALUES (?, 'cs', 'cs_work_order', 'W0')", [runs[0]])
    insert(env, {"cs_work_order": [wo("W9", upd="2030-01-02 10:00:00")]})
    runs.append(run_two(settings, wh).run_id)
    assert q(wh, "SELECT COUNT(*) FROM etl_added_keys") == [(0,)]


def test_a_run_keeps_the_images_of_the_rows_it_replaced_and_merged(env, settings, wh, monkeypatch):
    """A KPI pass judges a past day from the versions a run replaced and merged
    (kpis/images.py): each run up to IMAGE_MAX_ROWS merged rows of a dated table keeps both,
    and says so in etl_image_run; a first load (nothing replaced) and a larger batch keep none,
    and images are dropped after IMAGE_KEEP_RUNS runs."""
    from etl import load, pipeline
    insert(env, {"cs_work_order": [wo("W1"), wo("W2")]})
    first = run_two(settings, wh)

    def images(run_id):
        return q(wh, "SELECT _after, wo_no, status_code FROM etl_image__cs_work_order "
                     "WHERE _run_id = ? ORDER BY ALL", [run_id])

    def kept(run_id):
        return q(wh, "SELECT table_name, kept FROM etl_image_run WHERE run_id = ? "
                     "AND table_name = 'cs_work_order'", [run_id])

    assert kept(first.run_id) == [("cs_work_order", False)]     # the first load: nothing replaced
    # W1's status moves on; W3 is new: replaced W1 before, W1 and W3 after
    insert(env, {"cs_work_order": [wo("W1", upd=U1, status_code="05"), wo("W3", upd=U1)]})
    second = run_two(settings, wh).run_id
    assert kept(second) == [("cs_work_order", True)]
    assert images(second) == [(False, "W1", wo("W1")["status_code"]), (True, "W1", "05"),
                              (True, "W3", wo("W3")["status_code"])]
    monkeypatch.setattr(load, "IMAGE_MAX_ROWS", 1)
    insert(env, {"cs_work_order": [wo("W2", upd="2030-01-01 10:00:00", status_code="05"),
                                   wo("W3", upd="2030-01-01 10:00:00", status_code="05")]})
    third = run_two(settings, wh).run_id
    assert kept(third) == [("cs_work_order", False)] and images(third) == []
    assert kept(second) == [("cs_work_order", True)]
    monkeypatch.setattr(pipeline, "IMAGE_KEEP_RUNS", 1)
    run_two(settings, wh)
    assert q(wh, "SELECT count(*) FROM etl_image_run") == [(0,)]
    assert q(wh, "SELECT count(*) FROM etl_image__cs_work_order") == [(0,)]


def test_a_key_merged_in_two_batches_of_a_run_keeps_one_image_a_side(wh):
    """A nightly table is merged in several batches a run: a key merged in two keeps the version
    before the first (none when the first added it) and the version after the last."""
    from etl.contract import load_contract
    from etl.load import _keep_images
    table = load_contract().tables["cs_work_order"]
    cur = wh.cursor()

    def batch(old, new, again):
        for name, rows in (("_old", old), ("_chg", new)):
            cur.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM cs_work_order LIMIT 0")
            for no, status in rows:
                cur.execute(f"INSERT INTO {name} BY NAME SELECT ? AS wo_no, ? AS status_code", [no, status])
        _keep_images(cur, table, 7, "cs", again=again)

    batch([("W2", "01")], [("W1", "01"), ("W2", "02")], again=False)    # W1 added, W2 changed
    batch([("W1", "01"), ("W2", "02")], [("W1", "05"), ("W2", "05")], again=True)
    assert q(wh, "SELECT wo_no, _after, status_code FROM etl_image__cs_work_order "
                 "WHERE _run_id = 7 ORDER BY ALL") == [("W1", True, "05"), ("W2", False, "01"),
                                                        ("W2", True, "05")]


def test_dimensions_follow_the_parent_tree_and_calendar(env, settings, wh):
    insert(env, {"mis_work_calendar": [
        {"cal_date": "2026-10-09", "work_flag": 1, "day_type": "01"},
        {"cal_date": "2026-10-10", "work_flag": 0, "day_type": "02"},
        {"cal_date": "2026-10-11", "work_flag": 1, "day_type": "04"},
        {"cal_date": "2026-10-12", "work_flag": 1, "day_type": "01"}],
        # a unit whose code looks like S1's child but whose parent is X1: the tree wins
        "mis_org": [{"org_no": "S1X", "org_name": "所2", "org_type": "05", "parent_org_no": "X1",
                     "status_code": "01"},
                    {"org_no": "S9", "org_name": "撤", "org_type": "05", "parent_org_no": "X1",
                     "status_code": "01", "is_deleted": 1}]})
    run_pass(settings, wh)
    assert q(wh, "SELECT org_no, org_level, parent_no, depth, is_root FROM dim_org ORDER BY depth, org_no") == [
        ("P", "province", None, 0, True), ("C1", "city", "P", 1, False), ("X1", "county", "C1", 2, False),
        ("S1", "station", "X1", 3, False), ("S1X", "station", "X1", 3, False), ("G1", "grid", "S1", 4, False)]
    assert q(wh, "SELECT ancestor_no, ancestor_level FROM dim_org_ancestor WHERE org_no = 'G1' ORDER BY 1") == [
        ("C1", "city"), ("G1", "grid"), ("P", "province"), ("S1", "station"), ("X1", "county")]
    assert q(wh, "SELECT ancestor_no FROM dim_org_ancestor WHERE org_no = 'S1X' ORDER BY 1") == [
        ("C1",), ("P",), ("S1X",), ("X1",)]
    # WD(10-09, 10-12) = 10-11 and 10-12 = 2
    assert q(wh, "SELECT cal_date::VARCHAR, wd_index FROM dim_calendar ORDER BY 1") == [
        ("2026-10-09", 1), ("2026-10-10", 1), ("2026-10-11", 2), ("2026-10-12", 3)]


def test_missing_contract_column_fails_that_table_only(env, settings, wh):
    path = env["SOURCE_CS_URL"].removeprefix("sqlite:///")
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE cs_urge DROP COLUMN urge_reason")
    con.execute("ALTER TABLE cs_visit ADD COLUMN extra_col VARCHAR(4)")   # extras are ignored
    con.commit()
    con.close()
    insert(env, {"cs_work_order": [wo("W1")]})
    r = run_pass(settings, wh)
    assert not r.ok and r.sources["mis"].ok and not r.sources["cs"].ok
    err = q(wh, "SELECT error FROM etl_run WHERE table_name = 'cs_urge'")[0][0]
    assert "`cs_urge`" in err and "`urge_reason`" in err
    assert q(wh, "SELECT status FROM etl_run WHERE table_name = 'cs_visit'") == [("ok",)]
    assert q(wh, "SELECT count(*) FROM cs_work_order") == [(1,)]


def test_probed_window_skips_stale_rereads_and_still_takes_late_and_changed_rows(env, settings, wh, monkeypatch):
    import etl.pipeline
    monkeypatch.setattr(etl.pipeline, "PROBE_ROWS", 0)      # every window with rows is probed
    insert(env, {"cs_work_order": [wo("W1"), wo("W2"), wo("W3")]})
    assert run_two(settings, wh).ok
    # in the next window: W1 unchanged (a stale re-read), W2 changed, W4 new but stamped early in
    # the overlap (committed late), so the narrowed read must start at W4's stamp
    insert(env, {"cs_work_order": [wo("W2", upd=U1, status_code="05"),
                                   wo("W4", upd="2030-01-01 07:55:00", status_code="02")]})
    wh.cursor().execute("UPDATE etl_watermark SET high = TIMESTAMP '2030-01-01 08:00:00' "
                        "WHERE table_name = 'cs_work_order'")
    r = run_two(settings, wh)
    assert r.ok
    assert q(wh, "SELECT wo_no, status_code FROM cs_work_order ORDER BY 1") == [
        ("W1", "01"), ("W2", "05"), ("W3", "01"), ("W4", "02")]
    assert q(wh, "SELECT rows_read, rows_merged FROM etl_run WHERE run_id = ? AND table_name = 'cs_work_order'",
             [r.run_id]) == [(4, 2)]             # W1, W3 (re-read), W2, W4
    # nothing new: the probe finds only stale rows and merges nothing
    r = run_two(settings, wh)
    assert q(wh, "SELECT rows_read, rows_merged FROM etl_run WHERE run_id = ? AND table_name = 'cs_work_order'",
             [r.run_id]) == [(1, 0)]             # W2 again
    # a bad version in the window is rejected once; re-probed it stays one open rejection, and a
    # later correction still loads and releases it
    insert(env, {"cs_work_order": [wo("W5", accept="2030-13-01 00:00:00", upd="2030-01-01 09:30:00")]})
    run_two(settings, wh)
    r = run_two(settings, wh)
    assert q(wh, "SELECT row_key, reason, resolved_at IS NULL FROM etl_reject") == [
        ("W5", "bad_timestamp:accept_time", True)]
    # the second time the probe already knew it: not read in full, not counted again
    assert q(wh, "SELECT rows_read, rows_rejected FROM etl_run WHERE run_id = ? AND table_name = 'cs_work_order'",
             [r.run_id]) == [(1, 0)]
    insert(env, {"cs_work_order": [wo("W5", accept="2029-12-31 10:00:00", upd="2030-01-01 09:40:00")]})
    r = run_two(settings, wh)
    assert q(wh, "SELECT resolved_run_id FROM etl_reject") == [(r.run_id,)]
    assert q(wh, "SELECT accept_time::VARCHAR FROM cs_work_order WHERE wo_no = 'W5'") == [("2029-12-31 10:00:00",)]


def test_a_failing_table_in_the_source_transaction_fails_alone(env, settings, wh, monkeypatch):
    insert(env, {"cs_work_order": [wo("W1")], "cs_urge": [{"urge_id": "U1", "wo_no": "W1",
                                                          "urge_time": "2026-10-15 09:00:00"}]})
    assert run_two(settings, wh).ok
    insert(env, {"cs_work_order": [wo("W1", upd=U1, status_code="05")],
                 "cs_urge": [{"urge_id": "U1", "wo_no": "W1", "urge_time": "2026-10-15 10:00:00",
                              "updated_at": U1}]})
    import etl.load
    real = etl.load.flag_rows

    def broken(cur, table, *args):
        if table.name == "cs_urge":
            cur.execute("SELECT no_such_column FROM cs_urge")
        return real(cur, table, *args)
    monkeypatch.setattr(etl.load, "flag_rows", broken)
    r = run_two(settings, wh)
    assert r.sources["mis"].ok and not r.sources["cs"].ok
    status = dict(q(wh, "SELECT table_name, status FROM etl_run WHERE run_id = ? AND source = 'cs'", [r.run_id]))
    assert status["cs_urge"] == "failed" and status["cs_work_order"] == "ok"
    assert q(wh, "SELECT status_code FROM cs_work_order") == [("05",)]
    assert q(wh, "SELECT urge_time::VARCHAR FROM cs_urge") == [("2026-10-15 09:00:00",)]
    marks = dict(q(wh, "SELECT table_name, high::VARCHAR FROM etl_watermark WHERE source = 'cs'"))
    assert marks["cs_work_order"] == U1 and marks["cs_urge"] < U1     # re-read next pass
    monkeypatch.setattr(etl.load, "flag_rows", real)
    assert run_two(settings, wh).ok
    assert q(wh, "SELECT urge_time::VARCHAR FROM cs_urge") == [("2026-10-15 10:00:00",)]


def test_empty_windows_advance_with_one_run_row_each(env, settings, wh):
    insert(env, {"cs_work_order": [wo("W1")]})
    assert run_two(settings, wh).ok
    insert(env, {"cs_work_order": [wo("W2", upd=U1)]})
    r = run_two(settings, wh)
    rows = q(wh, "SELECT table_name, rows_read, status FROM etl_run WHERE run_id = ? AND source = 'cs'", [r.run_id])
    assert len(rows) == len({t for t, _, _ in rows}) == 8          # one per cs table
    assert {t: n for t, n, _ in rows if n} == {"cs_work_order": 2}   # W1 re-read in the overlap, W2
    assert all(s == "ok" for _, _, s in rows)
    assert set(q(wh, "SELECT DISTINCT high::VARCHAR FROM etl_watermark WHERE source = 'cs'")) == {(U1,)}


def test_the_wal_is_folded_when_asked_not_by_each_commit(tmp_path):
    """Commits leave the WAL alone up to the high threshold; the worker folds it after a cycle."""
    with Warehouse(tmp_path / "w.duckdb") as w:
        cur = w.cursor()
        cur.execute("CREATE TABLE t (i BIGINT, s VARCHAR)")
        for n in range(20):     # small commits, as a minute pass makes them
            cur.execute("INSERT INTO t SELECT range, 'x' || range FROM range(?, ? + 5000)", [n * 5000, n * 5000])
        cur.execute("DELETE FROM t WHERE i % 7 = 0")
        held = w.wal_bytes()
        assert held > 0
        assert not w.fold_wal(above=held)           # under the worker's size: left alone
        assert w.fold_wal(above=0) and w.wal_bytes() == 0
        assert cur.execute("SELECT count(*) FROM t").fetchone()[0] == 100_000 - 14_286
