"""The product's web app (dashboards._web.create_app) over the hand-made snapshot of conftest.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from etl.settings import load_settings
from kpis.appdb import AppDb

from .conftest import SQL_PAYLOADS, cookie_csrf, copy_users, login, write_snapshot

web = pytest.importorskip("dashboards._web", reason="the web app factory is not written yet")

X2_NAMES = ("二县", "二所", "二网格")


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory, users_template: Path):  # type: ignore[no-untyped-def]
    """One app per module: Dash hands its global page callbacks to the first app built only."""
    settings = load_settings({"DATA_DIR": str(tmp_path_factory.mktemp("web") / "data")})
    write_snapshot(settings.serving_dir)
    copy_users(users_template, settings.app_db_path)
    return web.create_app(settings).server, AppDb(settings.app_db_path, settings.timezone)


@pytest.fixture
def web_app(product):  # type: ignore[no-untyped-def]
    return product[0]


@pytest.fixture
def appdb(product) -> AppDb:  # type: ignore[no-untyped-def]
    return product[1]


def _client(web_app, name: str):  # type: ignore[no-untyped-def]
    client = web_app.test_client()
    assert login(client, name).status_code == 302
    return client


def _concrete(rule: str) -> str:
    return (rule.replace("<path:filename>", "csrf.js").replace("<path:path>", "repair")
            .replace("<string:package_name>", "dash").replace("<path:fingerprinted_path>", "dash.js"))


def test_every_route_of_the_product_without_a_session_returns_no_data(web_app):
    client = web_app.test_client()
    checked = 0
    for rule in web_app.url_map.iter_rules():
        if rule.endpoint in ("auth_login", "auth_healthz"):
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for query in ("", "?org=X1&period=2026-10-15&kpi=repair.rate"):
                resp = client.open(_concrete(rule.rule) + query, method=method, json={})
                body = resp.get_data(as_text=True)
                assert resp.status_code in (302, 401), (rule.rule, method, resp.status_code)
                assert "一县" not in body and "repair.rate" not in body, rule.rule
                checked += 1
    assert checked >= 20


def test_pages_of_the_product_redirect_to_login(web_app):
    resp = web_app.test_client().get("/repair?org=X1", headers={"Accept": "text/html"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/login?next=/repair%3Forg%3DX1"


def _csv_units(resp) -> set[str]:  # type: ignore[no-untyped-def]
    lines = resp.get_data().decode("utf-8-sig").splitlines()
    col = next(i for i, h in enumerate(lines[0].split(",")) if h.startswith("org_no"))
    return {line.split(",")[col] for line in lines[1:] if line}


@pytest.mark.parametrize("path", ["/export/values.csv", "/export/matrix.csv"])
def test_analyst_export_holds_only_their_county(web_app, path: str):
    client = _client(web_app, "ana1")
    assert _csv_units(client.get(path + "?period=2026-10-15")) <= {"X1", "S1", "G1"}
    assert "X1" in _csv_units(client.get(path + "?period=2026-10-15"))
    other = client.get(path + "?period=2026-10-15&org=X2")
    assert other.status_code == 403
    assert not any(n in other.get_data(as_text=True) for n in X2_NAMES)


def test_managers_cannot_export(web_app):
    resp = _client(web_app, "mgr1").get("/export/values.csv?period=2026-10-15")
    assert resp.status_code == 403


@pytest.mark.parametrize("payload", SQL_PAYLOADS)
@pytest.mark.parametrize("param", ["org", "period", "theme", "kpi"])
def test_sql_injection_in_export_filters_leaks_nothing(web_app, param: str, payload: str):
    client = _client(web_app, "ana1")
    query = {"period": "2026-10-15", "kpi": "repair.rate", param: payload}
    for path in ("/export/values.csv", "/export/matrix.csv", "/export/detail.csv"):
        resp = client.get(path, query_string=query)
        assert resp.status_code in (200, 400, 403, 404), (path, resp.status_code)
        text = resp.get_data().decode("utf-8-sig", errors="replace")
        assert not any(n in text for n in X2_NAMES), (path, param, payload)
        if resp.status_code == 200:
            assert _csv_units(resp) <= {"X1", "S1", "G1"}
    after = client.get("/export/values.csv?period=2026-10-15")
    assert _csv_units(after) == {"X1"} | (_csv_units(after) & {"S1", "G1"})


def _render_payload(filters: dict[str, object]) -> dict[str, object]:
    return {"output": "repair-body.children",
            "outputs": {"id": "repair-body", "property": "children"},
            "inputs": [{"id": "repair-version", "property": "data", "value": 1},
                       {"id": "repair-filters", "property": "data", "value": filters}],
            "changedPropIds": ["repair-filters.data"], "state": []}


def _render(client, filters: dict[str, object]) -> str:  # type: ignore[no-untyped-def]
    resp = client.post("/_dash-update-component", json=_render_payload(filters),
                       headers={"X-CSRFToken": cookie_csrf(client)})
    assert resp.status_code in (200, 204), resp.get_data(as_text=True)[:500]
    # decoded: Dash escapes non-ASCII text as \uXXXX in the raw body
    return json.dumps(resp.get_json(), ensure_ascii=False) if resp.status_code == 200 else ""


def test_render_callback_shows_the_users_own_county(web_app):
    assert "一县" in _render(_client(web_app, "mgr1"), {"org": "X1", "period": "2026-10-15",
                                                         "path": "/repair"})


@pytest.mark.parametrize("org", ["X2", "G2", "C0", "X1' OR '1'='1", None])
def test_tampered_render_callback_shows_no_other_county(web_app, org: object):
    text = _render(_client(web_app, "mgr1"), {"org": org, "period": "2026-10-15",
                                              "path": "/repair"})
    assert not any(n in text for n in X2_NAMES), org


def test_render_callback_without_csrf_header_is_refused(web_app):
    client = _client(web_app, "mgr1")
    resp = client.post("/_dash-update-component", json=_render_payload({"org": "X1"}))
    assert resp.status_code == 403


def test_two_counties_one_after_the_other_get_their_own_rows_through_the_cache(web_app):
    first = _csv_units(_client(web_app, "ana1").get("/export/matrix.csv?period=2026-10-15"))
    second_client = _client(web_app, "boss")
    boss = _csv_units(second_client.get("/export/matrix.csv?period=2026-10-15&org=X2"))
    again = _csv_units(_client(web_app, "ana1").get("/export/matrix.csv?period=2026-10-15"))
    assert first == again and first <= {"X1", "S1", "G1"} and "X1" in first
    assert "X2" in boss and boss <= {"X2", "S2", "G2"}


def test_exports_of_the_product_are_audited_with_row_counts(web_app, appdb: AppDb):
    client = _client(web_app, "ana1")
    client.get("/export/matrix.csv?period=2026-10-15").get_data()
    row = appdb.audit_rows(event="export", limit=1)[0]
    assert row["user"] == "ana1" and row["row_count"] >= 1
    assert json.loads(row["detail"])["filters"]["period"] == "2026-10-15"
