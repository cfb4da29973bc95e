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


def _etl_cycle(con: duckdb.DuckDBPyConnection, run: int, task: str, minute: int) -> None:
    """A worker cycle between two publishes: one repair task merged by ETL run `run` and one
    KPI value restated (both at 10:0`minute`)."""
    at = f"2026-10-15 10:{minute:02d}:00"
    con.execute("INSERT INTO etl_run (run_id, source, table_name, status, started_at, window_low, rows_merged) "
                "VALUES (?, 'dist', 'dist_repair_task', 'ok', ?, ?, 1)", [run, at, f"2026-10-15 10:{minute - 1:02d}:30"])
    con.execute("INSERT INTO dist_repair_task (task_id, org_no, receive_time, status_code, created_at, "
                "updated_at, is_deleted) VALUES (?, 'S1', ?, '01', ?, ?, 0)", [task, at, at, at])
    con.execute("UPDATE kpi_value SET value = ?, computed_at = ? WHERE kpi_id = 'repair.merge_rate' "
                "AND org_no = 'P0'", [10.0 + minute, at])


_SAME = ("SELECT * FROM kpi_value ORDER BY ALL", "SELECT * FROM dist_repair_task ORDER BY ALL",
         "SELECT * FROM source_table_stats ORDER BY ALL", "SELECT * FROM dim_org ORDER BY ALL")


def test_a_publish_brings_the_newest_pruned_file_up_to_date_from_its_own_state(tmp_path: Path) -> None:
    # keep=1: version 1 becomes the spare when 2 is published; 3 is written into 1's file and must
    # carry both cycles since 1 (the cycle before 2 too), not only the one since 2
    con = build_warehouse(tmp_path / "wh.duckdb")
    con.execute("ALTER TABLE etl_run ADD COLUMN window_low TIMESTAMP")
    con.execute("ALTER TABLE etl_run ADD COLUMN rows_merged BIGINT")
    serving = tmp_path / "serving"
    first = publish(con, serving, keep=1)
    _etl_cycle(con, 2, "T4", 1)
    second = publish(con, serving, keep=1)
    _etl_cycle(con, 3, "T5", 2)
    con.execute("UPDATE kpi_value SET value = 77, computed_at = '2026-10-15 10:02:00' "
                "WHERE kpi_id = 'customer.active_total' AND org_no = 'C2'")
    third = publish(con, serving, keep=1)
    assert (first.recycled, second.recycled, third.recycled) == (False, False, True)
    assert published_versions(serving) == [3]
    full = publish(con, tmp_path / "full")
    for sql in _SAME:
        assert _rows(third.path, sql) == _rows(full.path, sql), sql
    assert _rows(third.path, "SELECT task_id FROM dist_repair_task ORDER BY 1") == [
        ("T1",), ("T2",), ("T3",), ("T4",), ("T5",)]
    # the counts move with the merged tasks: 3 + 2 repair tasks
    assert _rows(third.path, "SELECT row_count FROM source_table_stats "
                             "WHERE table_name = 'dist_repair_task'") == [(5,)]
    assert _rows(third.path, "SELECT version FROM snapshot_info") == [(3,)]


def test_a_file_a_reader_holds_is_not_rewritten(tmp_path: Path) -> None:
    con = build_warehouse(tmp_path / "wh.duckdb")
    serving = tmp_path / "serving"
    publish(con, serving, keep=1)
    reader = SnapshotReader(serving)
    with reader.cursor() as (version, cur):
        assert version == 1
        publish(con, serving, keep=1)              # version 1 becomes the spare
        third = publish(con, serving, keep=1)
        assert not third.recycled                  # held: copied from version 2 instead
        assert cur.execute("SELECT version FROM snapshot_info").fetchone() == (1,)
    with reader.cursor(1) as (version, cur):     # a page still on version 1 asks again
        assert (version, cur.execute("SELECT version FROM snapshot_info").fetchone()) == (1, (1,))
    reader.close()
    fourth = publish(con, serving, keep=1)          # version 2's file, held by no one
    assert fourth.recycled
    assert _rows(fourth.path, "SELECT version FROM snapshot_info") == [(4,)]


def test_a_file_older_than_the_last_full_rebuild_is_not_brought_up_to_date(tmp_path: Path) -> None:
    # a task deleted upstream leaves the snapshot only at a full rebuild; a file from before the
    # rebuild would bring it back
    con = build_warehouse(tmp_path / "wh.duckdb")
    serving = tmp_path / "serving"
    publish(con, serving, keep=1)
    publish(con, serving, keep=1)                   # version 1 becomes the spare
    con.execute("DELETE FROM dist_repair_task WHERE task_id = 'T3'")
    rebuilt = publish(con, serving, keep=1, full=True)
    assert not rebuilt.recycled
    after = publish(con, serving, keep=1)           # the spare is version 2, from before the rebuild
    assert not after.recycled
    assert _rows(after.path, "SELECT task_id FROM dist_repair_task ORDER BY 1") == [("T1",), ("T2",)]
    again = publish(con, serving, keep=1)           # version 3's file: the rebuild's own
    assert again.recycled
    assert _rows(again.path, "SELECT task_id FROM dist_repair_task ORDER BY 1") == [("T1",), ("T2",)]


