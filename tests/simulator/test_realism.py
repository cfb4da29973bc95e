"""States derived from events (crews, terminal heartbeats) and the spread of codes the KPIs need."""
from __future__ import annotations

import sqlite3

from simulator import heartbeat, territory
from simulator.clock import DAY
from simulator.life import Life
from simulator.states import CrewLog


def _task(task_id: str, crew: str, times: dict[str, int]) -> Life:
    """A repair task whose status moves at the given seconds (status -> second)."""
    t = Life("dist_repair_task", times["01"], dict(task_id=task_id, org_no="334010101", receive_time="x",
                                                   status_code="01", task_source="01"))
    for status in ("02", "03", "04", "05", "06", "07", "08"):
        if status in times:
            t.set(times[status], status_code=status, **({"crew_id": crew} if status == "02" else {}))
    return t


def test_crew_status_follows_its_tasks_and_the_busiest_one_wins():
    ter = territory.build("small", 1, 9792)
    crew = ter.crews[ter.stations[0]][0]
    log = CrewLog(ter)
    # task A: dispatched 100, crew accepts 150, departs 200, arrives 300, restores 350, replies 400
    log.add([_task("A", crew, {"01": 50, "02": 100, "03": 150, "04": 200, "05": 300, "06": 350, "07": 400,
                               "08": 900})])
    # task B on the same crew: dispatched 320 while A is on site, departs 410, arrives 500, replies 600
    log.add([_task("B", crew, {"01": 310, "02": 320, "04": 410, "05": 500, "07": 600})])
    assert log.versions(crew) == [(100, "02"), (200, "03"), (300, "04"), (400, "02"), (410, "03"),
                                  (500, "04"), (600, "01")]
    rows = {r[0]: r for r in log.rows(450)}
    assert set(rows) == {crew}                     # crews without any task keep their territory row
    row = rows[crew]
    assert row[6] == "03" and row[7] == "2000-01-01 00:06:50" and row[-2] == row[7]   # status, status_time, updated_at
    assert log.rows(450, lo=409) and not log.rows(450, lo=410)


def test_heartbeats_stop_while_a_terminal_is_off_the_network():
    n, seed, t = 20000, 3, 9800 * DAY + 12345
    beat = heartbeat.last_beats(seed, n, t)
    off = heartbeat.offline_at(seed, n, t)
    ph = heartbeat.phases(n)
    assert ((beat - ph) % 60 == 0).all()              # heard at its own second of the minute
    assert (t - beat[~off] < 60).all() and (beat <= t).all()
    assert (t - beat[off] >= 60).all()
    # about 0.4 % drop off a day for 1-40 h: a few in a thousand are away at any time
    assert 0.001 < off.mean() < 0.006
    k, b = heartbeat.beats_in(seed, n, t - 1, t)      # a one-second step hears about a sixtieth
    assert 0.8 * n / 60 < len(k) < 1.2 * n / 60 and (b == t).all()


def _one(folder, system, sql):
    con = sqlite3.connect(folder / f"source_{system}.db")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_history_has_the_codes_and_events_the_kpis_look_for(small):
    _, folder, _ = small
    channels = {c for c, in _one(folder, "cs", "SELECT DISTINCT accept_channel FROM cs_work_order")}
    assert {"01", "02", "04", "07"} <= channels
    assert {s for s, in _one(folder, "dist", "SELECT DISTINCT task_source FROM dist_repair_task")} & {"02", "03"}
    # terminals are stamped by their heartbeat: last_online_time is the row's write time
    assert _one(folder, "meter", "SELECT COUNT(*) FROM meter_terminal WHERE last_online_time <> updated_at") == [(0,)]
    end = "2026-09-11 00:00:00"
    recent = _one(folder, "meter", f"SELECT AVG(last_online_time > datetime('{end}', '-60 seconds')) FROM meter_terminal")
    assert recent[0][0] > 0.95
    levels = dict(_one(folder, "mis", "SELECT impt_level, COUNT(*) FROM mis_customer GROUP BY 1"))
    assert levels["05"] > 0.9 * sum(levels.values()) and len(levels) >= 3
    assert _one(folder, "mis", "SELECT COUNT(*) FROM mis_cust_visit v JOIN mis_customer c USING (cons_no) "
                               "WHERE v.visit_type = '01' AND c.impt_level = '05'") == [(0,)]


def test_curve_collection_is_configured_for_the_meters_with_curves(small):
    # curve_flag marks the meters the curve completeness rate expects 96 points a day from; the
    # simulator writes curves for a sample of 台区 master meters only, and those must be the ones
    # flagged, or the rate reads a structural ~0 % (session 30: 0.04 % at city, every day)
    _, folder, _ = small
    flagged = {m for m, in _one(folder, "meter", "SELECT meter_asset_no FROM meter_coll_obj "
                                                 "WHERE curve_flag = 1 AND is_deleted = 0 AND status_code = '01'")}
    day = "2026-09-05"      # settled: its points are written on 09-06, late ones within 20 hours
    points = dict(_one(folder, "meter", "SELECT meter_asset_no, COUNT(*) FROM meter_curve_15min "
                                        f"WHERE data_time > '{day} 00:00:00' AND data_time <= date('{day}', '+1 day') "
                                        "|| ' 00:00:00' AND p_kw IS NOT NULL AND is_deleted = 0 GROUP BY 1"))
    assert flagged and set(points) == flagged
    assert sum(points.values()) == 96 * len(flagged)
