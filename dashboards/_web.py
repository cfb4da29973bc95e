"""Builds the Dash web app: pages, snapshot reader, cache, KPI service, auth, export routes.

No scheduler and no warehouse here: the web tier reads published snapshots only
(tests/web/test_layers.py checks that building it imports neither).
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING

import dash
import numpy  # noqa: F401  imported before threads start: a half-initialised numpy raised 500s
import plotly.graph_objects  # noqa: F401  (ARCHITECTURE.md §6)
from dash import html
from flask_caching import Cache

from dashboards._components import deps
from kpis.queries import KpiService
from kpis.serving import SnapshotReader

if TYPE_CHECKING:
    from etl.settings import Settings

HERE = Path(__file__).resolve().parent
WEB_DUCKDB_THREADS = 1          # ARCHITECTURE.md §9: web DuckDB instances stay small
WEB_DUCKDB_MEMORY = "1GB"
CACHE_TIMEOUT_S = 600
CACHE_THRESHOLD = 5000


def import_pages() -> list[str]:
    """Import every page module of the dashboards package (names without a leading underscore)."""
    names = sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if not m.name.startswith("_"))
    for name in names:
        module = importlib.import_module(f"dashboards.{name}")
        entry = dash.page_registry.get(module.__name__)
        if entry is not None and entry.get("layout") is None and hasattr(module, "layout"):
            entry["layout"] = module.layout   # what Dash's own folder import does after loading
    return names


_PAGE_CALLBACKS: tuple[dict, list, list] | None = None


def _share_page_callbacks() -> None:
    """Give every app of this process the pages' `dash.callback`s.

    Dash moves the global callbacks into the first app that starts and empties the globals, so
    a second app in the same process (tests, an embedded restart) would answer every callback
    with 500. The registrations are kept once and handed again to each new app.
    """
    global _PAGE_CALLBACKS
    from dash import _callback
    if _PAGE_CALLBACKS is None:
        _PAGE_CALLBACKS = (dict(_callback.GLOBAL_CALLBACK_MAP), list(_callback.GLOBAL_CALLBACK_LIST),
                           list(getattr(_callback, "GLOBAL_INLINE_SCRIPTS", [])))
        return
    cmap, clist, scripts = _PAGE_CALLBACKS
    for key, value in cmap.items():
        _callback.GLOBAL_CALLBACK_MAP.setdefault(key, value)
    known = {c.get("output") for c in _callback.GLOBAL_CALLBACK_LIST}
    _callback.GLOBAL_CALLBACK_LIST.extend(c for c in clist if c.get("output") not in known)
    inline = getattr(_callback, "GLOBAL_INLINE_SCRIPTS", None)
    if inline is not None:
        inline.extend(x for x in scripts if x not in inline)


def create_app(settings: Settings, service: KpiService | None = None, warm: bool = True) -> dash.Dash:
    """A ready Dash app (app.server is the WSGI app). `warm`: render the pages in use for each
    new snapshot before serving it (dashboards/_warm.py)."""
    reader = SnapshotReader(settings.serving_dir, threads=WEB_DUCKDB_THREADS,
                            memory_limit=WEB_DUCKDB_MEMORY)
    # pages_folder="" + explicit imports: page modules keep their real names (dashboards.repair),
    # so tests importing a page get the same module and its callbacks register once
    app = dash.Dash("dashboards", use_pages=True, pages_folder="",
                    assets_folder=str(HERE / "assets"), title="营销服务指标监控 / KPI Monitor",
                    suppress_callback_exceptions=True, update_title=None,
                    meta_tags=[{"name": "viewport", "content": "width=device-width, initial-scale=1"}])
    cache_dir = settings.cache_dir or settings.data_dir / "cache"
    cache = Cache(config={"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": str(cache_dir),
                          "CACHE_DEFAULT_TIMEOUT": CACHE_TIMEOUT_S, "CACHE_THRESHOLD": CACHE_THRESHOLD})
    cache.init_app(app.server)
    service = service or KpiService(reader, cache, refresh_s=settings.refresh_s,
                                    stale_after_s=settings.stale_after_s)
    deps.set_kpi_service(service)
    import_pages()
    _share_page_callbacks()
    from dashboards._components.auth import init_auth
    init_auth(app.server, settings, reader=reader)
    from dashboards._fastpath import install as install_fast_path
    install_fast_path(app)      # behind the login guard: cached page bodies without Dash's re-encoding
    from dashboards._routes import register_routes
    register_routes(app.server, service)
    if warm and service.cache is not None:
        from dashboards._components.shell import CACHED_RENDERS
        from dashboards._warm import Warmer
        warmer = Warmer(app.server, service, Path(cache_dir) / "hot", CACHED_RENDERS.get)
        service.version_gate = warmer.gate
        deps.set_view_hook(warmer.note)
        warmer.start()
        app.server.extensions["kpi_warmer"] = warmer
    app.layout = html.Div([dash.page_container])
    # one request before real traffic sets Dash up (plotly/dash#3971: cold threaded start)
    app.server.test_client().get("/healthz")
    return app
