"""The cache warmer: a new snapshot is served once the views in use are rendered for it."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dashboards import _warm
from dashboards._warm import Warmer
from kpis.publish import publish
from kpis.scope import Scope
from tests.web.conftest import add_users, login, make_settings
from tests.web.snapshot_kit import publish_fixture

ALL_UNITS = frozenset({"P0", "C1", "C2", "X1", "S1", "G1"})


class _Reader:
    def __init__(self, on_disk: set[int]) -> None:
        self.on_disk = on_disk

    def exists(self, version: int) -> bool:
        return version in self.on_disk


class _Service:
    def __init__(self, on_disk: set[int]) -> None:
        self.reader = _Reader(on_disk)


def _running(warmer: Warmer) -> threading.Event:
    """Mark the warmer's thread as alive without warming anything."""
    stop = threading.Event()
    warmer._thread = threading.Thread(target=stop.wait, daemon=True)
    warmer._thread.start()
    return stop


def test_a_new_version_is_held_back_until_warm_or_the_budget_is_spent(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    service = _Service({1, 2, 3})
    warmer = Warmer(None, service, tmp_path / "hot", lambda _page: None)
    assert warmer.gate(1) == 1                  # no thread: nothing is held back
    stop = _running(warmer)
    try:
        assert warmer.gate(1) == 1              # the first version this process sees
        assert warmer.gate(2) == 1              # published, not warmed yet
        warmer._served = 2                      # what the thread does after warming
        assert warmer.gate(2) == 2
        assert warmer.gate(3) == 2
        monkeypatch.setattr(_warm, "WARM_BUDGET_S", 0.0)
        assert warmer.gate(3) == 3              # the budget is spent: fresh data wins
        monkeypatch.setattr(_warm, "WARM_BUDGET_S", 3600.0)
        service.reader.on_disk.discard(3)
        assert warmer.gate(4) == 4              # the version served was pruned meanwhile
    finally:
        stop.set()


def _render_body(client: Any, page: str, path: str) -> int:
    body = {"output": f"{page}-body.children", "outputs": {"id": f"{page}-body", "property": "children"},
            "inputs": [{"id": f"{page}-version", "property": "data", "value": None},
                       {"id": f"{page}-filters", "property": "data",
                        "value": {"org": None, "period": "2026-10-15", "lang": "zh", "path": path}}],
            "state": [], "changedPropIds": []}
    csrf = client.get_cookie("kpi_csrf").value
    return client.post("/_dash-update-component", data=json.dumps(body),
                       headers={"Content-Type": "application/json", "X-CSRFToken": csrf}).status_code


def test_views_in_use_are_rendered_for_the_next_snapshot(tmp_path: Path) -> None:
    from dashboards._web import create_app
    data = tmp_path / "data"
    publish_fixture(data)
    settings = make_settings(data)
    add_users(settings)
    app = create_app(settings)
    warmer: Warmer = app.server.extensions["kpi_warmer"]
    warmer.stop()                               # warm by hand below, not on the thread's clock
    client = app.server.test_client()
    login(client, "ana")
    assert _render_body(client, "repair", "/repair") == 200
    views = warmer.views()
    assert [(v["page"], v["user"], v["filters"]["period"]) for v in views] == [
        ("dashboards.repair", "ana", "2026-10-15")]

    con = duckdb.connect(str(data / "warehouse.duckdb"))
    try:
        con.execute("UPDATE kpi_value SET value = 50, computed_at = '2026-10-15 10:05:00' "
                    "WHERE kpi_id = 'repair.merge_rate' AND org_no = 'P0'")
        assert publish(con, data / "serving").version == 2
    finally:
        con.close()
    assert warmer.warm(2) == 1

    service = app.server.extensions["kpi_warmer"].service
    scope = Scope(user="someone else", role="manager", org_nos=ALL_UNITS)   # same units, same entry

    def cold() -> Any:
        raise AssertionError("the view was not warmed")
    filters = {**views[0]["filters"], "_v": 2}
    body = service.cached_view("dashboards.repair", scope, filters, cold, version=2)
    assert "50.00" in body.decode("utf-8")      # cached as the JSON text Dash sends
    # a user granted fewer units has another cache entry: nothing was warmed for them
    with pytest.raises(AssertionError, match="not warmed"):
        service.cached_view("dashboards.repair", Scope("mgr", "manager", frozenset({"C1", "X1", "S1", "G1"})),
                            filters, cold, version=2)
