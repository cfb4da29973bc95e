"""Live mode: the clock advances deterministically, rows are inserted and earlier rows updated."""
from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

import simulator
from simulator import live
from tests.simulator.conftest import START, sqlite_urls, table_hashes

H6 = 6 * 3600


def _rows(folder, system, table, key):
    con = sqlite3.connect(folder / f"source_{system}.db")
    con.row_factory = sqlite3.Row
    rows = {tuple(r[k] for k in key): dict(r) for r in con.execute(f"SELECT * FROM {table}")}
    con.close()
    return rows


def test_live_steps_move_updated_at_forward_and_update_earlier_rows(tmp_path):
    urls = sqlite_urls(tmp_path)
    simulator.build(urls, scale="small", seed=5, days=3, start=START)
    watched = [("cs", "cs_work_order", ("wo_no",)), ("dist", "dist_repair_task", ("task_id",)),
               ("meter", "meter_collection_daily", ("meter_asset_no", "data_date")),
               ("mis", "mis_bill", ("bill_id",)), ("dist", "dist_outage", ("outage_id",))]
    before = {t: _rows(tmp_path, s, t, k) for s, t, k in watched}
    first = {t: dict(rows) for t, rows in before.items()}
    clock = datetime.combine(START, datetime.min.time()) + timedelta(days=3)
    changed = {t: 0 for _, t, _ in watched}
    for n in range(1, 9):                                   # two simulated days in 6-hour steps
        live.step(urls, H6)
        now = (clock + timedelta(hours=6 * n)).strftime("%Y-%m-%d %H:%M:%S")
        for s, t, k in watched:
            after = _rows(tmp_path, s, t, k)
            assert set(before[t]) <= set(after), f"{t}: rows disappeared"
            for key, old in before[t].items():
                new = after[key]
                assert new["updated_at"] >= old["updated_at"], f"{t} {key}: updated_at went back"
                assert new["created_at"] == old["created_at"], f"{t} {key}: created_at rewritten"
                if new != old:
                    assert new["updated_at"] > old["updated_at"], f"{t} {key}: changed without a new updated_at"
                    changed[t] += 1
            assert max(r["updated_at"] for r in after.values()) <= now
            assert all(r["created_at"] <= r["updated_at"] for r in after.values())
            before[t] = after
    assert len(before["cs_work_order"]) > len(first["cs_work_order"])          # new orders arrived
    assert changed["cs_work_order"] > 0 and changed["meter_collection_daily"] > 0
    # orders open at the end of the history were closed later
    closed = [k for k, r in first["cs_work_order"].items()
              if r["status_code"] != "06" and before["cs_work_order"][k]["status_code"] == "06"]
    assert closed
    # failed collection re-collected (补采): same row, now a success from the master station
    fixed = [k for k, r in first["meter_collection_daily"].items()
             if r["coll_status"] == "02" and before["meter_collection_daily"][k]["coll_status"] == "01"]
    assert fixed and all(before["meter_collection_daily"][k]["data_src"] == "02" for k in fixed)
    # arrival back-filled from the mobile app: written after the arrival it reports
    tasks = before["dist_repair_task"].values()
    backfilled = [r for r in tasks if r["arrive_backfill_flag"] == 1]
    assert backfilled and all(r["updated_at"] > r["arrive_time"] for r in backfilled)


def test_live_result_does_not_depend_on_step_size_and_continues_the_history(tmp_path):
    folders = [tmp_path / n for n in ("steps", "one", "history")]
    for f in folders:
        f.mkdir()
    for f in folders[:2]:
        simulator.build(sqlite_urls(f), scale="small", seed=9, days=2, start=START)
    for _ in range(8):
        live.step(sqlite_urls(folders[0]), H6)
    live.step(sqlite_urls(folders[1]), 8 * H6)
    simulator.build(sqlite_urls(folders[2]), scale="small", seed=9, days=4, start=START)
    skip = ("mis_work_calendar",)                      # the calendar reaches a year past the history's end
    a, b, c = (table_hashes(f, skip) for f in folders)
    assert a == b
    assert a == c


def test_live_command_follows_wall_time_times_speed(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    simulator.build(sqlite_urls(tmp_path), scale="small", seed=4, days=1, start=START)
    before = json.loads((tmp_path / "simulator_state.json").read_text())["clock"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOURCE_")}
    env.update(DATA_DIR=str(tmp_path), PYTHONPATH=str(repo))
    subprocess.run([sys.executable, "-m", "simulator", "live", "--speed", "3600", "--seconds", "3"],
                   cwd=repo, env=env, check=True, capture_output=True, timeout=120)
    after = json.loads((tmp_path / "simulator_state.json").read_text())["clock"]
    assert 0 < after - before < 86400           # about 3 wall seconds x 3600
    con = sqlite3.connect(tmp_path / "source_cs.db")
    newest = con.execute("SELECT MAX(updated_at) FROM cs_queue_snapshot").fetchone()[0]   # every 30 s
    con.close()
    assert newest > "2026-09-02 00:00:00"


def test_one_live_run_with_small_blocks_and_days_generated_ahead_matches_a_longer_build(tmp_path, monkeypatch):
    # as `simulator live` runs: one Live across many uneven steps, the next day generated by the
    # background thread; tiny spool blocks so that steps cross, decode and drop many of them
    import csv

    from simulator import spool
    monkeypatch.setattr(spool, "BLOCK", 64)
    runs, whole = tmp_path / "run", tmp_path / "whole"
    for f in (runs, whole):
        f.mkdir()
    simulator.build(sqlite_urls(runs), scale="small", seed=11, days=2, start=START, bad_rows=0.05)
    runner = live.Live(sqlite_urls(runs))
    runner.generate_ahead()
    steps = [1, 59, 1740, 1800, 7 * 3600, 5 * 3600 - 1, 3601, 10 * 3600] * 2
    assert sum(steps) == 2 * 86400
    try:
        for s in steps:
            runner.step(s)
        assert runner._pending, "the next day is queued in the background"
    finally:
        runner.close()
    simulator.build(sqlite_urls(whole), scale="small", seed=11, days=4, start=START, bad_rows=0.05)
    skip = ("mis_work_calendar",)
    assert table_hashes(runs, skip) == table_hashes(whole, skip)

    def lines(folder):
        with (folder / "simulator_badrows.csv").open(encoding="utf-8") as f:
            return sorted(map(tuple, csv.reader(f)))
    assert len(lines(whole)) > 100
    assert lines(runs) == lines(whole)
