"""Web tests: one published hand-made snapshot (snapshot_kit), real users, one Dash app per session.

Dash keeps page callbacks in a process-wide list that the first app takes, so the app is built
once per session; tests that need other data use their own snapshot directory and KpiService.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from etl.settings import Settings, load_settings
from kpis.appdb import AppDb
from tests.web.snapshot_kit import publish_fixture

PASSWORD = "correct horse battery staple"
USERS = (("ana", "analyst", "P0"), ("mgr", "manager", "C1"), ("boss", "admin", "P0"))


@dataclass
class Web:
    settings: Settings
    app: object          # dash.Dash
    data_dir: Path


def make_settings(data_dir: Path) -> Settings:
    return load_settings({"DATA_DIR": str(data_dir), "SECRET_KEY": "web-tests-" + "k" * 32,
                          "SIMULATE": "0"})


def add_users(settings: Settings) -> None:
    db = AppDb(settings.app_db_path, settings.timezone)
    for name, role, org in USERS:
        db.add_user(name, role, org, PASSWORD)
    db.engine.dispose()


@pytest.fixture(scope="session")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    data_dir = tmp_path_factory.mktemp("web") / "data"
    publish_fixture(data_dir)
    settings = make_settings(data_dir)
    add_users(settings)
    from dashboards._web import create_app
    yield Web(settings, create_app(settings), data_dir)


def login(client, name: str) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    resp = client.post("/login", data={"username": name, "password": PASSWORD, "csrf_token": token,
                                       "next": "/"})
    assert resp.status_code == 302, resp.get_data(as_text=True)


@pytest.fixture
def client(web: Web):  # type: ignore[no-untyped-def]
    return web.app.server.test_client()  # type: ignore[attr-defined]
