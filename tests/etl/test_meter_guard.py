"""The count guard of the long metering overlap: read a 10-minute bucket of it only when the counts
over it differ, and sweep the whole overlap, a bounded slice per pass, when its last sweep is older
than ETL_METER_REREAD_S (hand-made sources, hand-counted)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from etl.pipeline import run_pass
from etl.settings import load_settings
from etl.status import collect, render_text
from etl.warehouse import Warehouse
from tests.etl.conftest import GRIDS, ORGS
from tests.etl.sources_kit import build_sources, insert

DAY = "2030-01-01"


def reading(meter: str, upd: str, status: str = "01") -> dict:
    return {"meter_asset_no": meter, "data_date": "2029-12-31", "org_no": "S1", "coll_status": status,
            "created_at": f"{DAY} 01:00:00", "updated_at": f"{DAY} {upd}"}


@pytest.fixture
def guarded(tmp_path):
    env = build_sources(tmp_path, {"mis_org": ORGS, "mis_grid": GRIDS})
    env["ETL_METER_REREAD_S"] = "7200"          # a full re-read at most every 2 h of source clock
    wh = Warehouse(load_settings(env).warehouse_path, threads=1, memory_limit="1GB")
    wh.migrate()
    yield env, wh
    wh.close()


def run(env, wh):
    r = run_pass(load_settings(env), wh, sources=("mis", "meter"))
    assert r.ok
    (row,) = wh.cursor().execute(
        "SELECT rows_read, rows_merged, strftime(window_low, '%Y-%m-%d %H:%M') FROM etl_run "
        "WHERE run_id = ? AND table_name = 'meter_collection_daily'", [r.run_id]).fetchall()
    return row


def meters(wh) -> list[str]:
    return [m for (m,) in wh.cursor().execute(
        "SELECT meter_asset_no FROM meter_collection_daily ORDER BY 1").fetchall()]


def test_late_row_in_the_long_overlap_is_read_when_counts_differ_or_the_reread_is_due(guarded):
    env, wh = guarded
    insert(env, {"meter_collection_daily": [reading("M1", "06:00:00"), reading("M2", "06:00:00"),
                                            reading("M0", "08:00:00")]})
    run(env, wh)                                  # full load; source clock 08:00 = last re-read
    assert meters(wh) == ["M0", "M1", "M2"]

    # M1's 补采 moves it from the older range into the short window; M3 is new. Counted after the
    # short window is merged, the older range (..., 07:50] holds M2 at the source and here: no re-read
    insert(env, {"meter_collection_daily": [reading("M1", "08:25:00", "02"), reading("M3", "08:30:00")]})
    assert run(env, wh) == (3, 2, f"{DAY} 07:50")           # M0, M1, M3 of (07:50, 08:30]

    # a late reading stamped 05:00 (inside the 26 h overlap, far before the short window)
    insert(env, {"meter_collection_daily": [reading("M9", "05:00:00"), reading("M4", "08:40:00")]})
    # short (08:20, 08:40]: M1, M3, M4. Older (..., 08:20] in buckets (06:30 + 10 min k, ...]: only
    # (04:50, 05:00] differs (source M9, warehouse none) and only it is read: 3 + 1 rows
    assert run(env, wh) == (4, 2, f"{DAY} 04:50")
    assert meters(wh) == ["M0", "M1", "M2", "M3", "M4", "M9"]

    # the guard's limit: a row removed at the source (against the contract) hides a late one
    # stamped in the same bucket (05:50, 06:00]: source M8 = warehouse M2 ...
    con = sqlite3.connect(env["SOURCE_METER_URL"].removeprefix("sqlite:///"))
    con.execute("DELETE FROM meter_collection_daily WHERE meter_asset_no = 'M2'")
    con.commit()
    con.close()
    insert(env, {"meter_collection_daily": [reading("M8", "05:55:00"), reading("M5", "08:50:00")]})
    assert run(env, wh) == (2, 1, f"{DAY} 08:30")            # M4, M5 of (08:30, 08:50]
    assert "M8" not in meters(wh)
    # ... until the sweep is due: 2 h of source clock after the last one (the full load at 08:00)
    insert(env, {"meter_collection_daily": [reading("M6", "10:41:00")]})
    # short (08:40, 10:41]: M5 M6; the sweep re-reads the older (08:50 - 26 h, 08:40] whole, within
    # ETL_METER_REREAD_ROWS: M0 M1 M3 M4 M8 M9 (empty buckets are not read: the window starts at
    # M9's bucket). M6 and M8 are new
    assert run(env, wh) == (8, 2, f"{DAY} 04:50")
    assert "M8" in meters(wh)
    # the sweep's end is remembered with the rows, and no sweep is left in progress
    assert wh.cursor().execute("SELECT strftime(high, '%H:%M') FROM etl_reread "
                               "WHERE table_name = 'meter_collection_daily'").fetchall() == [("10:41",)]
    assert wh.cursor().execute("SELECT count(*) FROM etl_reread_sweep").fetchone() == (0,)


def test_a_version_written_above_the_high_does_not_make_the_counts_differ(guarded):
    """A 补采 version stamped after the pass's high (within the safety lag) leaves the source's older
    range but not yet the warehouse's: those keys are left out of the warehouse's count."""
    env, wh = guarded
    env["ETL_SAFETY_LAG_S"] = "60"
    insert(env, {"meter_collection_daily": [reading("M1", "06:00:00"), reading("M2", "06:05:00"),
                                            reading("M0", "08:00:00")]})
    run(env, wh)                                  # full load up to 07:59 (clock 08:00 - 60 s)
    assert meters(wh) == ["M1", "M2"]
    # clock 08:30, high 08:29: M1's 补采 at 08:29:30 is above it; M3 at 08:20 is in the short window
    insert(env, {"meter_collection_daily": [reading("M3", "08:20:00"), reading("M1", "08:29:30", "02"),
                                            reading("M7", "08:30:00")]})
    assert run(env, wh) == (2, 2, f"{DAY} 07:49")            # M0, M3 of (07:49, 08:29]; no bucket read
    held = dict(wh.cursor().execute("SELECT meter_asset_no, coll_status FROM meter_collection_daily").fetchall())
    assert held == {"M0": "01", "M1": "01", "M2": "01", "M3": "01"}
    insert(env, {"meter_collection_daily": [reading("M4", "08:40:00")]})
    run(env, wh)                                  # high 08:39: M1's 补采 and M7 arrive
    held = dict(wh.cursor().execute("SELECT meter_asset_no, coll_status FROM meter_collection_daily").fetchall())
    assert held == {"M0": "01", "M1": "02", "M2": "01", "M3": "01", "M7": "01"}


def test_the_sweep_reads_a_bounded_slice_per_pass_and_resumes_after_a_failed_pass(guarded):
    """ETL_METER_REREAD_ROWS=2: the sweep re-reads whole 10-minute buckets in order, at most two
    source rows a pass (one bucket alone when it holds more), its cursor saved with the rows."""
    env, wh = guarded
    env["ETL_METER_REREAD_ROWS"] = "2"
    old = [("A1", "08:05"), ("A2", "08:07"), ("B1", "08:15"), ("C1", "08:25"), ("C2", "08:26"), ("C3", "08:27")]
    rows = [reading(m, "00:00:00") | {"updated_at": f"2029-12-31 {t}:00"} for m, t in old]
    insert(env, {"meter_collection_daily": [*rows, reading("M0", "08:00:00")]})
    run(env, wh)                                  # full load at 08:00, which counts as a sweep
    insert(env, {"meter_collection_daily": [reading("M5", "10:00:00")]})   # the clock: 2 h later

    def cursor():
        return wh.cursor().execute("SELECT strftime(sweep_cursor, '%d %H:%M') FROM etl_reread_sweep").fetchall()

    # mark 08:00, older (31st 06:00, 1st 07:50]: the sweep is due; empty buckets cost nothing,
    # (08:00, 08:10] = A1 A2 fills the budget. Short (07:50, 10:00]: M0 M5
    assert run(env, wh) == (2 + 2, 1, "2029-12-31 08:00")
    assert cursor() == [("31 08:10",)]
    # no new rows: mark 10:00, older (31st 08:00, 1st 09:50], short (09:50, 10:00] = M5.
    # (08:10, 08:20] = B1; C's bucket would exceed the budget
    assert run(env, wh) == (1 + 1, 0, "2029-12-31 08:10")
    assert cursor() == [("31 08:20",)]

    # the meter source is down for a pass: nothing moves
    path = Path(env["SOURCE_METER_URL"].removeprefix("sqlite:///"))
    path.rename(path.with_suffix(".away"))
    assert not run_pass(load_settings(env), wh, sources=("meter",)).ok
    path.with_suffix(".away").rename(path)
    assert cursor() == [("31 08:20",)]

    assert run(env, wh) == (1 + 3, 0, "2029-12-31 08:20")    # C1 C2 C3: more than 2, alone
    assert cursor() == [("31 08:30",)]
    # `python -m etl status` tells where the sweep stands
    text = render_text(collect(wh.cursor(), "warehouse"))
    assert ("meter.meter_collection_daily: last sweep ended at 2030-01-01 08:00:00, "
            "the next one has re-read up to 2029-12-31 08:30:00") in text
    assert run(env, wh) == (1 + 1, 0, f"{DAY} 07:50")          # the rest: M0. The sweep ends
    assert cursor() == []
    assert wh.cursor().execute("SELECT strftime(high, '%H:%M') FROM etl_reread "
                               "WHERE table_name = 'meter_collection_daily'").fetchall() == [("10:00",)]
    assert run(env, wh) == (1, 0, f"{DAY} 09:50")              # not due again for 2 h


def test_reread_every_pass_when_the_interval_is_zero(guarded):
    env, wh = guarded
    env["ETL_METER_REREAD_S"] = "0"
    insert(env, {"meter_collection_daily": [reading("M1", "06:00:00"), reading("M0", "08:00:00")]})
    run(env, wh)
    insert(env, {"meter_collection_daily": [reading("M3", "08:30:00")]})
    assert run(env, wh) == (3, 1, "2029-12-31 06:00")        # the whole 26 h overlap, as before
