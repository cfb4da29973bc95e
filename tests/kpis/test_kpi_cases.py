"""Every hand-computed KPI case gives the values worked out by hand in its file."""
from __future__ import annotations

from pathlib import Path

import pytest

from kpis.registry import Registry, load_registry
from tests.kpis.harness import CASES_DIR, check_case

CASES = sorted(CASES_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path: Path, registry: Registry) -> None:
    check_case(path, registry)
