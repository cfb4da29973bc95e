"""Write-once handles the web app sets at start: the KPI service and the scope lookup.

Pages call `kpi_service()` and `scope()`; tests replace both with `use(...)` and restore them,
so callbacks run as plain functions against a fake service.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_service: Any = None
_scope_fn: Callable[[], Any] | None = None
_view_hook: Callable[[str, Any, dict[str, Any]], None] | None = None
# The cache warmer renders pages for a user in its own thread: its scope must not leak into
# request threads, so it is thread-local (use() replaces the lookup for all threads: tests only).
_local = threading.local()


def set_kpi_service(service: Any) -> None:
    global _service
    _service = service


def kpi_service() -> Any:
    if _service is None:
        raise RuntimeError("kpi_service() used before the web app set it (dashboards._web.create_app)")
    return _service


def scope() -> Any:
    """The signed-in user's scope (dashboards._components.auth.current_scope)."""
    warming = getattr(_local, "scope", None)
    if warming is not None:
        return warming
    if _scope_fn is not None:
        return _scope_fn()
    from dashboards._components.auth import current_scope
    return current_scope()


@contextmanager
def scope_in_this_thread(scope_value: Any) -> Iterator[None]:
    """Render as `scope_value` in the current thread only (the cache warmer)."""
    saved = getattr(_local, "scope", None)
    _local.scope = scope_value
    try:
        yield
    finally:
        _local.scope = saved


def set_view_hook(hook: Callable[[str, Any, dict[str, Any]], None] | None) -> None:
    """Called with (page module, scope, filters) for every cached page render (the warmer's
    list of views in use)."""
    global _view_hook
    _view_hook = hook


def note_view(page: str, scope_value: Any, filters: dict[str, Any]) -> None:
    if _view_hook is not None and getattr(_local, "scope", None) is None:
        _view_hook(page, scope_value, filters)


def refresh_ms() -> int:
    return int(getattr(_service, "refresh_ms", 30_000))


@contextmanager
def use(service: Any, scope_fn: Callable[[], Any] | None = None) -> Iterator[None]:
    """Temporarily replace the service and scope lookup (tests)."""
    global _service, _scope_fn
    saved = _service, _scope_fn
    _service, _scope_fn = service, scope_fn
    try:
        yield
    finally:
        _service, _scope_fn = saved
