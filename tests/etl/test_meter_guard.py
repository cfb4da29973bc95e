"""The count guard of the long metering overlap: read it only when the counts over it differ, or
when its last full re-read is older than ETL_METER_REREAD_S (hand-made sources, hand-counted)."""
from __future__ import annotations

import sqlite3

import pytest

from etl.pipeline import run_pass
from etl.settings import load_settings
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
    # short (08:20, 08:40]: M1, M3, M4; older (.., 08:20]: source M0, M2, M9 = 3, warehouse M0, M2 = 2
    assert run(env, wh) == (6, 2, "2029-12-31 06:30")       # 3 + 3 read, M4 and M9 merged
    assert meters(wh) == ["M0", "M1", "M2", "M3", "M4", "M9"]

    # the guard's limit: a row removed at the source (against the contract) hides a late one in
    # the count (source M0 M1 M3 M8 M9 = warehouse M0 M1 M2 M3 M9) ...
    con = sqlite3.connect(env["SOURCE_METER_URL"].removeprefix("sqlite:///"))
    con.execute("DELETE FROM meter_collection_daily WHERE meter_asset_no = 'M2'")
    con.commit()
    con.close()
    insert(env, {"meter_collection_daily": [reading("M8", "05:30:00"), reading("M5", "08:50:00")]})
    assert run(env, wh) == (2, 1, f"{DAY} 08:30")            # M4, M5 of (08:30, 08:50]
    assert "M8" not in meters(wh)
    # ... until the full re-read is due: 2 h of source clock after the last one (08:40)
    insert(env, {"meter_collection_daily": [reading("M6", "10:41:00")]})
    # every reading is in (08:50 - 26 h, 10:41]: M0 M1 M3 M4 M5 M6 M8 M9; M6 and M8 are new
    assert run(env, wh) == (8, 2, "2029-12-31 06:50")
    assert "M8" in meters(wh)
    # the last full re-read is remembered with the rows
    assert wh.cursor().execute("SELECT strftime(high, '%H:%M') FROM etl_reread "
                               "WHERE table_name = 'meter_collection_daily'").fetchall() == [("10:41",)]


def test_reread_every_pass_when_the_interval_is_zero(guarded):
    env, wh = guarded
    env["ETL_METER_REREAD_S"] = "0"
    insert(env, {"meter_collection_daily": [reading("M1", "06:00:00"), reading("M0", "08:00:00")]})
    run(env, wh)
    insert(env, {"meter_collection_daily": [reading("M3", "08:30:00")]})
    assert run(env, wh) == (3, 1, "2029-12-31 06:00")        # the whole 26 h overlap, as before
