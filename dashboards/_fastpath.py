"""Answer a page's render callback from the cache before Dash dispatches it.

A cached page body is the JSON text Dash would send (shell.render_json). Going through Dash, a
hit is decoded and encoded again (plus Dash's callback bookkeeping): ~3 ms of CPU per request
for the overview, a large share of a cached request. This hook, installed after the login
guard (so the session, the CSRF token and the scope are checked exactly as for any other
request), recognises the render callback of a cached page, computes the cache key safe_render
would (scope, version, filters) and sends the cached text wrapped as Dash's response. Anything
else — another callback, an unexpected payload, a miss, no scope, no snapshot, an error — goes
on to Dash unchanged, which renders, caches, or answers with the explicit 'unavailable' state.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import dash
from flask import Flask, Response, request

from dashboards._components.shell import CACHED_BODIES, cached_body

log = logging.getLogger(__name__)


def install(app: dash.Dash) -> None:
    """Register the fast path on app.server; init_auth must have installed its guard first."""
    from dashboards._components.auth import _guard
    server: Flask = app.server
    hooks = server.before_request_funcs.setdefault(None, [])
    if _guard not in hooks:
        raise RuntimeError("install the render fast path after init_auth: it must run behind the login guard")
    path = app.config.routes_pathname_prefix + "_dash-update-component"

    def answer_cached_render() -> Response | None:
        if request.method != "POST" or request.path != path:
            return None
        try:
            return cached_response(request.get_json(silent=True))
        except Exception:   # the slow path is the reference behaviour: let Dash answer
            log.debug("render fast path declined", exc_info=True)
            return None

    hooks.append(answer_cached_render)


def cached_response(payload: Any) -> Response | None:
    """Dash's response to `payload` when it is a cached page's render callback with a cache hit."""
    found = _render_request(payload)
    if found is None:
        return None
    body_id, version, filters = found
    text = cached_body(CACHED_BODIES[body_id].render, version, filters)
    if text is None:
        return None
    head = b'{"multi":true,"response":{' + json.dumps(body_id).encode() + b':{"children":'
    return Response(head + text + b"}}}", content_type="application/json")


def _render_request(payload: Any) -> tuple[str, int | None, dict[str, Any]] | None:
    """(body id, version, filters) when `payload` is exactly a registered render callback."""
    if not isinstance(payload, dict) or payload.get("state"):
        return None
    outputs = payload.get("outputs")
    if not isinstance(outputs, dict) or outputs.get("property") != "children":
        return None
    body_id = outputs.get("id")
    if not isinstance(body_id, str) or body_id not in CACHED_BODIES \
            or payload.get("output") != f"{body_id}.children":
        return None
    spec = CACHED_BODIES[body_id]
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 2 or not all(isinstance(i, dict) for i in inputs):
        return None
    got_version, got_filters = inputs
    if (got_version.get("id"), got_version.get("property")) != (spec.version_id, "data") \
            or (got_filters.get("id"), got_filters.get("property")) != (spec.filters_id, "data"):
        return None
    version = got_version.get("value")
    filters = got_filters.get("value")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        return None
    if filters is None:
        filters = {}
    if not isinstance(filters, dict):
        return None
    return body_id, version, filters
