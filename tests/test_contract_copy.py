"""The product's copies of the business agreements equal ../shared/spec, where it is present."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "spec"


@pytest.mark.parametrize("name", ["sources.sql", "kpis.csv", "CONVENTIONS.md"])
def test_contract_copy_is_current(name: str) -> None:
    if not (SHARED / name).exists():
        pytest.skip(f"{SHARED / name} not present beside the checkout; nothing to compare")
    assert (ROOT / "contract" / name).read_bytes() == (SHARED / name).read_bytes(), (
        f"contract/{name} differs from ../shared/spec/{name}: copy the new agreement in and "
        "review what changed")


def test_contract_parses_every_table() -> None:
    from etl.contract import load_contract
    text = (ROOT / "contract" / "sources.sql").read_text(encoding="utf-8")
    contract = load_contract()
    assert len(contract.tables) == text.count("\nCREATE TABLE ")
    assert sum(len(v) for v in contract.codes.values()) == sum(
        1 for line in text.splitlines() if line.startswith("  ('"))
