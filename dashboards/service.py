"""95598 service: calls, work orders, complaints and on-site service: the theme's KPI tiles, child units, trend."""
from __future__ import annotations

from typing import Any

import dash
from dash import html

from dashboards._components import shell
from dashboards._components.ids import PageIds
from dashboards._components.views import View, theme_section

THEMES = ('call', 'order', 'grid')
dash.register_page(__name__, path="/service", name="service", order=40, title_key="service")
ids = PageIds("service")


def layout(org: str | None = None, period: str | None = None, lang: str | None = None,
           **_other: str) -> html.Div:
    return shell.frame(ids, "/service", "service", org, period, lang)


def render(version: int | None, filters: dict[str, Any]) -> Any:
    return theme_section(View(version, filters), THEMES)


shell.register(ids, render)
