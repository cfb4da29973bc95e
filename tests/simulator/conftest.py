"""Fixtures: small simulator builds in temporary folders (never data/)."""
from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

import simulator
from simulator.config import SYSTEMS

START = date(2026, 9, 1)


def sqlite_urls(folder: Path) -> dict[str, str]:
    return {s: f"sqlite:///{folder / f'source_{s}.db'}" for s in SYSTEMS}


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path, dict[str, int]]:
    """`small` scale, seed 42, ten days from 2026-09-01, no bad rows."""
    folder = tmp_path_factory.mktemp("small")
    urls = sqlite_urls(folder)
    counts = simulator.build(urls, scale="small", seed=42, days=10, start=START)
    return urls, folder, counts


@pytest.fixture(scope="session")
def small_bad(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path, dict[str, int]]:
    """`small` scale with 5 % bad rows over four days."""
    folder = tmp_path_factory.mktemp("small_bad")
    urls = sqlite_urls(folder)
    counts = simulator.build(urls, scale="small", seed=7, days=4, start=START, bad_rows=0.05)
    return urls, folder, counts


def table_hashes(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every table's rows in primary-key order, per table."""
    import hashlib
    import sqlite3

    from etl.contract import load_contract
    out = {}
    for table in load_contract().tables.values():
        if table.name in skip:
            continue
        con = sqlite3.connect(folder / f"source_{table.system}.db")
        h = hashlib.sha256()
        for row in con.execute(f"SELECT * FROM {table.name} ORDER BY {', '.join(table.key)}"):
            h.update(repr(row).encode())
        con.close()
        out[table.name] = h.hexdigest()
    return out
