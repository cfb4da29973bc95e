"""A source that goes down refuses read-only connections for a while, then comes back unchanged."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import simulator
from simulator.faults import source_down
from tests.simulator.conftest import START, sqlite_urls

REPO = Path(__file__).resolve().parents[2]


def _count_ro(path: Path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM cs_work_order").fetchone()[0]
    finally:
        con.close()


@pytest.fixture
def built(tmp_path):
    urls = sqlite_urls(tmp_path)
    simulator.build(urls, scale="small", seed=1, days=1, start=START)
    return urls, tmp_path


def test_sqlite_source_down_then_back(built):
    urls, folder = built
    db = folder / "source_cs.db"
    n = _count_ro(db)
    with source_down(urls, "cs", folder):
        with pytest.raises(sqlite3.OperationalError):
            _count_ro(db)
        sqlite3.connect(db).close()          # a careless read-write open creates an empty file...
    assert _count_ro(db) == n                # ...which is discarded when the source comes back


def test_outage_command(built):
    urls, folder = built
    db = folder / "source_cs.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOURCE_")}
    env.update(DATA_DIR=str(folder), PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "simulator", "outage", "--source", "cs", "--seconds", "3"],
                            cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 20
        while not Path(f"{db}.down").exists():
            assert time.monotonic() < deadline, "the outage command never took the source down"
            time.sleep(0.05)
        with pytest.raises(sqlite3.OperationalError):
            _count_ro(db)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _count_ro(db) > 0


def test_live_skips_a_down_source_and_catches_up(tmp_path):
    from simulator import live
    from tests.simulator.conftest import table_hashes
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for f in (a, b):
        simulator.build(sqlite_urls(f), scale="small", seed=2, days=1, start=START)
    live.step(sqlite_urls(a), 12 * 3600)
    with source_down(sqlite_urls(b), "cs", b):
        live.step(sqlite_urls(b), 6 * 3600)
    assert table_hashes(b)["cs_call"] != table_hashes(a)["cs_call"]       # nothing written while down
    live.step(sqlite_urls(b), 6 * 3600)
    assert table_hashes(a) == table_hashes(b)


def test_postgresql_source_down_then_back(tmp_path):
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 ({exc})")
    name = f"sim_down_{os.getpid()}"
    admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    urls = {s: url for s in ("mis", "cs", "dist", "meter")}
    conninfo = f"host=127.0.0.1 user=postgres dbname={name}"
    try:
        simulator.build(urls, scale="small", seed=1, days=1, start=START, side=tmp_path)
        held = psycopg.connect(conninfo)
        with source_down(urls, "cs", tmp_path):
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(conninfo, connect_timeout=3)
            with pytest.raises(psycopg.OperationalError):
                held.execute("SELECT 1")                   # open sessions are cut too
        with psycopg.connect(conninfo) as con:
            assert con.execute("SELECT COUNT(*) FROM cs_work_order").fetchone()[0] > 0
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