def test_alarm_and_alert_rows_follow_each_kind_of_write(tmp_path: Path) -> None:
    # the incremental publish moves only the alarm and alert rows that differ by the columns every
    # write changes (kpis.publish.SYNCED_BY); each write path of the worker once, then compared
    # with a full publish
    from kpis.alerting import ensure_schema
    con = build_warehouse(tmp_path / "wh.duckdb")
    ensure_schema(con)
    state = ("INSERT INTO alarm_state (kpi_id, org_no, state, severity, value, updated_at, last_item) "
             "VALUES (?, ?, ?, 'critical', ?, ?, ?)")
    con.execute(state, ["repair.merge_rate", "P0", "firing", 30.0, "2026-10-15 10:00:00", '{"value": 30}'])
    con.execute(state, ["repair.merge_rate", "C1", "firing", 31.0, "2026-10-15 10:00:00", '{"value": 31}'])
    con.execute(state, ["repair.merge_rate", "C2", "pending", 32.0, "2026-10-15 10:00:00", '{"value": 32}'])
    con.execute("INSERT INTO alert_event (event_id, created_at, kind) VALUES ('e1', '2026-10-15 10:00:00', 'firing')")
    con.execute("INSERT INTO alert_outbox (notification_id, status, attempts, payload) VALUES ('n1', 'pending', 0, '{}')")
    serving = tmp_path / "serving"
    publish(con, serving, keep=1)
    publish(con, serving, keep=1)
    # the alarm step rewrites P0 (a recomputed row), the dispatcher records an acknowledgement of
    # C1 and escalates nothing, C2 settles (deleted), an event is raised, a delivery fails once
    con.execute("UPDATE alarm_state SET value = 25, updated_at = '2026-10-15 10:02:00', "
                "last_item = '{\"value\": 25}' WHERE org_no = 'P0'")
    con.execute("UPDATE alarm_state SET acked_at = '2026-10-15 10:01:30', acked_by = 'duty' WHERE org_no = 'C1'")
    con.execute("DELETE FROM alarm_state WHERE org_no = 'C2'")
    con.execute("INSERT INTO alert_event (event_id, created_at, kind) VALUES ('e2', '2026-10-15 10:02:00', 'severity_up')")
    con.execute("UPDATE alert_outbox SET status = 'retry', attempts = 1, last_error = 'refused'")
    con.execute("INSERT INTO alert_delivery VALUES ('n1', 1, '2026-10-15 10:02:00', 'error', 'refused', 3.0)")
    third = publish(con, serving, keep=1)
    assert third.recycled and {"alarm_state+", "alert_event+", "alert_outbox+"} <= set(third.tables)
    full = publish(con, tmp_path / "full")
    for table in ("alarm_state", "alert_event", "alert_outbox", "alert_delivery"):
        sql = f"SELECT * FROM {table} ORDER BY ALL"
        assert _rows(third.path, sql) == _rows(full.path, sql), table
    assert _rows(third.path, "SELECT org_no, value, acked_by FROM alarm_state ORDER BY 1") == [
        ("C1", 31.0, "duty"), ("P0", 25.0, None)]


def test_a_spare_that_is_not_a_snapshot_is_dropped_and_the_previous_copied(tmp_path: Path) -> None:
    con = build_warehouse(tmp_path / "wh.duckdb")
    serving = tmp_path / "serving"
    publish(con, serving, keep=1)
    (serving / ".spare.duckdb").write_bytes(b"not a database")     # e.g. a disk full mid-copy
    second = publish(con, serving, keep=1)
    assert not second.recycled
    assert _rows(second.path, "SELECT version FROM snapshot_info") == [(2,)]
    assert _rows(second.path, "SELECT COUNT(*) FROM dim_org") == [(6,)]


def test_a_table_whose_every_row_was_merged_is_copied_whole(tmp_path: Path) -> None:
    # the terminals' heartbeats: every row each minute; replaced by key they were a DELETE and an
    # INSERT of the whole table in each publish's commit
    con = build_warehouse(tmp_path / "wh.duckdb")
    con.execute("ALTER TABLE etl_run ADD COLUMN window_low TIMESTAMP")
    con.execute("ALTER TABLE etl_run ADD COLUMN rows_merged BIGINT")
    serving = tmp_path / "serving"
    publish(con, serving)
    con.execute("UPDATE dist_repair_task SET status_code = '02', updated_at = '2026-10-15 10:01:00'")
    con.execute("INSERT INTO etl_run (run_id, source, table_name, status, started_at, window_low, rows_merged) "
                "VALUES (2, 'dist', 'dist_repair_task', 'ok', '2026-10-15 10:01:00', '2026-10-15 10:00:30', 3)")
    inc = publish(con, serving)
    assert "dist_repair_task" in inc.tables and "dist_repair_task+" not in inc.tables
    full = publish(con, tmp_path / "full")
    sql = "SELECT * FROM dist_repair_task ORDER BY ALL"
    assert _rows(inc.path, sql) == _rows(full.path, sql)
    assert _rows(inc.path, "SELECT DISTINCT status_code FROM dist_repair_task") == [("02",)]


def test_a_file_another_process_reads_without_the_lock_is_not_rewritten(tmp_path: Path) -> None:
    # `python -m etl status` opens a version with DuckDB alone (no flock): DuckDB's own lock,
    # which only another process sees, keeps the publish off that file
    import subprocess
    import sys
    con = build_warehouse(tmp_path / "wh.duckdb")
    serving = tmp_path / "serving"
    first = publish(con, serving, keep=1)
    reader = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
         "print(c.execute('SELECT version FROM snapshot_info').fetchone()[0], flush=True); sys.stdin.read()",
         str(first.path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "1"
        publish(con, serving, keep=1)                # version 1 becomes the spare
        third = publish(con, serving, keep=1)
        assert not third.recycled
        assert _rows(third.path, "SELECT version FROM snapshot_info") == [(3,)]
    finally:
        reader.communicate("", timeout=30)
