"""Alert centre for duty staff: firing now, acknowledge, silence, history, deliveries, CSV export."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import dash
from dash import ALL, Input, Output, State, callback, ctx, dcc, html, no_update

from dashboards._components import deps, shell
from dashboards._components.cards import message, table
from dashboards._components.fmt import time_text
from dashboards._components.i18n import norm_lang
from dashboards._components.ids import PageIds
from kpis import alerting, roster
from kpis.export import csv_chunks
from kpis.scope import can

dash.register_page(__name__, path="/alerts", name="告警中心 / Alerts", order=95, title_key="alerts")
ids = PageIds("alerts")
TZ = ZoneInfo("Asia/Shanghai")
SEVERITY = {"critical": "严重 / critical", "warning": "预警 / warning"}
KIND = {"firing": "告警", "severity_up": "升级为严重", "repeat": "持续", "resolved": "恢复",
        "escalation": "无人确认升级", "source_late": "数据源延迟", "source_back": "数据源恢复"}


def _now() -> datetime:
    """Beijing wall clock, naive, like every timestamp in the warehouse."""
    return datetime.now(TZ).replace(tzinfo=None)


def _engine() -> Any:
    from dashboards._components.auth import app_db
    return alerting.engine_at(app_db().path)


def layout(org: str | None = None, period: str | None = None, lang: str | None = None,
           **_other: str) -> html.Div:
    """Frame and body (rendered per snapshot) plus the acknowledge / silence / export controls."""
    return html.Div([
        shell.frame(ids, "/alerts", "alerts", org, period, lang),
        html.Section(className="alert-actions", children=[
            html.H2("操作 / Actions"),
            html.Label(["确认备注 / Ack comment",
                        dcc.Input(id=ids("ack-comment"), type="text", debounce=False, className="wide")]),
            html.Div(id=ids("action-msg"), role="status"),
            html.H3("静默 / Silence"),
            html.Div(className="silence-form", children=[
                html.Label(["指标 / KPI id", dcc.Input(id=ids("sil-kpi"), type="text")]),
                html.Label(["单位 / Org unit", dcc.Input(id=ids("sil-org"), type="text", value=org or "")]),
                html.Label(["时长(小时) / Hours", dcc.Input(id=ids("sil-hours"), type="number", value=2,
                                                           min=0.25, max=24 * 14, step=0.25)]),
                html.Label(["原因 / Reason", dcc.Input(id=ids("sil-reason"), type="text")]),
                html.Button("静默 / Silence", id=ids("sil-go"), n_clicks=0),
            ]),
            html.H3("导出 / Export (CSV, UTF-8 BOM)"),
            html.Div([html.Button("告警历史 / History", id=ids("exp-history"), n_clicks=0),
                      html.Button("投递记录 / Deliveries", id=ids("exp-deliveries"), n_clicks=0),
                      html.Button("确认与静默 / Acks & silences", id=ids("exp-acks"), n_clicks=0)]),
            dcc.Download(id=ids("download")),
        ]),
    ])


def _scope_orgs(scope: Any) -> list[str]:
    return sorted(getattr(scope, "org_nos", ()) or ())


def _app_acks(orgs: list[str]) -> list[dict[str, Any]]:
    wanted = set(orgs)
    return [a for a in roster.rows(_engine(), roster.alert_ack) if a["org_no"] in wanted]


def _app_silences(orgs: list[str], now: datetime) -> list[dict[str, Any]]:
    wanted = set(orgs)
    return [s for s in roster.active_silences(_engine(), now)
            if s["org_no"] in wanted or (s["org_no"] is None)]


def render(version: int | None, filters: dict[str, Any]) -> Any:
    """Firing now, active silences, undelivered notifications and recent history."""
    lang = norm_lang(filters.get("lang"))
    service, scope = deps.kpi_service(), deps.scope()
    orgs, now = _scope_orgs(scope), _now()
    with service.reader.cursor(version) as (_v, cur):
        firing = alerting.firing_now(cur, orgs)
        events = alerting.history(cur, orgs, limit=200)
        dead = alerting.deliveries(cur, orgs, status="dead")
    acked = {(a["kpi_id"], a["org_no"], a["alarm_since"]): a for a in _app_acks(orgs)}
    may_ack = can(scope, "acknowledge")
    rows = []
    for f in firing:
        ack = acked.get((f["kpi_id"], f["org_no"], f["since"]))
        who = f["acked_by"] or (ack and ack["user_name"])
        key = f"{f['kpi_id']}|{f['org_no']}|{f['since'].isoformat()}"
        button = html.Button("确认 / Ack", id={"type": "alerts-ack", "key": key}, n_clicks=0,
                             className="ack") if may_ack and not who else ""
        rows.append({"severity": SEVERITY.get(f["severity"], f["severity"]),
                     "kpi": f"{f['name_zh'] or ''} ({f['kpi_id']})",
                     "org": f"{f['org_name'] or ''} ({f['org_no']})", "period": f["period"],
                     "value": "" if f["value"] is None else f"{f['value']:.2f} {f['unit'] or ''}",
                     "since": time_text(f["since"]),
                     "state": ("暂停(数据源延迟) / held" if f["held"] else f["state"]),
                     "acked": f"{who} {time_text(f['acked_at'] or (ack and ack['acked_at']))}" if who else "",
                     "action": button, "_class": f"sev-{f['severity']}"})
    silences = _app_silences(orgs, now)
    may_silence = can(scope, "silence")
    sil_rows = [{"what": f"{s['kpi_id'] or '全部指标'} @ {s['org_no'] or '全部单位'}",
                 "window": f"{time_text(s['starts_at'])} – {time_text(s['ends_at'])}",
                 "reason": s["reason"], "by": s["user_name"],
                 "action": html.Button("结束 / End", id={"type": "alerts-unsilence", "key": s["silence_id"]},
                                       n_clicks=0) if may_silence else ""} for s in silences]
    hist_rows = [{"at": time_text(e["created_at"]), "kind": KIND.get(e["kind"], e["kind"]),
                  "kpi": e["name_zh"] or e["kpi_id"] or "", "org": e["org_no"] or e["source"] or "",
                  "severity": e["severity"] or "", "value": "" if e["value"] is None else f"{e['value']:.2f}",
                  "silenced": "静默" if e["silenced"] else ""} for e in events]
    dead_rows = [{"at": time_text(d["created_at"]), "recipient": d["recipient"], "channel": d["channel"],
                  "attempts": d["attempts"], "error": d["last_error"] or ""} for d in dead]
    return html.Div([
        html.H2(f"当前告警 / Firing now ({len(rows)})"),
        table([("severity", "级别"), ("kpi", "指标"), ("org", "单位"), ("period", "周期"), ("value", "当前值"),
               ("since", "开始时间"), ("state", "状态"), ("acked", "已确认"), ("action", "")], rows)
        if rows else message("当前没有告警 / Nothing firing"),
        html.H2(f"生效中的静默 / Active silences ({len(sil_rows)})"),
        table([("what", "范围"), ("window", "时段"), ("reason", "原因"), ("by", "操作人"), ("action", "")],
              sil_rows) if sil_rows else html.Div("—"),
        html.H2(f"未送达 / Undelivered ({len(dead_rows)})"),
        table([("at", "时间"), ("recipient", "接收人"), ("channel", "渠道"), ("attempts", "尝试次数"),
               ("error", "错误")], dead_rows, cls="grid dead") if dead_rows else html.Div("—"),
        html.H2("历史 / History (最近 200 条)"),
        table([("at", "时间"), ("kind", "事件"), ("kpi", "指标"), ("org", "单位/数据源"), ("severity", "级别"),
               ("value", "值"), ("silenced", "")], hist_rows),
    ], lang=lang)


shell.register(ids, render, cache=False)


def _rerender(filters: dict[str, Any] | None) -> Any:
    return shell.safe_render(render, deps.kpi_service().version(), filters or {}, cache=False)


@callback(Output(ids("action-msg"), "children"), Output(ids("body"), "children", allow_duplicate=True),
          Input({"type": "alerts-ack", "key": ALL}, "n_clicks"), State(ids("ack-comment"), "value"),
          State(ids("filters"), "data"), prevent_initial_call=True)
def acknowledge(clicks: list[int | None], comment: str | None, filters: dict[str, Any]) -> Any:
    """Record an acknowledgement in app.db; the worker copies it to the warehouse next cycle."""
    if not ctx.triggered_id or not any(clicks or []):
        return no_update, no_update
    scope = deps.scope()
    kpi_id, org_no, since = ctx.triggered_id["key"].split("|", 2)
    if not can(scope, "acknowledge") or org_no not in getattr(scope, "org_nos", ()):
        return message("无权确认 / Not allowed to acknowledge"), no_update
    roster.acknowledge(_engine(), kpi_id, org_no, datetime.fromisoformat(since), scope.user,
                       (comment or "").strip(), _now())
    _audit(scope, "alert_ack", {"kpi_id": kpi_id, "org_no": org_no, "since": since, "comment": comment})
    return message(f"已确认 / Acknowledged: {kpi_id} @ {org_no}"), _rerender(filters)


@callback(Output(ids("action-msg"), "children", allow_duplicate=True),
          Output(ids("body"), "children", allow_duplicate=True),
          Input(ids("sil-go"), "n_clicks"), State(ids("sil-kpi"), "value"), State(ids("sil-org"), "value"),
          State(ids("sil-hours"), "value"), State(ids("sil-reason"), "value"), State(ids("filters"), "data"),
          prevent_initial_call=True)
def silence(n: int | None, kpi_id: str | None, org_no: str | None, hours: float | None,
            reason: str | None, filters: dict[str, Any]) -> Any:
    """Silence a KPI and/or org unit for a window; duty staff only within their units."""
    if not n:
        return no_update, no_update
    scope = deps.scope()
    kpi_id, org_no = (kpi_id or "").strip() or None, (org_no or "").strip() or None
    if not can(scope, "silence"):
        return message("无权静默 / Not allowed to silence"), no_update
    if org_no is None and scope.role != "admin":
        return message("请填写单位 / Name an org unit (only admins silence a KPI everywhere)"), no_update
    if org_no is not None and org_no not in getattr(scope, "org_nos", ()):
        return message(f"单位 {org_no} 不在您的权限范围内 / Unit outside your scope"), no_update
    now = _now()
    try:
        silence_id = roster.add_silence(_engine(), kpi_id, org_no, now, now + timedelta(hours=float(hours or 0)),
                                        (reason or "").strip(), scope.user, now)
    except roster.RosterError as exc:
        return message("静默未保存 / Silence not saved", str(exc)), no_update
    _audit(scope, "alert_silence", {"silence_id": silence_id, "kpi_id": kpi_id, "org_no": org_no,
                                    "hours": hours, "reason": reason})
    return message(f"已静默 / Silenced: {kpi_id or '*'} @ {org_no or '*'}"), _rerender(filters)


@callback(Output(ids("action-msg"), "children", allow_duplicate=True),
          Output(ids("body"), "children", allow_duplicate=True),
          Input({"type": "alerts-unsilence", "key": ALL}, "n_clicks"), State(ids("filters"), "data"),
          prevent_initial_call=True)
def unsilence(clicks: list[int | None], filters: dict[str, Any]) -> Any:
    """End a silence now."""
    if not ctx.triggered_id or not any(clicks or []):
        return no_update, no_update
    scope = deps.scope()
    sid = ctx.triggered_id["key"]
    mine = {s["silence_id"] for s in _app_silences(_scope_orgs(scope), _now())}
    if not can(scope, "silence") or sid not in mine:
        return message("无权操作 / Not allowed"), no_update
    roster.end_silence(_engine(), sid, _now())
    _audit(scope, "alert_unsilence", {"silence_id": sid})
    return message("静默已结束 / Silence ended"), _rerender(filters)


def _audit(scope: Any, event: str, detail: dict[str, Any]) -> None:
    from dashboards._components.auth import app_db
    app_db().audit(scope.user, event, detail)


@callback(Output(ids("download"), "data"), Input(ids("exp-history"), "n_clicks"),
          Input(ids("exp-deliveries"), "n_clicks"), Input(ids("exp-acks"), "n_clicks"),
          prevent_initial_call=True)
def export(_h: int | None, _d: int | None, _a: int | None) -> Any:
    """Alert history, deliveries with attempts, or acks and silences as Excel-safe CSV."""
    which = ctx.triggered_id
    if not which:
        return no_update
    scope = deps.scope()
    orgs = _scope_orgs(scope)
    service = deps.kpi_service()
    if which == ids("exp-history"):
        with service.reader.cursor() as (_v, cur):
            rows = alerting.history(cur, orgs, limit=None)
        name, header = "alert_history", list(rows[0]) if rows else ["created_at", "kind", "kpi_id", "org_no"]
    elif which == ids("exp-deliveries"):
        with service.reader.cursor() as (_v, cur):
            sent = {d["notification_id"]: d for d in alerting.deliveries(cur, orgs)}
            rows = [dict(a, recipient=sent[a["notification_id"]]["recipient"],
                         channel=sent[a["notification_id"]]["channel"],
                         status=sent[a["notification_id"]]["status"])
                    for a in alerting.attempts(cur, sent)]
        name, header = "alert_deliveries", list(rows[0]) if rows else ["notification_id", "attempt", "outcome"]
    else:
        acks = [dict(a, type="ack") for a in _app_acks(orgs)]
        sils = [dict(s, type="silence") for s in roster.rows(_engine(), roster.alert_silence)
                if s["org_no"] in set(orgs) or s["org_no"] is None]
        rows = acks + sils
        header = ["type", "kpi_id", "org_no", "user_name", "comment", "reason", "alarm_since", "acked_at",
                  "starts_at", "ends_at", "created_at", "ack_id", "silence_id"]
        rows = [{k: r.get(k) for k in header} for r in rows]
        name = "alert_acks_silences"
    from dashboards._components.auth import audit_export
    audit_export(scope, name, {"orgs": len(orgs)}, len(rows))
    body = b"".join(csv_chunks(header, [[[r.get(k) for k in header] for r in rows]]))
    return dcc.send_bytes(body, f"{name}.csv")
