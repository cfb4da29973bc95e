"""Near-real-time history: a KPI's new snapshot replaces its earlier ones of the same clock hour
(of the same 5 minutes for a KPI whose baseline reads the same clock time days before), the
nightly job keeps the last snapshot of each past slot, the serving snapshot follows, and the
baseline reads the snapshot nearest the same clock time.

Hand-worked over the standard org tree of the case harness (10 units: P, C1, K1, K2, S1-S3,
G1-G3) with newconn.overdue (kept per hour) and newconn.in_progress (open applications at as_of;
baseline: the value 7 days earlier, so kept per 5 minutes for 8 days): IP1 (S1) is open from
2024-06-01; IP3 (S2) is accepted at 2024-07-02 09:05, so S2 counts 0 before that and 1 after.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from kpis import retention
from kpis.evaluate import ensure_schema, evaluate_plan
from kpis.periods import snapshot
from kpis.prelude import apply_prelude
from kpis.publish import publish
from kpis.registry import load_registry
from tests.kpis.harness import load_inputs

IN_PROGRESS, OVERDUE = "newconn.in_progress", "newconn.overdue"
AT = "2024-07-02 {}:00"


def ts(hhmm: str) -> datetime:
    return datetime.fromisoformat(AT.format(hhmm))


@pytest.fixture()
def con():
    c = duckdb.connect()
    load_inputs(c, {"calendar": "2024-06-01..2024-07-31", "inputs": {"mis_app": [
        {"app_no": "IP1", "busi_type_code": "101", "org_no": "S1", "grid_no": "G1",
         "status_code": "01", "accept_time": "2024-06-01 09:00:00"},
        {"app_no": "IP3", "busi_type_code": "101", "org_no": "S2", "grid_no": "G2",
         "status_code": "01", "accept_time": "2024-07-02 09:05:00"}]}})
    apply_prelude(c)
    ensure_schema(c)
    yield c
    c.close()


@pytest.fixture(scope="module")
def kpis():
    reg = load_registry()
    return reg.kpis[IN_PROGRESS], reg.kpis[OVERDUE]


def evaluate(con, kpi, hhmm: str) -> None:
    evaluate_plan(con, [(kpi, [snapshot(ts(hhmm))])], ts(hhmm), ts(hhmm))


def stored(con, kpi_id: str = OVERDUE) -> dict[str, dict[str, float]]:
    """{HH:MM: {org: value}} of the KPI's stored snapshots."""
    out: dict[str, dict[str, float]] = {}
    for ps, org, v in con.execute(
            "SELECT period_start, org_no, value FROM kpi_value WHERE kpi_id = ? "
            "AND grain = 'near-real-time' ORDER BY 1, 2", [kpi_id]).fetchall():
        out.setdefault(f"{ps:%d %H:%M}" if ps.date() != ts("00:00").date() else f"{ps:%H:%M}", {})[org] = v
    return out


def test_a_new_snapshot_replaces_the_earlier_ones_of_its_hour(con, kpis) -> None:
    in_progress, overdue = kpis
    evaluate(con, in_progress, "08:00")
    for hhmm in ("08:00", "08:30", "08:59", "09:10", "09:40"):
        evaluate(con, overdue, hhmm)
    # 08:00 and 08:30 gave way to 08:59, 09:10 to 09:40, at every unit
    snaps = stored(con)
    assert sorted(snaps) == ["08:59", "09:40"]
    assert len(snaps["08:59"]) == len(snaps["09:40"]) == 10
    assert sorted(stored(con, IN_PROGRESS)) == ["08:00"]     # another KPI's snapshot is not touched


def test_a_baseline_kpi_keeps_one_snapshot_per_5_minutes_while_its_baseline_reads_them(con, kpis) -> None:
    in_progress, _ = kpis
    for hhmm in ("08:00", "08:03", "08:06", "08:59", "09:10", "09:40"):
        evaluate(con, in_progress, hhmm)
    # slots [08:00, 08:05) -> 08:03, [08:05, 08:10) -> 08:06, then one snapshot each
    snaps = stored(con, IN_PROGRESS)
    assert sorted(snaps) == ["08:03", "08:06", "08:59", "09:10", "09:40"]
    assert (snaps["08:59"]["S1"], snaps["08:59"]["S2"], snaps["09:10"]["S2"]) == (1, 0, 1)
    fine = {IN_PROGRESS: 8}
    assert retention.thin_history(con, ts("10:05"), fine) == 0      # all within its 8 days
    # nine days on, they are thinned to the last of each hour: 08:03, 08:06, 09:10 x 10 units
    assert retention.thin_history(con, ts("10:05") + timedelta(days=9), fine) == 30
    assert sorted(stored(con, IN_PROGRESS)) == ["08:59", "09:40"]


