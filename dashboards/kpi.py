"""KPI detail for any KPI: definition, formula, thresholds, trend, value per child unit and the
source records behind the value in a paged table."""
from __future__ import annotations

from typing import Any

import dash
import pandas as pd
from dash import dcc, html

from dashboards._components import cards, figures, shell
from dashboards._components.fmt import value_text
from dashboards._components.i18n import t
from dashboards._components.ids import PageIds
from dashboards._components.views import View
from kpis.queries import DetailOutsideWindow

dash.register_page(__name__, path="/kpi", name="kpi", order=95, title_key="kpi", nav=False)
ids = PageIds("kpi")
PAGE_SIZE = 50


def layout(kpi: str | None = None, org: str | None = None, period: str | None = None,
           lang: str | None = None, page: str | None = None, **_other: str) -> html.Div:
    extra = {"kpi": kpi, "page": page if page and page.isdigit() else None}
    return shell.frame(ids, "/kpi", "kpi", org, period, lang, extra={k: v for k, v in extra.items() if v})


def render(version: int | None, filters: dict[str, Any]) -> Any:
    view = View(version, filters)
    kpi_id = filters.get("kpi")
    page = int(filters.get("page") or 0)
    if view.org is None:
        return cards.message(t("no_scope", view.lang))
    defs = view.service.kpi_defs(view.version)
    match = defs[defs["kpi_id"] == kpi_id].to_dict("records")
    if not kpi_id or not match:
        return cards.message(t("no_data", view.lang), f"KPI `{kpi_id}`")
    d = match[0]
    vals = view.service.values(view.scope, view.org, view.period, kpi_id=kpi_id, version=view.version)
    row = vals.iloc[0].to_dict() if not vals.empty else {**d, "value": None, "status": "no_data"}
    kids = view.service.child_values(view.scope, view.org, view.period, kpi_id=kpi_id, version=view.version)
    trend = view.service.trend(view.scope, kpi_id, view.org, view.period, version=view.version)
    try:
        records = view.service.detail_page(view.scope, kpi_id, view.org, view.period, page=page,
                                           page_size=PAGE_SIZE, version=view.version)
        held_from = None
    except DetailOutsideWindow as exc:
        records, held_from = pd.DataFrame(), exc.first_day
    rec_cols = [(c, c) for c in records.columns]
    rec_rows = [{c: ("" if v is None else str(v)) for c, v in r.items()} for r in records.to_dict("records")]
    pager = html.Div([
        dcc.Link(t("prev", view.lang), href=view.link("/kpi", kpi=kpi_id, page=page - 1)) if page > 0 else html.Span(),
        html.Span(f" {t('page', view.lang)} {page + 1} "),
        dcc.Link(t("next", view.lang), href=view.link("/kpi", kpi=kpi_id, page=page + 1))
        if len(records) == PAGE_SIZE else html.Span(),
    ], className="pager")
    name = cards.kpi_name(d, view.lang)
    return html.Div([
        view.crumbs(),
        html.H2(f"{name} ({kpi_id})"),
        cards.tiles(vals, view.lang, view.period.label, view.org),
        html.Div(className="kpi-def", children=[
            html.P([html.Strong(t("value", view.lang) + ": "), value_text(row.get("value"), d.get("unit"), view.lang),
                    f" · {t('status', view.lang)}: {t(str(row.get('status') or 'no_data'), view.lang)}",
                    f" · n={row.get('numerator')} / d={row.get('denominator')}"]),
            html.P([html.Strong(t("definition", view.lang) + ": "), str(d.get("definition") or "")]),
            html.P([html.Strong(t("formula", view.lang) + ": "), html.Code(str(d.get("formula") or ""))]),
            html.P([html.Strong(t("thresholds", view.lang) + ": "),
                    f"{t('warning', view.lang)} {d.get('warning') or '—'} · {t('critical', view.lang)} "
                    f"{d.get('critical') or '—'} · {d.get('direction') or ''}"]),
        ]),
        html.Div(dcc.Graph(figure=figures.trend(trend, {**d, **row}, view.lang, view.period.label, view.as_of),
                           config={"displayModeBar": False, "responsive": True}), className="chart"),
        cards.child_table(kids, view.lang, view.path, view.period_arg, extra={"kpi": kpi_id}),
        html.H2(t("records", view.lang), className="section"),
        *([cards.message(t("records_window", view.lang).format(day=held_from.isoformat()))]
          if held_from is not None else [cards.table(rec_cols, rec_rows), pager]),
        view.export_links(kpi=kpi_id),
    ])


shell.register(ids, render)
