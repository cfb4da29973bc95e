"""Callbacks as plain functions: a fake KpiService, a fixed scope, no server."""
from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pandas as pd
import pytest

from dashboards._components import deps, shell
from kpis.scope import EMPTY_SCOPE, Scope
from kpis.serving import SnapshotUnavailable
from tests.web.conftest import Web

SCOPE = Scope(user="u", role="manager", org_nos=frozenset({"P0"}))


class FakeService:
    """Just enough of KpiService for the sources page, with hand-written frames."""
    refresh_ms = 30_000

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def version(self) -> int | None:
        return None if self.fail else 7

    def _require_version(self) -> int:
        if self.fail:
            raise SnapshotUnavailable("none")
        return 7

    def freshness(self, scope: Any, version: int | None = None) -> pd.DataFrame:
        if self.fail:
            raise SnapshotUnavailable("none")
        return pd.DataFrame({"source": ["mis", "cs", "dist", "meter"],
                             "data_as_of": [datetime(2026, 10, 15, 10)] * 4, "lag_s": [20, 20, 20, 9000],
                             "stale": [False, False, False, True],
                             "last_status": ["ok", "ok", "ok", "failed"],
                             "last_pass_at": [datetime(2026, 10, 15, 10)] * 4,
                             "last_error": [None, None, None, "database is locked"]})

    def sources(self, scope: Any, version: int | None = None) -> pd.DataFrame:
        return pd.DataFrame({"source": ["mis", "meter"], "table_name": ["mis_org", "meter_event"],
                             "row_count": [1234, 5], "deleted_count": [1, 0],
                             "max_updated_at": [datetime(2026, 10, 15, 9, 59)] * 2, "reject_count": [0, 3]})

    def data_today(self, version: int) -> date:
        return date(2026, 10, 15)


def _text(component: Any) -> str:
    """All text in a Dash component tree."""
    if component is None:
        return ""
    if isinstance(component, (str, int, float)):
        return str(component)
    if isinstance(component, (list, tuple)):
        return " ".join(_text(c) for c in component)
    return _text(getattr(component, "children", None)) + " " + str(getattr(component, "title", "") or "")


def test_sources_page_shows_every_system_with_its_tables(web: Web) -> None:
    from dashboards import sources
    with deps.use(FakeService(), lambda: SCOPE):
        out = shell.safe_render(sources.render, 7, {"lang": "zh", "path": "/sources"})
    text = _text(out)
    for name in ("营销业务应用系统", "95598客户服务系统", "配网抢修指挥系统", "用电信息采集系统"):
        assert name in text
    assert "mis_org" in text and "1,234" in text and "database is locked" in text
    assert "数据滞后" in text          # the meter source is late


def test_english_switch(web: Web) -> None:
    from dashboards import sources
    with deps.use(FakeService(), lambda: SCOPE):
        text = _text(shell.safe_render(sources.render, 7, {"lang": "en", "path": "/sources"}))
    assert "Metering data collection" in text and "Stale" in text


@pytest.mark.parametrize(("service", "scope", "expected"), [
    (FakeService(fail=True), SCOPE, "尚无已发布的数据快照"),
    (FakeService(), EMPTY_SCOPE, "您没有任何单位的查看权限"),
])
def test_unavailable_states_are_explicit(web: Web, service: FakeService, scope: Scope, expected: str) -> None:
    from dashboards import repair
    with deps.use(service, lambda: scope):
        assert expected in _text(shell.safe_render(repair.render, None, {"lang": "zh", "path": "/repair"}))


def test_repair_gauges_show_kpi_values(web: Web) -> None:
    """The real service over the fixture snapshot, called as a plain function."""
    from dashboards import repair
    service = deps.kpi_service()
    pairs = [("P0", "P0"), ("C1", "P0"), ("C2", "P0"), ("X1", "C1"), ("X1", "P0"), ("C1", "C1"),
             ("X1", "X1"), ("S1", "S1"), ("S1", "X1"), ("S1", "C1"), ("S1", "P0"), ("G1", "G1"),
             ("G1", "S1"), ("G1", "X1"), ("G1", "C1"), ("G1", "P0"), ("C2", "C2")]
    from kpis.scope import scope_for
    scope = scope_for("u", "manager", "P0", pairs)
    with deps.use(service, lambda: scope):
        out = repair.render(None, {"org": "P0", "period": "2026-10-15", "lang": "zh", "path": "/repair"})
    gauges = [c for c in _walk(out) if getattr(c, "id", None) and isinstance(c.id, dict)
              and c.id.get("type") == "repair-gauge"]
    values = {g.id["key"]: g.figure["data"][0]["value"] for g in gauges}
    assert values["repair.arrival_ontime_rate_urban"] == 96.5
    assert values["repair.arrival_minutes_avg_urban"] == 31.25


def _walk(component: Any) -> list[Any]:
    out = [component]
    kids = getattr(component, "children", None)
    if isinstance(kids, (list, tuple)):
        for k in kids:
            out += _walk(k)
    elif kids is not None and not isinstance(kids, (str, int, float)):
        out += _walk(kids)
    return out


def test_filter_change_writes_the_query_string(web: Web) -> None:
    import dash
    cb = next(v for k, v in web.app.callback_map.items() if k.startswith("repair-url.search"))  # type: ignore[attr-defined]
    fn = cb["callback"].__wrapped__
    assert fn("C1", "2026-10", {"org": "P0", "period": "today", "lang": "en"}) == "?org=C1&period=2026-10&lang=en"
    assert fn("P0", "today", {"org": "P0", "period": "today", "lang": "zh"}) is dash.no_update
