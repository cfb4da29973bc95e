"""The frame every page shares: header, navigation, language switch, filters, stores, interval.

Filters live in the URL (`?org=…&period=…&lang=…`), so a link reproduces a view: changing a
filter writes the query string (dcc.Location refresh="callback-nav"), the page layout is rebuilt
from it, and one render callback fills the body. One dcc.Interval per page drives only a cheap
version probe; the body re-renders when a new snapshot is published.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import dash
from dash import Input, Output, State, callback, dcc, html, no_update
from plotly.io.json import to_json_plotly

from dashboards._components import deps
from dashboards._components.cards import href, message
from dashboards._components.i18n import norm_lang, t
from dashboards._components.ids import PageIds

log = logging.getLogger(__name__)


def period_options(today: date, lang: str) -> list[dict[str, str]]:
    """Today, the last 14 days and the last 12 months."""
    opts = [{"label": t("today", lang), "value": "today"}]
    opts += [{"label": (today - timedelta(days=i)).isoformat(), "value": (today - timedelta(days=i)).isoformat()}
             for i in range(1, 15)]
    y, m = today.year, today.month
    for _ in range(12):
        opts.append({"label": f"{y:04d}-{m:02d}", "value": f"{y:04d}-{m:02d}"})
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return opts


def _nav(path: str, org: str | None, period: str, lang: str) -> html.Nav:
    pages = sorted((p for p in dash.page_registry.values() if p.get("nav", True) is not False),
                   key=lambda p: p.get("order") or 0)
    links = [dcc.Link(t(p.get("title_key", p["name"]), lang), href=href(p["path"], org=org, period=period,
                                                                        lang=lang if lang == "en" else None),
                      className="nav-link active" if p["path"] == path else "nav-link")
             for p in pages if p.get("title_key")]
    return html.Nav(links, className="nav")


def _logout() -> html.Form:
    try:
        from dashboards._components.auth import csrf_token
        token = csrf_token()
    except Exception:   # outside a request (tests building a layout): no session, no token
        token = ""
    return html.Form([dcc.Input(type="hidden", name="csrf_token", value=token),
                      html.Button("⎋", type="submit", title="退出 / Sign out", className="logout")],
                     method="POST", action="/logout", className="logout-form")


def frame(ids: PageIds, path: str, title_key: str, org: str | None, period: str | None,
          lang: str | None, extra: dict[str, Any] | None = None) -> html.Div:
    """The whole page: header, nav, filters; the body is filled by the render callback."""
    lang = norm_lang(lang)
    period = period or "today"
    service = deps.kpi_service()
    scope = deps.scope()
    version = None
    org_options: list[dict[str, str]] = []
    today = date.today()
    notice = None
    try:
        version = service.version()
        if version is not None:
            tree = service.org_tree(scope, version=version)
            org_options = [{"label": "\u3000" * int(r["depth"] - tree["depth"].min()) + str(r["org_name"]),
                            "value": str(r["org_no"])} for r in tree.to_dict("records")]
            today = service.data_today(version)
            if org is None and org_options:
                org = org_options[0]["value"]
    except Exception as exc:   # the body says what is unavailable; the frame still renders
        log.warning("page frame without data: %s", exc)
        notice = message(t("unavailable", lang), str(exc))
    other = "en" if lang == "zh" else "zh"
    filters = {"org": org, "period": period, "lang": lang, "path": path, **(extra or {})}
    switch = href(path, org=org, period=period, lang=other, **(extra or {}))
    return html.Div(className="page", children=[
        dcc.Location(id=ids("url"), refresh="callback-nav"),
        dcc.Store(id=ids("filters"), data=filters),
        dcc.Store(id=ids("version"), data=version),
        dcc.Interval(id=ids("tick"), interval=deps.refresh_ms()),
        html.Header(className="top", children=[
            html.Div([html.Span(t("app_title", lang), className="brand"),
                      html.H1(t(title_key, lang), className="title")]),
            html.Div([html.A(t("switch_lang", lang), href=switch, className="lang", id=ids("lang")),
                      _logout()], className="top-right"),
        ]),
        _nav(path, org, period, lang),
        html.Div(className="filters", children=[
            html.Label([t("org", lang), dcc.Dropdown(id=ids("org"), options=org_options, value=org,
                                                     clearable=False, className="dd")]),
            html.Label([t("period", lang), dcc.Dropdown(id=ids("period"), options=period_options(today, lang),
                                                        value=period, clearable=False, className="dd")]),
        ]),
        notice or html.Div(),
        html.Div(id=ids("body"), className="body"),
    ])


Render = Callable[[int | None, dict[str, Any]], Any]
CACHED_RENDERS: dict[str, Render] = {}   # page module -> render


@dataclass(frozen=True)
class CachedBody:
    """The render callback of a cached page, as its Dash request names it (dashboards/_fastpath.py)."""
    render: Render
    version_id: str
    filters_id: str


CACHED_BODIES: dict[str, CachedBody] = {}   # id of the page body -> its render callback


def register(ids: PageIds, render: Callable[[int | None, dict[str, Any]], Any],
             cache: bool = True) -> None:
    """The three callbacks of a page: version probe, filters → URL, render.

    cache=False for pages that also show user writes (acknowledgements, silences), which change
    between two snapshot versions and so cannot be keyed by the version."""
    if cache:
        CACHED_RENDERS[render.__module__] = render
        CACHED_BODIES[ids("body")] = CachedBody(render, ids("version"), ids("filters"))

    @callback(Output(ids("version"), "data"), Input(ids("tick"), "n_intervals"),
              State(ids("version"), "data"), prevent_initial_call=True)
    def probe(_tick: int | None, known: int | None) -> Any:
        version = deps.kpi_service().version()
        return no_update if version == known else version

    @callback(Output(ids("url"), "search"), Input(ids("org"), "value"), Input(ids("period"), "value"),
              State(ids("filters"), "data"), prevent_initial_call=True)
    def navigate(org: str | None, period: str | None, filters: dict[str, Any]) -> Any:
        if org == filters.get("org") and period == filters.get("period"):
            return no_update
        extra = {k: v for k, v in filters.items() if k not in ("org", "period", "lang", "path")}
        lang = filters.get("lang")
        return href("", org=org, period=period, lang=lang if lang == "en" else None, **extra)

    @callback(Output(ids("body"), "children"), Input(ids("version"), "data"),
              Input(ids("filters"), "data"))
    def _render(version: int | None, filters: dict[str, Any]) -> Any:
        return safe_render(render, version, filters, cache=cache)


def render_json(body: Any) -> bytes:
    """A rendered body as the UTF-8 JSON text Dash sends for it, the form page bodies are cached in.

    A hit on the web fast path is then sent as it is read (no decoding, no re-encoding); as
    component objects a hit cost ~15 ms of CPU (45,000 to_plotly_json calls for the overview
    matrix), as a pickled JSON tree ~3 ms (unpickle, then Dash's encoding)."""
    return to_json_plotly(body).encode("utf-8")


def safe_render(render: Callable[[int | None, dict[str, Any]], Any], version: int | None,
                filters: dict[str, Any], cache: bool = True) -> Any:
    """Render, or an explicit 'unavailable' state naming why (never a silently empty figure)."""
    from kpis.serving import SnapshotUnavailable
    lang = norm_lang((filters or {}).get("lang"))
    try:
        scope = deps.scope()
        if not getattr(scope, "org_nos", None):
            return message(t("no_scope", lang))
        service = deps.kpi_service()
        cached = getattr(service, "cached_view", None) if cache else None
        version = version or service.version()
        if cached is None or version is None:
            return render(version, filters or {})
        deps.note_view(render.__module__, scope, filters or {})
        text = cached(render.__module__, scope, {**(filters or {}), "_v": version},
                      lambda: render_json(render(version, filters or {})), version=version)
        return json.loads(text)
    except SnapshotUnavailable:
        return message(t("unavailable", lang), t("no_snapshot", lang))
    except ValueError as exc:      # a bad filter in a hand-edited URL
        return message(t("unavailable", lang), str(exc))


def cached_body(render: Render, version: int | None, filters: dict[str, Any]) -> bytes | None:
    """The JSON text `safe_render` would answer from the cache for these arguments, else None.

    Same scope, version and key as safe_render; None whenever safe_render would do anything but
    return a cached body (no scope, no snapshot, not cached yet), so the caller lets it run."""
    scope = deps.scope()
    if not getattr(scope, "org_nos", None):
        return None
    service = deps.kpi_service()
    lookup = getattr(service, "cached_view_only", None)
    if lookup is None:
        return None
    version = version or service.version()
    if version is None:
        return None
    text = lookup(render.__module__, scope, {**filters, "_v": version}, version)
    if not isinstance(text, bytes):
        return None
    deps.note_view(render.__module__, scope, filters)
    return text
