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
