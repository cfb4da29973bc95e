"""The per-process memo of session lookups: reused between requests, never past a logout,
a disabled user or the session's age limit, in this web worker or another one."""
from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

import kpis.appdb
from dashboards._components.auth import EXTENSION, SESSION_MEMO_S
from kpis.appdb import AppDb

from .conftest import build_test_app, cookie_csrf, login


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lookups(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The session ids the app database was asked about."""
    db = app.extensions[EXTENSION].db
    real = db.session_user
    asked: list[Any] = []

    def counted(sid: Any) -> Any:
        asked.append(sid)
        return real(sid)
    monkeypatch.setattr(db, "session_user", counted)
    return asked


@pytest.fixture
def clock(app: Flask) -> _Clock:
    fake = _Clock()
    app.extensions[EXTENSION].sessions.clock = fake
    return fake


def _same_cookie(app: Flask, client: Any) -> Any:
    """Another browser tab (or another web worker) with the same session cookie."""
    other = app.test_client()
    other.set_cookie("kpi_session", client.get_cookie("kpi_session").value)
    return other


def test_a_session_is_looked_up_once_for_several_requests(app: Flask, lookups: list[Any], clock: _Clock):
    client = app.test_client()
    login(client, "mgr1")
    lookups.clear()
    for _ in range(5):
        assert client.get("/api/values").status_code == 200
    assert len(lookups) == 1
    clock.now += SESSION_MEMO_S + 0.1
    assert client.get("/api/values").status_code == 200
    assert len(lookups) == 2                     # checked again once the memo time is over


def test_any_commit_to_the_app_database_makes_the_next_request_look_again(app: Flask, appdb: AppDb,
                                                                          lookups: list[Any], clock: _Clock):
    client = app.test_client()
    login(client, "mgr1")
    assert client.get("/api/values").status_code == 200
    lookups.clear()
    appdb.audit("someone", "export", {"what": "values"}, 3)      # another connection commits
    assert client.get("/api/values").status_code == 200
    assert len(lookups) == 1


def test_logout_in_another_web_worker_ends_the_session_here(app: Flask, settings, snapshot, appdb: AppDb,
                                                            clock: _Clock):
    other_worker = build_test_app(settings, snapshot, appdb)      # its own memo, same app database
    here = app.test_client()
    login(here, "mgr1")
    there = _same_cookie(other_worker, here)
    assert here.get("/api/values").status_code == 200
    assert there.get("/api/values").status_code == 200
    there.post("/logout", data={"csrf_token": cookie_csrf(here)})
    assert here.get("/api/values").status_code == 401              # no clock moved: not the TTL


def test_disabling_a_user_stops_their_memoised_session_at_once(app: Flask, appdb: AppDb, clock: _Clock):
    client = app.test_client()
    login(client, "mgr2")
    assert client.get("/api/values").status_code == 200
    AppDb(appdb.path).disable_user("mgr2")        # the users CLI: another connection
    assert client.get("/api/values").status_code == 401


def test_a_session_past_its_age_ends_within_the_memo_time(app: Flask, clock: _Clock,
                                                          monkeypatch: pytest.MonkeyPatch):
    client = app.test_client()
    login(client, "mgr1")
    assert client.get("/api/values").status_code == 200
    monkeypatch.setattr(kpis.appdb, "SESSION_MAX_AGE_S", -60)       # every session is now too old
    clock.now += SESSION_MEMO_S + 0.1
    assert client.get("/api/values").status_code == 401


def test_a_logout_here_forgets_the_session_even_in_the_memo(app: Flask, clock: _Clock):
    client = app.test_client()
    login(client, "mgr1")
    tab = _same_cookie(app, client)
    assert tab.get("/api/values").status_code == 200
    client.post("/logout", data={"csrf_token": cookie_csrf(client)})
    assert tab.get("/api/values").status_code == 401
