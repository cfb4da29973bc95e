"""The records behind a value are exactly the facts counted under the unit."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import yaml

from kpis.detail import iter_detail
from kpis.periods import parse_period
from kpis.registry import load_registry
from tests.kpis.harness import CASES_DIR, load_inputs


def test_detail_lists_the_tasks_behind_the_station_value(tmp_path: Path) -> None:
    case = yaml.safe_load((CASES_DIR / "repair.arrival_ontime_rate_urban.conventions_10_1.yaml")
                          .read_text(encoding="utf-8"))
    db = tmp_path / "snap.duckdb"
    con = duckdb.connect(str(db))
    load_inputs(con, case)
    con.close()
    ro = duckdb.connect(str(db), read_only=True)        # as the web tier reads a snapshot
    k = load_registry().get("repair.arrival_ontime_rate_urban")
    as_of = datetime(2024, 7, 2, 8, 0)
    rows = [r for batch in iter_detail(ro.cursor(), k, ["S1"], parse_period("2024-07-01", as_of), as_of)
            for r in batch]
    # S1's population by hand: T1 (on time), T2 (late), T3 (not arrived, due passed: late)
    assert [(r[0], r[3], r[4]) for r in rows] == [("T1", "1", "1"), ("T2", "0", "1"), ("T3", "0", "1")]
    k1 = [r[0] for batch in iter_detail(ro.cursor(), k, ["K1"], parse_period("2024-07-01", as_of), as_of)
          for r in batch]
    assert k1 == ["T1", "T2", "T3", "T4"]


def _detail_keys(case_file: str, kpi: str, units: list[str], period: str, tmp_path: Path) -> list[str]:
    case = yaml.safe_load((CASES_DIR / case_file).read_text(encoding="utf-8"))
    db = tmp_path / f"snap{len(list(tmp_path.iterdir()))}.duckdb"     # a new snapshot each call
    con = duckdb.connect(str(db))
    load_inputs(con, case)
    con.close()
    ro = duckdb.connect(str(db), read_only=True)
    as_of = datetime.fromisoformat(case["as_of"])
    k = load_registry().get(kpi)
    return [r[0] for batch in iter_detail(ro.cursor(), k, units, parse_period(period, as_of), as_of)
            for r in batch]


def test_detail_of_clock_deviation_lists_the_meters_counted(tmp_path: Path) -> None:
    """The meters behind metering.alarm_clock_deviation, from its kept table built for the
    period's days only (kpis.prelude.Marked.for_days). By hand (the cases' working): at 07-01
    S1 counts K2M (latest 06-30, 400) and K4M (-301); the root P also K6M (06-25 = D-6), K8M (moved
    to S3) and K10M (unknown org). Over two days: at 07-10 X (07-08, 400) and W (07-04 = D-6,
    302), not Z, whose off check of 06-24 is outside the window and 07-11 after the day."""
    case = "metering.alarm_clock_deviation.latest_check.yaml"
    kpi = "metering.alarm_clock_deviation"
    assert _detail_keys(case, kpi, ["S1"], "2024-07-01", tmp_path) == ["K2M", "K4M"]
    assert _detail_keys(case, kpi, ["P"], "2024-07-01", tmp_path) == ["K10M", "K2M", "K4M", "K6M", "K8M"]
    span = "metering.alarm_clock_deviation.periods_span.yaml"
    assert _detail_keys(span, kpi, ["S1"], "2024-07-10", tmp_path) == ["W", "X"]
    assert _detail_keys(span, kpi, ["S1"], "2024-07-01", tmp_path) == ["W", "Y"]
