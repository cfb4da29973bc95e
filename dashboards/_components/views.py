"""Shared view pieces: filters → Period, the theme section (tiles, drill-down, trend), export links."""
from __future__ import annotations

from typing import Any

import pandas as pd
from dash import dcc, html

from dashboards._components import cards, deps, figures
from dashboards._components.i18n import norm_lang, t
from kpis.queries import Period, parse_period


class View:
    """What a render callback needs: service, scope, version, unit, period, language, data time."""

    def __init__(self, version: int | None, filters: dict[str, Any]) -> None:
        self.service = deps.kpi_service()
        self.scope = deps.scope()
        self.version = version or self.service._require_version()
        self.lang = norm_lang(filters.get("lang"))
        self.path = str(filters.get("path") or "/")
        self.filters = filters
        self.period: Period = parse_period(filters.get("period"), self.service.data_today(self.version))
        self.period_arg = str(filters.get("period") or "today")
        self.org, self.under = self.service.authorise(self.scope, filters.get("org"), self.version)
        self.fresh = self.service.freshness(self.scope, version=self.version)
        got = pd.to_datetime(self.fresh["data_as_of"]).max() if len(self.fresh) else pd.NaT
        self.as_of = None if pd.isna(got) else got

    def link(self, path: str | None = None, **extra: Any) -> str:
        lang = self.lang if self.lang == "en" else None
        return cards.href(path or self.path, org=self.org, period=self.period_arg, lang=lang, **extra)

    def crumbs(self) -> html.Nav:
        chain = self.service.breadcrumb(self.scope, self.org, self.version) if self.org else pd.DataFrame()
        if chain.empty:
            return html.Nav()
        extra = {"kpi": self.filters["kpi"]} if self.filters.get("kpi") else None
        return cards.breadcrumb(chain, self.path, self.period_arg, self.lang, extra)

    def export_links(self, theme: str | None = None, kpi: str | None = None) -> html.Div:
        links = [html.A(t("export", self.lang), href=self.link("/export/values.csv", theme=theme),
                        className="export", id=f"export-values-{theme or 'all'}")]
        if theme is None and kpi is None:
            links.append(html.A(t("export_matrix", self.lang), href=self.link("/export/matrix.csv"),
                                className="export", id="export-matrix"))
        if kpi:
            links.append(html.A(t("export_detail", self.lang), href=self.link("/export/detail.csv", kpi=kpi),
                                className="export", id="export-detail"))
        return html.Div(links, className="exports")


def theme_section(view: View, themes: tuple[str, ...]) -> list[Any]:
    """Tiles first (phone), then the child-unit drill-down table and the trend of the worst KPI."""
    if view.org is None:
        return [cards.message(t("no_scope", view.lang))]
    frames = [view.service.values(view.scope, view.org, view.period, theme=th, version=view.version)
              for th in themes]
    values = pd.concat([f for f in frames if not f.empty], ignore_index=True) if any(
        not f.empty for f in frames) else pd.DataFrame()
    kids = [view.service.child_values(view.scope, view.org, view.period, theme=th, version=view.version)
            for th in themes]
    kids_df = pd.concat([k for k in kids if not k.empty], ignore_index=True) if any(
        not k.empty for k in kids) else pd.DataFrame()
    out: list[Any] = [view.crumbs(), cards.freshness_strip(view.fresh, view.lang),
                      cards.tiles(values, view.lang, view.period.label, view.org)]
    if not values.empty:
        top = values.iloc[0].to_dict()
        tr = view.service.trend(view.scope, top["kpi_id"], view.org, view.period, version=view.version)
        out.append(html.Div(dcc.Graph(figure=figures.trend(tr, top, view.lang, view.period.label, view.as_of),
                                      config={"displayModeBar": False, "responsive": True}),
                            className="chart"))
    out.append(cards.child_table(kids_df, view.lang, view.path, view.period_arg))
    out.append(view.export_links(theme=themes[0] if len(themes) == 1 else None))
    return out