def test_an_earlier_as_of_keeps_the_later_snapshot_of_its_hour(con, kpis) -> None:
    _, overdue = kpis
    for hhmm in ("09:10", "09:40", "09:20"):
        evaluate(con, overdue, hhmm)
    # 09:20 replaced 09:10 (before it) but not 09:40 (after it); the nightly rule keeps 09:40
    assert sorted(stored(con)) == ["09:20", "09:40"]
    assert retention.thin_history(con, ts("10:05"), {}) == 10     # 09:20 at the 10 units
    assert sorted(stored(con)) == ["09:40"]


def test_the_nightly_rule_keeps_the_last_snapshot_of_each_past_hour(con, kpis, monkeypatch) -> None:
    in_progress, overdue = kpis
    # history written before the store thinned it
    monkeypatch.setattr(retention, "thin_pass", lambda con, source, fine: 0)
    evaluate(con, in_progress, "08:00")
    for hhmm in ("08:00", "08:30", "08:59", "09:10", "09:40", "10:01", "10:03"):
        evaluate(con, overdue, hhmm)
    assert len(stored(con)) == 7
    retention.thin_history(con, ts("10:05"), {})
    # hours 08 and 09 keep their last; the running hour 10 is left whole
    assert sorted(stored(con)) == ["08:59", "09:40", "10:01", "10:03"]
    assert sorted(stored(con, IN_PROGRESS)) == ["08:00"]


def _snapshot_rows(path: Path) -> list[tuple]:
    c = duckdb.connect(str(path), read_only=True)
    try:
        return c.execute("SELECT kpi_id, org_no, grain, period_start, value FROM kpi_value "
                         "ORDER BY ALL").fetchall()
    finally:
        c.close()


def test_the_serving_snapshot_drops_what_the_store_thinned(con, kpis, tmp_path) -> None:
    _, overdue = kpis
    serving = tmp_path / "serving"
    evaluate(con, overdue, "08:00")
    first = publish(con, serving, core_tables=False)
    for hhmm in ("08:30", "09:10"):
        evaluate(con, overdue, hhmm)
        inc = publish(con, serving, core_tables=False)     # incremental: copies rows since
        warehouse = con.execute("SELECT kpi_id, org_no, grain, period_start, value FROM kpi_value "
                                "ORDER BY ALL").fetchall()
        assert _snapshot_rows(inc.path) == warehouse
    assert inc.version == first.version + 2
    assert sorted({r[3].strftime("%H:%M") for r in _snapshot_rows(inc.path)}) == ["08:30", "09:10"]


def test_the_baseline_is_the_snapshot_nearest_the_same_clock_time(con, kpis) -> None:
    in_progress, _ = kpis
    # S1's snapshots 7 days before 10:00, as the store kept them: 09:57 (3 min off), 10:02
    # (2 min off, the nearest) and 10:06 (outside 5 minutes)
    for at, value in (("09:57", 2.0), ("10:02", 4.0), ("10:06", 9.0)):
        t = ts(at) - timedelta(days=7)
        con.execute("INSERT INTO kpi_value (kpi_id, org_no, org_level, grain, period_start, period_end, "
                    "value, is_final, computed_at) VALUES (?, 'S1', 'station', 'near-real-time', ?, ?, ?, "
                    "true, ?)", [IN_PROGRESS, t, t, value, t])
    evaluate(con, in_progress, "10:00")
    got = dict(((org, (v, b, st)) for org, v, b, st in con.execute(
        "SELECT org_no, value, baseline, status FROM kpi_value WHERE kpi_id = ? AND period_start = ?",
        [IN_PROGRESS, ts("10:00")]).fetchall()))
    # S1: 1 open against 4 a week before = 0.25, under rel:0.5 -> critical; S2: no snapshot then
    assert got["S1"] == (1, 4.0, "critical")
    assert got["S2"] == (1, None, "no_data")
