"""Logging in and out through the real form, cookies, CSRF, throttling, disabled users."""
from __future__ import annotations

from kpis.appdb import MAX_LOCK_S, AppDb

from .conftest import PASSWORD, build_test_app, cookie_csrf, csrf_of, login, rows_json


def test_login_page_is_bilingual_and_open_without_a_session(app):
    page = app.test_client().get("/login").get_data(as_text=True)
    assert "登录" in page and "Sign in" in page and 'name="csrf_token"' in page


def test_good_login_redirects_and_sets_an_httponly_samesite_session_cookie(app):
    client = app.test_client()
    resp = login(client, "mgr1")
    assert resp.status_code == 302 and resp.headers["Location"] == "/"
    cookies = resp.headers.getlist("Set-Cookie")
    session_cookie = next(c for c in cookies if c.startswith("kpi_session="))
    assert "HttpOnly" in session_cookie
    assert "SameSite=Lax" in session_cookie
    assert "Expires=" in session_cookie          # permanent, with a lifetime
    assert "Secure" not in session_cookie        # plain http in this test
    assert client.get("/api/values").status_code == 200


def test_session_cookie_is_secure_over_https(app):
    client = app.test_client()
    csrf = client.get("/login", base_url="https://kpi.example").get_data(as_text=True)
    token = csrf.split('name="csrf_token" value="')[1].split('"')[0]
    resp = client.post("/login", base_url="https://kpi.example",
                       data={"username": "mgr1", "password": PASSWORD, "csrf_token": token})
    session_cookie = next(c for c in resp.headers.getlist("Set-Cookie")
                          if c.startswith("kpi_session="))
    assert "Secure" in session_cookie


def test_wrong_password_and_unknown_user_answer_the_same_and_are_audited(app, appdb: AppDb):
    client = app.test_client()
    bad = login(client, "mgr1", "not the password")
    unknown = login(client, "nobody", "not the password")
    assert bad.status_code == unknown.status_code == 401
    assert "用户名或密码错误" in bad.get_data(as_text=True)
    assert bad.get_data(as_text=True).replace("mgr1", "") == unknown.get_data(as_text=True) \
        .replace("nobody", "")
    assert client.get("/api/values").status_code == 401
    fails = appdb.audit_rows(event="login_fail")
    assert [r["user"] for r in fails] == ["nobody", "mgr1"]


def test_successful_login_and_logout_are_audited(app, appdb: AppDb):
    client = app.test_client()
    login(client, "mgr1")
    resp = client.post("/logout", data={"csrf_token": cookie_csrf(client)})
    assert resp.status_code == 302
    events = [(r["user"], r["event"]) for r in reversed(appdb.audit_rows())]
    assert ("mgr1", "login_ok") in events and ("mgr1", "logout") in events


def test_login_post_without_the_form_token_is_refused(app):
    client = app.test_client()
    client.get("/login")
    resp = client.post("/login", data={"username": "mgr1", "password": PASSWORD})
    assert resp.status_code == 400
    assert client.get("/api/values").status_code == 401


def test_logout_needs_the_csrf_token(app):
    client = app.test_client()
    login(client, "mgr1")
    assert client.post("/logout").status_code == 403
    assert client.get("/api/values").status_code == 200   # still logged in


def test_a_copied_cookie_is_dead_after_logout(app):
    client = app.test_client()
    login(client, "mgr1")
    stolen = client.get_cookie("kpi_session").value
    client.post("/logout", data={"csrf_token": cookie_csrf(client)})
    thief = app.test_client()
    thief.set_cookie("kpi_session", stolen)
    assert thief.get("/api/values").status_code == 401


def test_disabled_user_cannot_log_in_and_an_open_session_stops(app, appdb: AppDb):
    open_session = app.test_client()
    login(open_session, "mgr2")
    appdb.disable_user("mgr2")
    assert open_session.get("/api/values").status_code == 401
    assert login(app.test_client(), "mgr2").status_code == 401


def test_brute_force_is_slowed_down_per_user(app, appdb: AppDb):
    client = app.test_client()
    statuses = [login(client, "mgr1", f"guess {i}").status_code for i in range(4)]
    # three free failures (401), the fourth attempt already waits; even the right password
    assert statuses[:3] == [401, 401, 401]
    locked = login(client, "mgr1")
    assert locked.status_code == 429
    assert 1 <= int(locked.headers["Retry-After"]) <= MAX_LOCK_S
    assert "尝试次数过多" in locked.get_data(as_text=True)
    # another user from the same address is not locked out by mgr1's lock
    assert login(app.test_client(), "mgr2").status_code == 302


def test_lockout_doubles_with_each_further_failure(appdb: AppDb):
    now = 1_000_000.0
    waits = []
    for i in range(8):
        appdb.record_failure(["user:x"], now)
        waits.append(appdb.throttle_wait(["user:x"], now))
    assert waits == [0, 0, 4, 8, 16, 32, 64, 128]


def test_throttle_is_shared_by_every_worker_through_app_db(app, settings, snapshot):
    for i in range(3):
        login(app.test_client(), "ana1", f"guess {i}")
    # a second web worker: its own Flask app and its own handle on the same app.db
    other = build_test_app(settings, snapshot, AppDb(settings.app_db_path, settings.timezone))
    assert login(other.test_client(), "ana1").status_code == 429


def test_next_parameter_cannot_redirect_to_another_site(app):
    client = app.test_client()
    token = csrf_of(client)
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        resp = client.post("/login", data={"username": "boss", "password": PASSWORD,
                                           "csrf_token": token, "next": target})
        assert resp.headers["Location"] == "/", target
        client.post("/logout", data={"csrf_token": cookie_csrf(client)})
        token = csrf_of(client)


def test_after_login_the_user_lands_where_they_were_going(app):
    client = app.test_client()
    first = client.get("/?org=X1", headers={"Accept": "text/html"})
    assert first.status_code == 302 and first.headers["Location"].startswith("/login?next=")
    page = client.get(first.headers["Location"]).get_data(as_text=True)
    assert 'name="next" value="/?org=X1"' in page
    resp = client.post("/login", data={"username": "mgr1", "password": PASSWORD,
                                       "csrf_token": csrf_of(client), "next": "/?org=X1"})
    assert resp.headers["Location"] == "/?org=X1"
    assert rows_json(client.get("/api/values?org=X1"))
