"""CSV exports: Excel-safe bytes, formula neutralising, streamed endpoints, roles and audit."""
from __future__ import annotations

import csv
import io

import pyarrow as pa

from kpis.appdb import AppDb
from kpis.export import arrow_csv_chunks, content_disposition, csv_chunks, file_name
from tests.web.conftest import Web, login


def test_csv_bytes_are_excel_safe() -> None:
    body = b"".join(csv_chunks(["单位 org", "值 value"], [[["西湖供电所", 1.5], ["=1+2", None]],
                                                         [["-3", "@x"], ["\t", "a,b"]]]))
    assert body.startswith(b"\xef\xbb\xbf") and not body[3:].startswith(b"sep=")
    assert body.count(b"\r\n") == 5 and b"\n" not in body.replace(b"\r\n", b"")
    rows = list(csv.reader(io.StringIO(body[3:].decode("utf-8"), newline="")))
    assert rows == [["单位 org", "值 value"], ["西湖供电所", "1.5"], ["'=1+2", ""], ["'-3", "'@x"],
                    ["'\t", "a,b"]]


def test_arrow_batches_follow_the_same_rules() -> None:
    batch = pa.record_batch({"name": ["杭州", "+SUM(A1)", None],
                             "at": pa.array([1_700_000_000_000_000, None, 0], pa.timestamp("us")),
                             "n": [1, 2, 3]})
    body = b"".join(arrow_csv_chunks(["名称 name", "时间 at", "n"], [batch, batch.slice(0, 0)]))
    assert body.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(body[3:].decode("utf-8"), newline="")))
    assert rows == [["名称 name", "时间 at", "n"], ["杭州", "2023-11-14 22:13:20", "1"],
                    ["'+SUM(A1)", "", "2"], ["", "1970-01-01 00:00:00", "3"]]


def test_file_name_carries_org_period_and_data_time() -> None:
    from datetime import datetime
    name = file_name("values_repair", "C01", "2026-10", datetime(2026, 10, 15, 12, 5))
    assert name == "values_repair_C01_2026-10_asof202610151205.csv"
    header = content_disposition("明细_C01.csv")
    assert "filename*=UTF-8''%E6%98%8E%E7%BB%86_C01.csv" in header


def test_analyst_exports_the_view_and_is_audited(web: Web, client) -> None:  # type: ignore[no-untyped-def]
    login(client, "ana")
    resp = client.get("/export/values.csv?org=P0&period=2026-10-15&theme=repair")
    assert resp.status_code == 200
    assert resp.headers["Content-Disposition"].startswith(
        'attachment; filename="values_repair_P0_2026-10-15_asof')
    text = resp.data.decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    by = {(r["kpi_id 指标编号"], r["org_no 单位编码"]): r for r in rows}
    row = by[("repair.arrival_ontime_rate_urban", "C2")]
    assert row["org_name 单位名称"] == "宁波供电公司" and row["value 值"] == "90.0"
    assert row["status 状态"] == "critical" and row["period_start 周期开始"] == "2026-10-15 00:00:00"
    assert len(rows) == 5          # P0's three repair KPIs + C1 and C2 on-time arrival
    audit = AppDb(web.settings.app_db_path).audit_rows(user="ana", event="export", limit=10)
    assert audit and audit[0]["row_count"] == 5


def test_manager_may_not_export(client) -> None:  # type: ignore[no-untyped-def]
    login(client, "mgr")
    assert client.get("/export/matrix.csv?period=2026-10-15").status_code == 403


def test_export_of_a_unit_outside_the_grant_is_refused(web: Web) -> None:
    c = web.app.server.test_client()  # type: ignore[attr-defined]
    login(c, "ana")
    assert c.get("/export/values.csv?org=NOPE&period=2026-10-15").status_code == 403
    resp = c.get("/export/matrix.csv?org=C1&period=2026-10-15")
    rows = list(csv.reader(io.StringIO(resp.data.decode("utf-8-sig"), newline="")))
    assert {r[5] for r in rows[1:]} == {"C1", "X1"}     # C1 and its child; never C2 or P0
