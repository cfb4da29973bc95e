"""A hand-made warehouse published through kpis.publish: the web tests' snapshot.

Org tree (mis_org / mis_grid, dim_org, dim_org_ancestor):

    P0 浙江省公司 (province, root)
    ├── C1 杭州供电公司 (city) ── X1 西湖县公司 (county) ── S1 西湖供电所 (station) ── G1 西湖网格一 (grid)
    └── C2 宁波供电公司 (city)

KPI values on 2026-10-15 (daily) and 2026-10-14 (previous day, for the trend arrows):

    repair.arrival_ontime_rate_urban  P0 96.50 warning (prev 97.00 ↓), C1 99.00 ok (prev 98.00 ↑),
                                      C2 90.00 critical (prev 90.00 →), X1 99.00 ok, S1 99.00 ok
    repair.arrival_minutes_avg_urban  P0 31.25 ok
    repair.merge_rate                 P0 12.00 ok
    customer.active_total             P0 1204 ok, C1 1000 ok, C2 204 ok
    metering.collection_success_rate  P0 99.10 ok   (source meter is stale in this snapshot)

Open repair tasks under P0 at the dist data time 2026-10-15 10:00: T1 (S1, urban, accepted 09:00,
60 min elapsed > 45: overdue), T2 (S1, rural, received 09:30, 30 min < 90), T3 restored (not open).

Daily meter collection (metering firehose) on 2026-10-14 in S1, 台区 TG1 (grid G1), behind
metering.daily_collect_success_rate (S1 33.33 critical on 2026-10-14):
M1 collected 10-15 02:00 (before 09:00 of the next day: counts), M2 collected 10-15 09:30 (too
late), M3 failed (02), M4 status 04 (not to be collected: left out), M5 collected but its
collection object has coll_flag 0 (left out). So the records behind the value are M1 (1/1),
M2 (0/1), M3 (0/1). M1 also has a row on 2026-09-20, older than the snapshot's metering window
(the newest day 10-14 and the 21 days before it, complete from 2026-09-30 on).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb

from etl.schema import ods_statements
from kpis.publish import PublishResult, publish

DAY = datetime(2026, 10, 15)
UNITS = {  # org_no: (name, level, parent, org_type)
    "P0": ("浙江省公司", "province", None, "02"),
    "C1": ("杭州供电公司", "city", "P0", "03"),
    "C2": ("宁波供电公司", "city", "P0", "03"),
    "X1": ("西湖县公司", "county", "C1", "04"),
    "S1": ("西湖供电所", "station", "X1", "05"),
    "G1": ("西湖网格一", "grid", "S1", None),
}
KPIS = [  # kpi_id, theme, name_zh, name_en, unit, direction, warning, critical, sources
    ("repair.arrival_ontime_rate_urban", "repair", "城区抢修到达及时率", "Urban on-time arrival rate (45 min)",
     "%", "higher_better", "98", "95", "dist;cs95598"),
    ("repair.arrival_minutes_avg_urban", "repair", "城区平均到达时长", "Urban mean arrival minutes",
     "minutes", "lower_better", "40", "45", "dist;cs95598"),
    ("repair.merge_rate", "repair", "抢修工单合并率", "Repair order merge rate", "%", "band", "rel:0.5..2",
     "rel:0.2..5", "cs95598"),
    ("customer.active_total", "customer", "在册客户总数", "Active customers (total)", "count", "band",
     "rel:0.99..1.01", "rel:0.97..1.03", "mis"),
    ("metering.collection_success_rate", "metering", "采集成功率", "Collection success rate", "%",
     "higher_better", "98", "95", "meter"),
    ("metering.daily_collect_success_rate", "metering", "日采集成功率", "Daily collection success rate", "%",
     "higher_better", "99.5", "99", "meter"),
]
VALUES = [  # kpi_id, org_no, day offset (0 = DAY, -1 = previous day), value, status
    ("repair.arrival_ontime_rate_urban", "P0", 0, 96.5, "warning"),
    ("repair.arrival_ontime_rate_urban", "P0", -1, 97.0, "warning"),
    ("repair.arrival_ontime_rate_urban", "C1", 0, 99.0, "ok"),
    ("repair.arrival_ontime_rate_urban", "C1", -1, 98.0, "ok"),
    ("repair.arrival_ontime_rate_urban", "C2", 0, 90.0, "critical"),
    ("repair.arrival_ontime_rate_urban", "C2", -1, 90.0, "critical"),
    ("repair.arrival_ontime_rate_urban", "X1", 0, 99.0, "ok"),
    ("repair.arrival_ontime_rate_urban", "S1", 0, 99.0, "ok"),
    ("repair.arrival_minutes_avg_urban", "P0", 0, 31.25, "ok"),
    ("repair.merge_rate", "P0", 0, 12.0, "ok"),
    ("customer.active_total", "P0", 0, 1204, "ok"),
    ("customer.active_total", "C1", 0, 1000, "ok"),
    ("customer.active_total", "C2", 0, 204, "ok"),
    ("metering.collection_success_rate", "P0", 0, 99.1, "ok"),
    ("metering.daily_collect_success_rate", "S1", -1, 33.33, "critical"),
]
COLLECTION = [  # meter, data_date, coll_status, success_time, coll_flag of its collection object
    ("M1", "2026-10-14", "01", "2026-10-15 02:00:00", 1),
    ("M2", "2026-10-14", "01", "2026-10-15 09:30:00", 1),
    ("M3", "2026-10-14", "02", None, 1),
    ("M4", "2026-10-14", "04", None, 1),
    ("M5", "2026-10-14", "01", "2026-10-15 02:00:00", 0),
    ("M1", "2026-09-20", "01", "2026-09-21 02:00:00", 1),
]
TS = "2026-10-15 10:00:00"


def _chain(org: str) -> list[str]:
    chain = [org]
    while UNITS[chain[-1]][2] is not None:
        chain.append(UNITS[chain[-1]][2])
    return chain


def build_warehouse(path: Path, now: datetime | None = None) -> duckdb.DuckDBPyConnection:
    """The warehouse tables the web reads, filled with the rows in the module docstring."""
    now = now or datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None, microsecond=0)
    con = duckdb.connect(str(path))
    for stmt in ods_statements():
        con.execute(stmt)
    con.execute("CREATE TABLE dim_org (org_no VARCHAR, org_name VARCHAR, org_level VARCHAR, "
                "parent_no VARCHAR, depth INTEGER, is_root BOOLEAN)")
    con.execute("CREATE TABLE dim_org_ancestor (org_no VARCHAR, ancestor_no VARCHAR, ancestor_level VARCHAR)")
    for org, (name, level, parent, org_type) in UNITS.items():
        chain = _chain(org)
        con.execute("INSERT INTO dim_org VALUES (?, ?, ?, ?, ?, ?)",
                    [org, name, level, parent, len(chain) - 1, parent is None])
        for anc in chain:
            con.execute("INSERT INTO dim_org_ancestor VALUES (?, ?, ?)", [org, anc, UNITS[anc][1]])
        if level == "grid":
            con.execute("INSERT INTO mis_grid (grid_no, grid_name, org_no, status_code, created_at, "
                        "updated_at, is_deleted) VALUES (?, ?, ?, '01', ?, ?, 0)", [org, name, parent, TS, TS])
        else:
            con.execute("INSERT INTO mis_org (org_no, org_name, parent_org_no, org_type, status_code, "
                        "created_at, updated_at, is_deleted) VALUES (?, ?, ?, ?, '01', ?, ?, 0)",
                        [org, name, parent, org_type, TS, TS])
    con.execute("CREATE TABLE kpi_def (kpi_id VARCHAR, name_zh VARCHAR, name_en VARCHAR, theme VARCHAR, "
                "unit VARCHAR, direction VARCHAR, grain VARCHAR, warning VARCHAR, critical VARCHAR, "
                "sources VARCHAR, definition VARCHAR, formula VARCHAR, sort_no INTEGER)")
    for i, (kid, theme, zh, en, unit, direction, warn, crit, src) in enumerate(KPIS):
        con.execute("INSERT INTO kpi_def VALUES (?, ?, ?, ?, ?, ?, 'daily', ?, ?, ?, ?, ?, ?)",
                    [kid, zh, en, theme, unit, direction, warn, crit, src, f"{zh}的定义", f"{kid} formula", i])
    con.execute("CREATE TABLE kpi_value (kpi_id VARCHAR, theme VARCHAR, org_no VARCHAR, org_level VARCHAR, "
                "grain VARCHAR, period_start TIMESTAMP, period_end TIMESTAMP, value DOUBLE, numerator DOUBLE, "
                "denominator DOUBLE, baseline DOUBLE, status VARCHAR, is_final BOOLEAN, computed_at TIMESTAMP, "
                "watermarks VARCHAR)")
    themes = {k[0]: k[1] for k in KPIS}
    for kid, org, offset, value, status in VALUES:
        start = DAY + timedelta(days=offset)
        con.execute("INSERT INTO kpi_value VALUES (?, ?, ?, ?, 'daily', ?, ?, ?, ?, 100, NULL, ?, ?, ?, '{}')",
                    [kid, themes[kid], org, UNITS[org][1], start, start + timedelta(days=1), value, value,
                     status, offset < 0, TS])
    con.execute("CREATE TABLE etl_freshness (source VARCHAR, last_good_high TIMESTAMP, last_pass_at TIMESTAMP, "
                "last_status VARCHAR, last_error VARCHAR)")
    for src in ("mis", "cs", "dist"):
        con.execute("INSERT INTO etl_freshness VALUES (?, ?, ?, 'ok', NULL)", [src, now - timedelta(seconds=20), now])
    con.execute("INSERT INTO etl_freshness VALUES ('meter', ?, ?, 'failed', 'source_meter.db: database is locked')",
                [now - timedelta(hours=3), now])
    con.execute("CREATE TABLE etl_run (run_id BIGINT, source VARCHAR, table_name VARCHAR, status VARCHAR, "
                "error VARCHAR, started_at TIMESTAMP)")
    con.execute("INSERT INTO etl_run VALUES (1, 'mis', 'mis_org', 'ok', NULL, ?)", [now])
    con.execute("CREATE TABLE etl_reject (run_id BIGINT, source VARCHAR, table_name VARCHAR, row_key VARCHAR, "
                "reason VARCHAR, raw VARCHAR, rejected_at TIMESTAMP, resolved_at TIMESTAMP, resolved_run_id BIGINT)")
    con.execute("INSERT INTO etl_reject VALUES (1, 'dist', 'dist_repair_task', 'T9', 'unknown org', '{}', ?, NULL, NULL),"
                "(1, 'dist', 'dist_repair_task', 'T8', 'end before start', '{}', ?, NULL, NULL),"
                "(1, 'dist', 'dist_repair_task', 'T7', 'unknown org', '{}', ?, ?, 2)", [now, now, now, now])
    con.execute("INSERT INTO dist_tg (tg_no, tg_name, feeder_no, pub_priv_flag, org_no, grid_no, urban_rural, "
                "lon, lat, run_status, created_at, updated_at, is_deleted) VALUES "
                "('TG1', '西湖1号台区', 'F1', '01', 'S1', 'G1', '01', 120.1, 30.2, '01', ?, ?, 0)", [TS, TS])
    con.execute("INSERT INTO cs_work_order (wo_no, accept_time, created_at, updated_at, is_deleted) "
                "VALUES ('W1', '2026-10-15 09:00:00', ?, ?, 0)", [TS, TS]) if _has_cols(
        con, "cs_work_order", {"wo_no", "accept_time"}) else None
    for task, wo, area, receive, restore, lon in (
            ("T1", "W1", "01", "2026-10-15 09:05:00", None, 120.11),
            ("T2", None, "02", "2026-10-15 09:30:00", None, 120.12),
            ("T3", None, "01", "2026-10-15 08:00:00", "2026-10-15 09:00:00", 120.13)):
        con.execute("INSERT INTO dist_repair_task (task_id, wo_no, org_no, tg_no, urban_rural, lon, lat, "
                    "receive_time, restore_time, status_code, created_at, updated_at, is_deleted) "
                    "VALUES (?, ?, 'S1', 'TG1', ?, ?, 30.2, ?, ?, ?, ?, ?, 0)",
                    [task, wo, area, lon, receive, restore, "06" if restore else "02", receive, TS])
    for meter, day, status, success, flag in COLLECTION:
        if day == "2026-10-14":
            con.execute("INSERT INTO meter_coll_obj (meter_asset_no, tg_no, org_no, coll_flag, status_code, "
                        "created_at, updated_at, is_deleted) VALUES (?, 'TG1', 'S1', ?, '01', ?, ?, 0)",
                        [meter, flag, TS, TS])
        con.execute("INSERT INTO meter_collection_daily (meter_asset_no, data_date, org_no, tg_no, coll_status, "
                    "success_time, created_at, updated_at, is_deleted) VALUES (?, ?, 'S1', 'TG1', ?, ?, ?, ?, 0)",
                    [meter, day, status, success, TS, TS])
    return con


def _has_cols(con: duckdb.DuckDBPyConnection, table: str, cols: set[str]) -> bool:
    got = {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]).fetchall()}
    return cols <= got


def publish_fixture(data_dir: Path) -> PublishResult:
    """Build the warehouse under data_dir and publish one snapshot to data_dir/serving."""
    data_dir.mkdir(parents=True, exist_ok=True)
    con = build_warehouse(data_dir / "warehouse.duckdb")
    try:
        return publish(con, data_dir / "serving")
    finally:
        con.close()
