"""Repair for managers: on-time arrival gauges, arrival/restoration minutes, merge rate, open tasks
(overdue first) with minutes elapsed against the limit, a lon/lat scatter, orders by hour."""
from __future__ import annotations

from typing import Any

import dash
from dash import dcc, html

from dashboards._components import cards, figures, shell
from dashboards._components.fmt import time_text
from dashboards._components.i18n import t
from dashboards._components.ids import PageIds
from dashboards._components.views import View, theme_section

dash.register_page(__name__, path="/repair", name="repair", order=30, title_key="repair")
ids = PageIds("repair")
GAUGES = ("repair.arrival_ontime_rate_urban", "repair.arrival_ontime_rate_rural",
          "repair.arrival_ontime_rate_remote", "repair.arrival_minutes_avg_urban",
          "repair.arrival_minutes_avg_rural", "repair.arrival_minutes_avg_remote",
          "repair.restore_minutes_avg_urban", "repair.restore_minutes_avg_rural", "repair.merge_rate")
AREA = {"01": ("城区", "urban"), "02": ("农村", "rural"), "03": ("边远", "remote")}
GRAPH_CONFIG = {"displayModeBar": False, "responsive": True}


def layout(org: str | None = None, period: str | None = None, lang: str | None = None,
           **_other: str) -> html.Div:
    return shell.frame(ids, "/repair", "repair", org, period, lang)


def gauges(view: View) -> html.Div:
    df = view.service.values(view.scope, view.org, view.period, theme="repair", version=view.version)
    rows = {r["kpi_id"]: r for r in df.to_dict("records")} if not df.empty else {}
    graphs = [html.Div(dcc.Graph(id={"type": "repair-gauge", "key": k},
                                 figure=figures.gauge(rows[k], view.lang, view.period.label, view.as_of),
                                 config=GRAPH_CONFIG), className="chart")
              for k in GAUGES if k in rows]
    return html.Div(graphs, className="charts")


def open_tasks(view: View) -> list[Any]:
    df = view.service.open_repair_tasks(view.scope, view.org, version=view.version)
    cols = [("task", "ID"), ("org", t("org", view.lang)), ("area", t("area", view.lang)),
            ("start", t("period", view.lang)), ("elapsed", t("elapsed", view.lang)),
            ("limit", t("limit", view.lang)), ("overdue", t("overdue", view.lang))]
    rows = [{"task": r["task_id"], "org": r["org_no"],
             "area": AREA.get(str(r["area"]), ("", ""))[1 if view.lang == "en" else 0],
             "start": time_text(r["start_time"]), "elapsed": f"{r['elapsed_min']:.0f}",
             "limit": int(r["limit_min"]), "overdue": "⚠" if r["overdue"] else "",
             "_class": "overdue" if r["overdue"] else ""} for r in df.head(200).to_dict("records")]
    return [html.H2(f"{t('open_tasks', view.lang)} ({len(df)})", className="section"),
            cards.table(cols, rows),
            html.Div(dcc.Graph(figure=figures.task_scatter(df, view.lang, view.period.label, view.as_of),
                               config=GRAPH_CONFIG), className="chart")]


def render(version: int | None, filters: dict[str, Any]) -> Any:
    view = View(version, filters)
    if view.org is None:
        return cards.message(t("no_scope", view.lang))
    hours = view.service.repair_by_hour(view.scope, view.org, view.period.start.date(), version=view.version)
    section = theme_section(view, ("repair",))
    return html.Div([
        *section[:2],
        gauges(view),
        html.Div(dcc.Graph(id="repair-by-hour", figure=figures.by_hour(hours, view.lang, view.period.label,
                                                                       view.as_of), config=GRAPH_CONFIG),
                 className="chart"),
        *open_tasks(view),
        *section[2:],
    ])


shell.register(ids, render)
