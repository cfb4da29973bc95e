"""Plotly figures. Each names its unit, period and "data as of" in the title; no map tiles."""
from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from dashboards._components.fmt import time_text, unit_label
from dashboards._components.i18n import t

STATUS_COLOUR = {"ok": "#2e7d32", "warning": "#f9a825", "critical": "#c62828",
                 "no_data": "#9e9e9e", "insufficient_sample": "#78909c"}
BAND_COLOURS = ("#ffcdd2", "#fff3c4", "#dcedc8")   # critical, warning, ok zones
FONT = dict(family="Noto Sans CJK SC, Microsoft YaHei, sans-serif", size=12)


def _layout(fig: go.Figure, title: str, height: int = 260) -> dict[str, Any]:
    """Title, size, fonts; returned as a plain dict (a cached page unpickles dicts ~100x faster
    than plotly Figure objects, which re-validate every property)."""
    fig.update_layout(title=dict(text=title, font=dict(size=13)), height=height, font=FONT,
                      margin=dict(l=40, r=16, t=56, b=36), autosize=True,
                      paper_bgcolor="white", plot_bgcolor="white")
    return fig.to_plotly_json()


def caption(unit: Any, period: str, as_of: Any, lang: str) -> str:
    u = unit_label(unit, lang)
    unit_part = f"{t('unit', lang)}: {u} · " if u else ""
    return f"{unit_part}{t('period', lang)}: {period} · {t('data_as_of', lang)} {time_text(as_of)}"


def _number(text: Any) -> float | None:
    try:
        return float(str(text))
    except (TypeError, ValueError):
        return None   # relative and band thresholds have no fixed place on a gauge


def gauge_steps(row: dict[str, Any], top: float) -> list[dict[str, Any]]:
    """Threshold bands from the registry's warning/critical values (absolute thresholds only)."""
    warn, crit = _number(row.get("warning")), _number(row.get("critical"))
    if warn is None or crit is None:
        return []
    if row.get("direction") == "higher_better":
        return [{"range": [0, crit], "color": BAND_COLOURS[0]},
                {"range": [crit, warn], "color": BAND_COLOURS[1]},
                {"range": [warn, top], "color": BAND_COLOURS[2]}]
    return [{"range": [0, warn], "color": BAND_COLOURS[2]},
            {"range": [warn, crit], "color": BAND_COLOURS[1]},
            {"range": [crit, top], "color": BAND_COLOURS[0]}]


def gauge(row: dict[str, Any], lang: str, period: str, as_of: Any) -> dict[str, Any]:
    """A Plotly Indicator gauge with the KPI's threshold bands; the bar colour is its status."""
    value = row.get("value")
    value = None if value is None or pd.isna(value) else float(value)
    crit, warn = _number(row.get("critical")), _number(row.get("warning"))
    if row.get("unit") == "%":
        top = 100.0
    else:
        top = max([v for v in (value, crit, warn) if v is not None] or [1.0]) * 1.5
    name = row.get("name_en") if lang == "en" else row.get("name_zh")
    # No value (no_data): an empty dial that says so, never a needle at 0 that reads as "0 %".
    fig = go.Figure(go.Indicator(
        mode="gauge+number" if value is not None else "gauge", value=value if value is not None else 0,
        number={"suffix": "%" if row.get("unit") == "%" else "", "valueformat": ".2f"
                if row.get("unit") == "%" else ".1f"},
        gauge={"axis": {"range": [0, top]}, "steps": gauge_steps(row, top),
               "bar": {"color": STATUS_COLOUR.get(str(row.get("status")), "#9e9e9e")}}))
    if value is None:
        fig.add_annotation(text=t("no_data", lang), x=0.5, y=0.15, showarrow=False,
                           font=dict(size=22, color="#757575"))
    title = f"{name}<br><sup>{caption(row.get('unit'), period, as_of, lang)}</sup>"
    return _layout(fig, title, height=230)


def trend(df: pd.DataFrame, row: dict[str, Any], lang: str, period: str, as_of: Any) -> dict[str, Any]:
    name = row.get("name_en") if lang == "en" else row.get("name_zh")
    fig = go.Figure()
    if df is not None and not df.empty:
        colours = [STATUS_COLOUR.get(str(s), "#9e9e9e") for s in df["status"]]
        fig.add_trace(go.Scatter(x=df["period_start"], y=df["value"], mode="lines+markers",
                                 marker=dict(color=colours, size=7), line=dict(color="#546e7a"),
                                 name=str(name)))
    fig.update_yaxes(title=unit_label(row.get("unit"), lang))
    return _layout(fig, f"{t('trend', lang)} · {name}<br><sup>{caption(row.get('unit'), period, as_of, lang)}</sup>")


def by_hour(df: pd.DataFrame, lang: str, period: str, as_of: Any) -> dict[str, Any]:
    fig = go.Figure(go.Bar(x=df["hour"], y=df["tasks"], marker_color="#1565c0"))
    fig.update_xaxes(title=t("hour", lang), dtick=2)
    fig.update_yaxes(title=t("tasks", lang))
    return _layout(fig, f"{t('orders_by_hour', lang)}<br><sup>{caption('count', period, as_of, lang)}</sup>")


def task_scatter(df: pd.DataFrame, lang: str, period: str, as_of: Any) -> dict[str, Any]:
    """Open tasks by longitude/latitude (plain axes: no map tiles needed offline)."""
    fig = go.Figure()
    if df is not None and not df.empty:
        d = df.dropna(subset=["lon", "lat"])
        colour = ["#c62828" if o else "#1565c0" for o in d["overdue"]]
        fig.add_trace(go.Scatter(x=d["lon"], y=d["lat"], mode="markers", marker=dict(color=colour, size=9),
                                 text=d["task_id"], hovertemplate="%{text}<extra></extra>"))
    fig.update_xaxes(title="lon")
    fig.update_yaxes(title="lat", scaleanchor="x")
    return _layout(fig, f"{t('task_map', lang)}<br><sup>{caption('', period, as_of, lang)}</sup>", height=320)
