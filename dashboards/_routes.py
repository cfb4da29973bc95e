"""CSV export endpoints: the current view's KPI values, the KPI × unit matrix, the records behind a
value. Same filters as the pages (`org`, `period`, `theme`, `kpi`); analyst and admin only; each
export is audited with its row count when the stream ends."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
from flask import Flask, Response, abort, request, stream_with_context

from kpis.export import (Counted, arrow_csv_chunks, content_disposition, csv_chunks, file_name,
                         frame_rows)
from kpis.queries import DetailOutsideWindow, KpiService, parse_period
from kpis.serving import SnapshotUnavailable

MATRIX_HEADER = (("kpi_id", "kpi_id 指标编号"), ("name_zh", "指标名称 name_zh"), ("name_en", "name_en 英文名称"),
                 ("theme", "theme 主题"), ("unit", "unit 单位"), ("org_no", "org_no 单位编码"),
                 ("org_name", "org_name 单位名称"), ("grain", "grain 粒度"),
                 ("period_start", "period_start 周期开始"), ("value", "value 值"),
                 ("status", "status 状态"), ("trend", "trend 趋势"), ("prev_value", "prev_value 上期值"))


def _audited(scope: Any, what: str, filters: dict[str, Any], chunks: Iterator[bytes]) -> Iterator[bytes]:
    from dashboards._components.auth import audit_export
    counted = Counted(chunks)
    yield from counted
    audit_export(scope, what, filters, counted.rows)


def _respond(chunks: Iterator[bytes], name: str) -> Response:
    resp = Response(stream_with_context(chunks), mimetype="text/csv")
    resp.headers["Content-Type"] = "text/csv; charset=utf-8"
    resp.headers["Content-Disposition"] = content_disposition(name)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def register_routes(server: Flask, service: KpiService) -> None:
    """Install /export/values.csv, /export/matrix.csv and /export/detail.csv."""
    from dashboards._components.auth import current_scope, require

    def common() -> tuple[Any, int, Any, str | None, dict[str, Any]]:
        scope = current_scope()
        try:
            version = service._require_version()
        except SnapshotUnavailable:
            abort(503, "no snapshot published yet")
        filters = {k: request.args.get(k) for k in ("org", "period", "theme", "kpi")}
        try:
            period = parse_period(filters["period"], service.data_today(version))
        except ValueError as exc:
            abort(400, str(exc))
        org, under = service.authorise(scope, filters["org"] or None, version)
        if org is None:
            abort(403, "unit not granted")
        filters["org"] = org
        filters["period"] = period.label
        return scope, version, period, org, filters

    def as_of(version: int, scope: Any) -> Any:
        fresh = service.freshness(scope, version=version)
        got = pd.to_datetime(fresh["data_as_of"]).max()
        return None if pd.isna(got) else got.to_pydatetime()

    @require("export")
    def export_values() -> Response:
        scope, version, period, org, filters = common()
        own = service.values(scope, org, period, theme=filters["theme"], version=version)
        kids = service.child_values(scope, org, period, theme=filters["theme"], version=version)
        names = service.org_tree(scope, version=version).set_index("org_no")["org_name"]
        if not own.empty:
            own = own.assign(org_name=own["org_no"].map(names))
        df = pd.concat([d for d in (own, kids) if not d.empty], ignore_index=True) if (
            not own.empty or not kids.empty) else own
        header, rows = frame_rows(df)
        name = file_name(f"values_{filters['theme'] or 'all'}", org, period.label, as_of(version, scope))
        return _respond(_audited(scope, "kpi_values", filters, csv_chunks(header, [rows])), name)

    @require("export")
    def export_matrix() -> Response:
        scope, version, period, org, filters = common()
        df = service.matrix(scope, org, period, version=version)
        header, rows = frame_rows(df, MATRIX_HEADER)
        name = file_name("matrix", org, period.label, as_of(version, scope))
        return _respond(_audited(scope, "kpi_matrix", filters, csv_chunks(header, [rows])), name)

    @require("export")
    def export_detail() -> Response:
        scope, version, period, org, filters = common()
        if not filters["kpi"]:
            abort(400, "kpi is required")
        try:
            gen = service.detail_batches(scope, filters["kpi"], org, period, version)
        except DetailOutsideWindow as exc:
            abort(404, str(exc))
        if gen is None:
            abort(404, f"no detail records for `{filters['kpi']}`")
        header = next(gen)
        name = file_name(f"detail_{filters['kpi']}", org, period.label, as_of(version, scope))
        return _respond(_audited(scope, "kpi_detail", filters, arrow_csv_chunks(header, gen)), name)

    server.add_url_rule("/export/values.csv", "export_values", export_values)
    server.add_url_rule("/export/matrix.csv", "export_matrix", export_matrix)
    server.add_url_rule("/export/detail.csv", "export_detail", export_detail)
