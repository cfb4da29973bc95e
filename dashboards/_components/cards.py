"""Tiles, freshness strip and tables: the building blocks pages assemble. Colour from status."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pandas as pd
from dash import dcc, html

from dashboards._components.fmt import lag_text, time_text, value_text
from dashboards._components.i18n import t

STATUS_CLASS = {"ok": "st-ok", "warning": "st-warning", "critical": "st-critical",
                "no_data": "st-nodata", "insufficient_sample": "st-sample"}


def status_class(status: Any) -> str:
    return STATUS_CLASS.get(str(status), "st-nodata")


def kpi_name(row: Any, lang: str) -> str:
    zh, en = row.get("name_zh"), row.get("name_en")
    return str((en if lang == "en" else zh) or zh or row.get("kpi_id"))


def href(path: str, **query: Any) -> str:
    q = {k: v for k, v in query.items() if v not in (None, "")}
    return f"{path}?{urlencode(q)}" if q else path


def kpi_tile(row: Any, lang: str, period_label: str, org: str | None) -> html.Div:
    """One KPI: name, value with unit, trend, period; greyed with the reason when a source is late."""
    stale = str(row.get("stale_sources") or "")
    cls = "tile " + ("st-stale" if stale else status_class(row.get("status")))
    status = t(str(row.get("status") or "no_data"), lang)
    note = f"{t('stale', lang)}: {stale} ({t('stale_reason', lang)})" if stale else status
    link = href("/kpi", kpi=row.get("kpi_id"), org=org, period=period_label,
                lang=lang if lang == "en" else None)
    return html.Div(className=cls, id={"type": "kpi-tile", "key": str(row.get("kpi_id"))}, children=[
        dcc.Link(kpi_name(row, lang), href=link, className="tile-name"),
        html.Div([html.Span(value_text(row.get("value"), row.get("unit"), lang), className="tile-value"),
                  html.Span(str(row.get("trend") or ""), className="tile-trend")]),
        html.Div(f"{note} · {period_label}", className="tile-meta"),
    ])


def tiles(df: pd.DataFrame, lang: str, period_label: str, org: str | None) -> html.Div:
    if df is None or df.empty:
        return html.Div(t("no_data", lang), className="empty")
    return html.Div([kpi_tile(r, lang, period_label, org) for r in df.to_dict("records")],
                    className="tiles")


def freshness_strip(fresh: pd.DataFrame, lang: str) -> html.Div:
    """One chip per source: name, data as of, lag; stale sources highlighted."""
    chips = []
    for r in fresh.to_dict("records"):
        cls = "chip stale" if r.get("stale") else "chip fresh"
        chips.append(html.Span(
            f"{t(r['source'], lang)} · {t('data_as_of', lang)} {time_text(r.get('data_as_of'))}"
            f" · {t('lag', lang)} {lag_text(r.get('lag_s'), lang)}",
            className=cls, title=_text(r.get("last_error"))))
    return html.Div(chips, className="freshness")


def table(columns: list[tuple[str, str]], rows: list[dict[str, Any]], cls: str = "grid") -> html.Div:
    """A plain HTML table (scrolls inside its own box on a phone, never the page)."""
    head = html.Tr([html.Th(label) for _key, label in columns])
    body = [html.Tr([html.Td(r.get(key, "")) for key, _label in columns], className=r.get("_class", ""))
            for r in rows]
    return html.Div(html.Table([html.Thead(head), html.Tbody(body)], className=cls), className="table-box")


def child_table(df: pd.DataFrame, lang: str, path: str, period_label: str,
                extra: dict[str, Any] | None = None) -> html.Div:
    """Child units × KPIs; a unit name links to the same view one level down (drill-down)."""
    if df is None or df.empty:
        return html.Div()
    kpis = df.drop_duplicates("kpi_id")[["kpi_id", "name_zh", "name_en", "unit"]].to_dict("records")[:8]
    cols = [("org", t("children", lang))] + [(k["kpi_id"], kpi_name(k, lang)) for k in kpis]
    rows = []
    for org_no, grp in df.groupby("org_no", sort=True):
        name = grp["org_name"].iloc[0] if "org_name" in grp else org_no
        row: dict[str, Any] = {"org": dcc.Link(str(name or org_no), className="drill",
                                               href=href(path, org=org_no, period=period_label,
                                                         lang=lang if lang == "en" else None,
                                                         **(extra or {})))}
        by = grp.set_index("kpi_id")
        for k in kpis:
            if k["kpi_id"] in by.index:
                rec = by.loc[k["kpi_id"]]
                row[k["kpi_id"]] = html.Span(value_text(rec["value"], rec["unit"], lang),
                                             className=status_class(rec["status"]))
        rows.append(row)
    return table(cols, rows)


def breadcrumb(chain: pd.DataFrame, path: str, period_label: str, lang: str,
               extra: dict[str, Any] | None = None) -> html.Div:
    items: list[Any] = []
    for i, r in enumerate(chain.to_dict("records")):
        if i:
            items.append(html.Span(" › "))
        items.append(dcc.Link(str(r["org_name"]), href=href(path, org=r["org_no"], period=period_label,
                                                            lang=lang if lang == "en" else None,
                                                            **(extra or {}))))
    return html.Nav(items, className="breadcrumb")


def message(text: str, detail: str = "") -> html.Div:
    return html.Div([html.Strong(text), html.Div(detail, className="detail")], className="notice")


def _text(value: Any) -> str:
    """'' for None/NaN, else the text."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)
