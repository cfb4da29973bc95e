"""Display rounding and units (CONVENTIONS.md §8): rounding happens only here, for display."""
from __future__ import annotations

import math
from datetime import datetime
from typing import Any

UNIT_TEXT = {
    "%": ("%", "%"), "count": ("", ""), "minutes": ("分钟", "min"), "seconds": ("秒", "s"),
    "hours": ("小时", "h"), "days": ("天", "days"), "working days": ("工作日", "working days"),
    "yuan": ("元", "yuan"), "MWh": ("MWh", "MWh"), "MVA": ("MVA", "MVA"),
}


def unit_label(unit: Any, lang: str) -> str:
    pair = UNIT_TEXT.get(str(unit or ""))
    if pair is None:
        return str(unit or "")
    return pair[1] if lang == "en" else pair[0]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def value_text(value: Any, unit: Any, lang: str = "zh") -> str:
    """12.34 %, 8.5 分钟, 1,204 — '—' when there is no value."""
    if _missing(value):
        return "—"
    v = float(value)
    unit = str(unit or "")
    if unit == "%":
        return f"{v:,.2f}%"
    if unit == "count":
        return f"{round(v):,}"
    if unit in ("minutes", "seconds", "hours", "days", "working days"):
        return f"{v:,.1f} {unit_label(unit, lang)}"
    if unit in ("MWh", "MVA"):
        return f"{v:,.3f} {unit}"
    if unit == "yuan":
        return f"{v:,.2f} {unit_label(unit, lang)}"
    return f"{v:,.2f} {unit_label(unit, lang)}".strip()


def time_text(value: Any) -> str:
    """'2026-10-15 12:05' or '—'."""
    if _missing(value):
        return "—"
    try:
        import pandas as pd
        if pd.isna(value):
            return "—"
        return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return str(value)


def lag_text(seconds: Any, lang: str) -> str:
    if _missing(seconds):
        return "—"
    s = float(seconds)
    if s < 120:
        return f"{s:.0f} {'s' if lang == 'en' else '秒'}"
    if s < 7200:
        return f"{s / 60:.0f} {'min' if lang == 'en' else '分钟'}"
    return f"{s / 3600:.1f} {'h' if lang == 'en' else '小时'}"


def now_text() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")
