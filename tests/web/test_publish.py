"""Publishing snapshots: atomic CURRENT, pruning, incremental equals full, readers survive pruning."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb

from kpis.publish import current_version, publish, published_versions
from kpis.serving import SnapshotReader
from tests.web.snapshot_kit import build_warehouse


def _rows(path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_publish_flips_current_and_keeps_the_last_three(tmp_path: Path) -> None:
    con = build_warehouse(tmp_path / "wh.duckdb")
    serving = tmp_path / "serving"
    results = [publish(con, serving) for _ in range(5)]
    assert [r.version for r in results] == [1, 2, 3, 4, 5]
    assert current_version(serving) == 5
    assert published_versions(serving) == [3, 4, 5]
    assert not [p for p in serving.iterdir() if p.name.endswith((".tmp", ".wal"))]


def test_snapshot_holds_what_the_web_reads(tmp_path: Path) -> None:
    con = build_warehouse(tmp_path / "wh.duckdb")
    path = publish(con, tmp_path / "serving").path
    tables = {r[0] for r in _rows(path, "SELECT table_name FROM information_schema.tables")}
    assert {"kpi_value", "kpi_def", "dim_org", "dim_org_ancestor", "etl_freshness", "etl_run",
            "etl_reject_count", "source_table_stats", "dist_repair_task", "snapshot_info"} <= tables
    assert {"meter_curve_15min", "meter_collection_daily", "detail_window"} <= tables   # detail window
    # 3 rejects for dist_repair_task, one of them resolved: 2 unresolved (1 per reason)
    assert sorted(_rows(path, "SELECT reason, reject_count FROM etl_reject_count")) == [
        ("end before start", 1), ("unknown org", 1)]
    assert _rows(path, "SELECT row_count, deleted_count, max_updated_at FROM source_table_stats "
                       "WHERE table_name = 'dist_repair_task'") == [(3, 0, datetime(2026, 10, 15, 10, 0))]


def test_incremental_publish_equals_a_full_one(tmp_path: Path) -> None:
    con = build_warehouse(tmp_path / "wh.duckdb")
    serving = tmp_path / "serving"
    publish(con, serving)
    # the worker's next cycle: one KPI value restated, one new repair task loaded by an ETL run
    con.execute("UPDATE kpi_value SET value = 50, status = 'critical', computed_at = '2026-10-15 10:01:00' "
                "WHERE kpi_id = 'repair.merge_rate' AND org_no = 'P0'")
    con.execute("ALTER TABLE etl_run ADD COLUMN window_low TIMESTAMP")
    con.execute("ALTER TABLE etl_run ADD COLUMN rows_merged BIGINT")
    con.execute("INSERT INTO etl_run (run_id, source, table_name, status, started_at, window_low, rows_merged) "
                "VALUES (2, 'dist', 'dist_repair_task', 'ok', '2026-10-15 10:01:00', '2026-10-15 10:00:30', 1)")
    con.execute("INSERT INTO dist_repair_task (task_id, org_no, receive_time, status_code, created_at, "
                "updated_at, is_deleted) VALUES ('T4', 'S1', '2026-10-15 10:00:40', '01', "
                "'2026-10-15 10:00:40', '2026-10-15 10:00:40', 0)")
    inc = publish(con, serving)
    assert "kpi_value+" in inc.tables and "dist_repair_task+" in inc.tables
    full = publish(con, tmp_path / "full")
    for sql in ("SELECT * FROM kpi_value ORDER BY ALL", "SELECT * FROM dist_repair_task ORDER BY ALL",
                "SELECT * FROM dim_org ORDER BY ALL"):
        assert _rows(inc.path, sql) == _rows(full.path, sql)
    assert _rows(inc.path, "SELECT value FROM kpi_value WHERE kpi_id = 'repair.merge_rate' "
                           "AND org_no = 'P0'") == [(50.0,)]


def test_reader_rereads_current_when_its_version_was_pruned(tmp_path: Path) -> None:
    con = build_warehouse(tmp_path / "wh.duckdb")
    serving = tmp_path / "serving"
    publish(con, serving)
    reader = SnapshotReader(serving)
    with reader.cursor() as (version, cur):
        assert version == 1
        # a publish prunes version 1 while this request still reads it
        for _ in range(3):
            publish(con, serving, keep=1)
        assert cur.execute("SELECT COUNT(*) FROM dim_org").fetchone() == (6,)
    reader.close()
    # another web process read "1" from CURRENT just before the prune: it opens the current one
    other = SnapshotReader(serving)
    with other.cursor(version=1) as (version, cur):
        assert version == 4
        assert cur.execute("SELECT version FROM snapshot_info").fetchone() == (4,)
    other.close()


def test_reader_keeps_the_version_asked_for_open_even_when_it_is_the_oldest(tmp_path: Path) -> None:
    con = build_warehouse(tmp_path / "wh.duckdb")
    serving = tmp_path / "serving"
    for _ in range(4):
        publish(con, serving, keep=4)
    reader = SnapshotReader(serving)
    for version in (2, 3, 4, 1):     # a page still on version 1 asks after the newer ones opened
        with reader.cursor(version) as (got, cur):
            assert got == version
            assert cur.execute("SELECT version FROM snapshot_info").fetchone() == (version,)
    reader.close()
