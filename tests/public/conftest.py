"""Warehouses built once per module from the public data, through the product's own path:
hand-made SQLite sources (tests/etl/sources_kit.py) -> the ETL pass -> the KPI engine."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import duckdb
import pytest

from etl.pipeline import run_pass
from etl.settings import load_settings
from etl.warehouse import Warehouse
from kpis.evaluate import evaluate_and_store
from kpis.periods import Period, day, hours_of, month
from kpis.registry import Registry, load_registry
from tests.etl.sources_kit import build_sources
from tests.public.public_data import (CALL_ORGS, CALLS_CSV, METRICS_CSV, OUTAGES_XLSX, PUBLIC_DIR,
                                      call_rows, outage_tables, outage_times, public_file,
                                      read_calls, read_metrics, read_outages)

CALL_KPIS = ("call.inbound_calls", "call.agent_requests", "call.abandon_rate", "call.answer_rate",
             "call.asa_seconds", "call.aht_seconds", "call.service_level_20s",
             "call.ivr_containment_rate")
CALLS_AS_OF = datetime(2010, 9, 2)          # every August call has ended
OUTAGES_AS_OF = datetime(2018, 1, 1)        # after the last restoration


def _need(*names: str) -> None:
    missing = [n for n in names if not public_file(n).exists()]
    if missing:
        pytest.skip(f"public data not found: {', '.join(missing)} (expected in ../shared/data/public/ "
                    f"next to the repository, resolved to {PUBLIC_DIR}); see docs/public-data.md")


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry()


def _warehouse(root: Path, tables: dict[str, list[dict]], sources: tuple[str, ...]) -> Warehouse:
    env = build_sources(root, tables)
    settings = load_settings(env)
    wh = Warehouse(settings.warehouse_path, threads=2, memory_limit="1GB")
    result = run_pass(settings, wh, sources=sources)
    assert result.ok, f"ETL pass failed: {result}"
    return wh


def _evaluate(con: duckdb.DuckDBPyConnection, registry: Registry, ids: tuple[str, ...],
              periods: list[Period], as_of: datetime) -> None:
    summary = evaluate_and_store(con, registry, periods, as_of,
                                 kpis=[registry.get(k) for k in ids], computed_at=as_of)
    assert not summary.errors, summary.errors


@pytest.fixture(scope="module")
def calls(tmp_path_factory, registry):
    """(cursor, raw call log, third-party August metrics); KPIs evaluated for every August
    hour, day and the month."""
    _need(CALLS_CSV, METRICS_CSV)
    raw = read_calls()
    wh = _warehouse(tmp_path_factory.mktemp("public_calls"),
                    {"mis_org": CALL_ORGS, "cs_call": call_rows(raw)}, ("mis", "cs"))
    con = wh.cursor()
    days = [day(date(2010, 8, d)) for d in range(1, 32)]
    periods = days + [h for d in days for h in hours_of(d)] + [month(2010, 8)]
    _evaluate(con, registry, CALL_KPIS, periods, CALLS_AS_OF)
    yield con, raw, read_metrics(8)
    con.close()
    wh.close()


@pytest.fixture(scope="module")
def outages(tmp_path_factory, registry) -> Iterator[tuple]:
    """(cursor, events with both times): mid_f per month, caidi_min per calendar year (the
    12-month window ending at 1 January)."""
    _need(OUTAGES_XLSX)
    pytest.importorskip("openpyxl", reason="openpyxl (requirements-dev.txt) reads the xlsx")
    events = read_outages()
    times = outage_times(events)
    wh = _warehouse(tmp_path_factory.mktemp("public_outages"),
                    outage_tables(events, times.index.tolist()), ("mis", "dist"))
    con = wh.cursor()
    years = range(times["start"].min().year, times["start"].max().year + 1)
    _evaluate(con, registry, ("reliability.mid_f",),
              [month(y, m) for y in years for m in range(1, 13)], OUTAGES_AS_OF)
    _evaluate(con, registry, ("reliability.caidi_min",),
              [day(date(y, 12, 31)) for y in years], OUTAGES_AS_OF)
    yield con, events.loc[times.index].join(times)
    con.close()
    wh.close()
