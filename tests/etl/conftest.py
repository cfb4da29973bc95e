"""Fixtures for ETL tests: hand-made SQLite sources and a migrated warehouse on tmp_path."""
from __future__ import annotations

from pathlib import Path

import pytest

from etl.settings import load_settings
from etl.warehouse import Warehouse
from tests.etl.sources_kit import build_sources

ORGS = [
    {"org_no": "P", "org_name": "省公司", "org_type": "02", "status_code": "01"},
    {"org_no": "C1", "org_name": "地市1", "org_type": "03", "parent_org_no": "P", "status_code": "01"},
    {"org_no": "X1", "org_name": "县1", "org_type": "04", "parent_org_no": "C1", "status_code": "01"},
    {"org_no": "S1", "org_name": "所1", "org_type": "05", "parent_org_no": "X1", "status_code": "01"},
]
GRIDS = [{"grid_no": "G1", "grid_name": "网格1", "org_no": "S1", "status_code": "01"}]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return build_sources(tmp_path, {"mis_org": ORGS, "mis_grid": GRIDS})


@pytest.fixture
def wh(env: dict[str, str]):
    settings = load_settings(env)
    w = Warehouse(settings.warehouse_path, threads=1, memory_limit="1GB")
    w.migrate()
    yield w
    w.close()


@pytest.fixture
def settings(env: dict[str, str]):
    return load_settings(env)
