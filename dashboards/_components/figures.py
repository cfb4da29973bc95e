"""Plotly figures as plain dicts. Each names its unit, period and "data as of" in the title; no map tiles.

Built as dicts, not plotly.graph_objects: a Figure validates every property (0.3 s for the repair
page's twelve figures) and carries plotly.py's whole default template into each one (~8 KB of JSON
per figure, sent on every render). plotly.js draws the same traces from the dicts.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from dashboards._components.fmt import time_text, unit_label
from dashboards._components.i18n import t

STATUS_COLOUR = {"ok": "#2e7d32", "warning": "#f9a825", "critical": "#c62828",
                 "no_data": "#9e9e9e", "insufficient_sample": "#78909c"}
BAND_COLOURS = ("#ffcdd2", "#fff3c4", "#dcedc8")   # critical, warning, ok zones
FONT = dict(family="Noto Sans CJK SC, Microsoft YaHei, sans-serif", size=12)
GRID = "#eceff1"


def _layout(title: str, height: int = 260, **extra: Any) -> dict[str, Any]:
    """Title, size, fonts, white background."""
    return dict(title=dict(text=title, font=dict(size=13)), height=height, font=FONT,
                margin=dict(l=40, r=16, t=56, b=36), autosize=True,
                paper_bgcolor="white", plot_bgcolor="white", **extra)


def _axis(title: str, **extra: Any) -> dict[str, Any]:
    return dict(title=dict(text=title), gridcolor=GRID, zerolinecolor=GRID, **extra)


def _floats(values: Any) -> list[float | None]:
    return [None if v is None or pd.isna(v) else float(v) for v in values]


def _times(values: Any) -> list[str]:
    return [pd.Timestamp(v).isoformat() for v in values]


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
    indicator = {"type": "indicator", "mode": "gauge+number" if value is not None else "gauge",
                 "value": value if value is not None else 0,
                 "number": {"suffix": "%" if row.get("unit") == "%" else "",
                            "valueformat": ".2f" if row.get("unit") == "%" else ".1f"},
                 "gauge": {"axis": {"range": [0, top]}, "steps": gauge_steps(row, top),
                           "bar": {"color": STATUS_COLOUR.get(str(row.get("status")), "#9e9e9e")}}}
    notes = [] if value is not None else [dict(text=t("no_data", lang), x=0.5, y=0.15, xref="paper",
                                                yref="paper", showarrow=False,
                                                font=dict(size=22, color="#757575"))]
    title = f"{name}<br><sup>{caption(row.get('unit'), period, as_of, lang)}</sup>"
    return {"data": [indicator], "layout": _layout(title, height=230, annotations=notes)}


def trend(df: pd.DataFrame, row: dict[str, Any], lang: str, period: str, as_of: Any) -> dict[str, Any]:
    name = row.get("name_en") if lang == "en" else row.get("name_zh")
    data = []
    if df is not None and not df.empty:
        colours = [STATUS_COLOUR.get(str(s), "#9e9e9e") for s in df["status"]]
        data.append({"type": "scatter", "x": _times(df["period_start"]), "y": _floats(df["value"]),
                     "mode": "lines+markers", "marker": {"color": colours, "size": 7},
                     "line": {"color": "#546e7a"}, "name": str(name)})
    title = f"{t('trend', lang)} · {name}<br><sup>{caption(row.get('unit'), period, as_of, lang)}</sup>"
    return {"data": data, "layout": _layout(title, xaxis=_axis("", type="date"),
                                            yaxis=_axis(unit_label(row.get("unit"), lang)))}


def by_hour(df: pd.DataFrame, lang: str, period: str, as_of: Any) -> dict[str, Any]:
    bars = {"type": "bar", "x": [int(h) for h in df["hour"]], "y": _floats(df["tasks"]),
            "marker": {"color": "#1565c0"}}
    title = f"{t('orders_by_hour', lang)}<br><sup>{caption('count', period, as_of, lang)}</sup>"
    return {"data": [bars], "layout": _layout(title, xaxis=_axis(t("hour", lang), dtick=2),
                                              yaxis=_axis(t("tasks", lang)))}


def task_scatter(df: pd.DataFrame, lang: str, period: str, as_of: Any) -> dict[str, Any]:
    """Open tasks by longitude/latitude (plain axes: no map tiles needed offline)."""
    data = []
    if df is not None and not df.empty:
        d = df.dropna(subset=["lon", "lat"])
        colour = ["#c62828" if o else "#1565c0" for o in d["overdue"]]
        data.append({"type": "scatter", "x": _floats(d["lon"]), "y": _floats(d["lat"]), "mode": "markers",
                     "marker": {"color": colour, "size": 9}, "text": [str(x) for x in d["task_id"]],
                     "hovertemplate": "%{text}<extra></extra>"})
    title = f"{t('task_map', lang)}<br><sup>{caption('', period, as_of, lang)}</sup>"
    return {"data": data, "layout": _layout(title, height=320, xaxis=_axis("lon"),
                                            yaxis=_axis("lat", scaleanchor="x"))}
