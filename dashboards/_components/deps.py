"""Write-once handles the web app sets at start: the KPI service and the scope lookup.

Pages call `kpi_service()` and `scope()`; tests replace both with `use(...)` and restore them,
so callbacks run as plain functions against a fake service.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_service: Any = None
_scope_fn: Callable[[], Any] | None = None


def set_kpi_service(service: Any) -> None:
    global _service
    _service = service


def kpi_service() -> Any:
    if _service is None:
        raise RuntimeError("kpi_service() used before the web app set it (dashboards._web.create_app)")
    return _service


def scope() -> Any:
    """The signed-in user's scope (dashboards._components.auth.current_scope)."""
    if _scope_fn is not None:
        return _scope_fn()
    from dashboards._components.auth import current_scope
    return current_scope()


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
