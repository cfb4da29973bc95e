"""Sources page: the four source systems, their tables, row counts, freshness, runs, rejects."""
from __future__ import annotations

from typing import Any

import dash
from dash import html

from dashboards._components import deps, shell
from dashboards._components.cards import freshness_strip, table
from dashboards._components.fmt import lag_text, time_text
from dashboards._components.i18n import norm_lang, t
from dashboards._components.ids import PageIds

dash.register_page(__name__, path="/sources", name="数据源 / Sources", order=90, title_key="sources")
ids = PageIds("sources")
SYSTEMS = ("mis", "cs", "dist", "meter")


def layout(org: str | None = None, period: str | None = None, lang: str | None = None,
           **_other: str) -> html.Div:
    return shell.frame(ids, "/sources", "sources", org, period, lang)


def render(version: int | None, filters: dict[str, Any]) -> Any:
    """One card per source system: freshness line, then its tables."""
    lang = norm_lang(filters.get("lang"))
    service, scope = deps.kpi_service(), deps.scope()
    version = version or service.version()
    fresh = service.freshness(scope, version=version)
    stats = service.sources(scope, version=version)
    cards = []
    for system in SYSTEMS:
        f = fresh[fresh["source"] == system].to_dict("records")
        f = f[0] if f else {}
        rows = stats[stats["source"] == system] if len(stats) else stats
        cols = [("table", t("table", lang)), ("rows", t("rows", lang)), ("deleted", t("deleted", lang)),
                ("newest", t("newest", lang)), ("rejected", t("rejected", lang))]
        body = [{"table": r["table_name"], "rows": f"{int(r['row_count']):,}",
                 "deleted": f"{int(r.get('deleted_count') or 0):,}",
                 "newest": time_text(r.get("max_updated_at")),
                 "rejected": f"{int(r.get('reject_count') or 0):,}",
                 "_class": "warn-row" if int(r.get("reject_count") or 0) else ""}
                for r in rows.to_dict("records")]
        stale = bool(f.get("stale"))
        status = f.get("last_status") or "—"
        cards.append(html.Section(className="source-card " + ("stale" if stale else "fresh"),
                                  id={"type": "source-card", "key": system}, children=[
            html.H2(f"{t(system, lang)} ({system})"),
            html.Div([
                html.Span(f"{t('freshness', lang)}: {t('stale' if stale else 'fresh', lang)}",
                          className="badge " + ("stale" if stale else "fresh")),
                html.Span(f"{t('data_as_of', lang)} {time_text(f.get('data_as_of'))}"),
                html.Span(f"{t('lag', lang)} {lag_text(f.get('lag_s'), lang)}"),
                html.Span(f"{t('last_run', lang)} {time_text(f.get('last_pass_at'))} · {status}"),
            ], className="source-meta"),
            html.Div(str(f.get("last_error") or ""), className="error") if f.get("last_error") else None,
            table(cols, body),
        ]))
    return html.Div([freshness_strip(fresh, lang),
                     html.Div(f"{t('published', lang)} {version}", className="meta"),
                     html.Div(cards, className="sources")])


shell.register(ids, render)
