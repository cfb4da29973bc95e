"""Metering and line loss (计量与线损): the theme's KPI tiles, child units, trend."""
from __future__ import annotations

from typing import Any

import dash
from dash import html

from dashboards._components import shell
from dashboards._components.ids import PageIds
from dashboards._components.views import View, theme_section

THEMES = ('metering',)
dash.register_page(__name__, path="/metering", name="metering", order=60, title_key="metering")
ids = PageIds("metering")


def layout(org: str | None = None, period: str | None = None, lang: str | None = None,
           **_other: str) -> html.Div:
    return shell.frame(ids, "/metering", "metering", org, period, lang)


def render(version: int | None, filters: dict[str, Any]) -> Any:
    return theme_section(View(version, filters), THEMES)


shell.register(ids, render)
