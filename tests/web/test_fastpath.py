"""The render fast path: a cached page body is answered before Dash, with Dash's own answer,
behind the login guard, per user scope; anything unusual goes on to Dash."""
from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask

from dashboards import _fastpath
from tests.web.conftest import Web, login

DASH_ENDPOINT = "/_dash-update-component"


def _payload(page: str, path: str, org: Any = None, version: Any = None) -> dict[str, Any]:
    return {"output": f"{page}-body.children", "outputs": {"id": f"{page}-body", "property": "children"},
            "inputs": [{"id": f"{page}-version", "property": "data", "value": version},
                       {"id": f"{page}-filters", "property": "data",
                        "value": {"org": org, "period": "2026-10-15", "lang": "zh", "path": path}}],
            "state": [], "changedPropIds": []}


def _post(client: Any, payload: Any, csrf: bool = True) -> Any:
    headers = {"Content-Type": "application/json"}
    if csrf:
        headers["X-CSRFToken"] = client.get_cookie("kpi_csrf").value
    return client.post(DASH_ENDPOINT, data=json.dumps(payload), headers=headers)


def _text(resp: Any) -> str:
    """The body's text with the JSON escapes of Chinese undone."""
    return json.dumps(json.loads(resp.get_data()), ensure_ascii=False)


@pytest.fixture
def dash_calls(web: Web, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the requests that reached Dash's callback dispatch."""
    server = web.app.server  # type: ignore[attr-defined]
    dispatch = server.view_functions[DASH_ENDPOINT]
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return dispatch(*args, **kwargs)
    monkeypatch.setitem(server.view_functions, DASH_ENDPOINT, counted)
    return calls


def test_a_cached_render_is_answered_before_dash_with_dash_s_own_answer(web: Web, client: Any,
                                                                         dash_calls: list[int]) -> None:
    login(client, "ana")
    payload = _payload("repair", "/repair", org="C1")
    first = _post(client, payload)              # renders through Dash and fills the cache
    second = _post(client, payload)
    assert (first.status_code, second.status_code) == (200, 200)
    assert len(dash_calls) == 1                 # the second never reached Dash
    assert json.loads(second.get_data()) == json.loads(first.get_data())
    assert second.content_type == "application/json"
    assert second.get_data().startswith(b'{"multi":true,"response":{"repair-body":{"children":')
    assert "99.00" in _text(second)             # C1's on-time arrival on 2026-10-15 (snapshot_kit)


def test_each_user_gets_the_body_of_their_own_scope(web: Web, dash_calls: list[int]) -> None:
    server = web.app.server  # type: ignore[attr-defined]
    ana, mgr = server.test_client(), server.test_client()
    login(ana, "ana")
    login(mgr, "mgr")
    payload = _payload("customer", "/customer")          # no unit: each user's top unit
    for user, seen, unseen in ((ana, ("浙江省公司", "宁波供电公司"), ()),     # P0's child table lists C2
                               (mgr, ("杭州供电公司",), ("宁波供电公司", "浙江省公司"))):   # C1 and below
        texts = [_text(_post(user, payload))]
        rendered = len(dash_calls)
        texts.append(_text(_post(user, payload)))
        assert len(dash_calls) == rendered      # the repeat came from the cache
        for text in texts:
            assert all(name in text for name in seen) and not any(name in text for name in unseen)


def test_a_tampered_unit_is_refused_on_every_request(web: Web, dash_calls: list[int]) -> None:
    mgr = web.app.server.test_client()  # type: ignore[attr-defined]
    login(mgr, "mgr")
    for _ in range(3):
        text = _text(_post(mgr, _payload("customer", "/customer", org="C2")))
        assert "宁波供电公司" not in text


def test_the_cache_is_behind_login_and_csrf(web: Web) -> None:
    server = web.app.server  # type: ignore[attr-defined]
    ana = server.test_client()
    login(ana, "ana")
    payload = _payload("repair", "/repair", org="P0")
    assert _post(ana, payload).status_code == 200 and _post(ana, payload).status_code == 200
    anonymous = server.test_client()
    resp = anonymous.post(DASH_ENDPOINT, data=json.dumps(payload), headers={"Content-Type": "application/json"})
    assert resp.status_code == 401 and "96.5" not in resp.get_data(as_text=True)
    assert _post(ana, payload, csrf=False).status_code == 403
    ana.post("/logout", data={"csrf_token": ana.get_cookie("kpi_csrf").value})
    assert ana.post(DASH_ENDPOINT, data=json.dumps(payload),
                    headers={"Content-Type": "application/json"}).status_code == 401


@pytest.mark.parametrize("change", [
    lambda p: p["inputs"][0].update(value="7"),                    # version not an integer
    lambda p: p["inputs"][0].update(value=True),
    lambda p: p["inputs"][1].update(value=["org", "C2"]),         # filters not an object
    lambda p: p.update(state=[{"id": "x", "property": "y"}]),
    lambda p: p["outputs"].update(property="style"),
    lambda p: p.update(output="repair-body.style"),
    lambda p: p.update(outputs={"id": "alerts-body", "property": "children"},   # not cached
                       output="alerts-body.children"),
    lambda p: p["inputs"].reverse(),
    lambda p: p["inputs"].pop(),
    lambda p: p.update(inputs=None),
])
def test_anything_but_the_exact_render_request_goes_to_dash(web: Web, change: Any) -> None:
    # `web` imports the pages, which register their render callbacks
    payload = _payload("repair", "/repair")
    assert _fastpath._render_request(payload) == ("repair-body", None, payload["inputs"][1]["value"])
    change(payload)
    assert _fastpath._render_request(payload) is None


def test_not_a_render_request_at_all(web: Web) -> None:
    for payload in (None, [], "x", {"outputs": "repair-body.children"}):
        assert _fastpath._render_request(payload) is None


def test_the_fast_path_refuses_to_run_in_front_of_the_login_guard() -> None:
    bare = SimpleNamespace(server=Flask("no_auth"), config=SimpleNamespace(routes_pathname_prefix="/"))
    with pytest.raises(RuntimeError, match="after init_auth"):
        _fastpath.install(bare)  # type: ignore[arg-type]
