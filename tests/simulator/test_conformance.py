"""The simulated sources have exactly the contract's tables, columns, types, keys and code lists."""
from __future__ import annotations

import os
import re
import sqlite3
from datetime import date

import pytest
from sqlalchemy import create_engine, inspect

import simulator
from etl.contract import load_contract
from simulator.config import SYSTEMS

CONTRACT = load_contract()


def _norm(type_text: str) -> str:
    return re.sub(r"\s+", "", type_text.upper())


def assert_matches_contract(url: str, system: str) -> None:
    engine = create_engine(url)
    try:
        insp = inspect(engine)
        expected = {t.name: t for t in CONTRACT.system_tables(system)}
        present = {n for n in insp.get_table_names() if n.split("_", 1)[0] == system}
        assert present == set(expected), f"{system}: tables differ from the contract"
        for name, table in expected.items():
            cols = insp.get_columns(name)
            assert [c["name"] for c in cols] == list(table.column_names), name
            for c, want in zip(cols, table.columns):
                got = _norm(str(c["type"]))
                if got.startswith("CHARACTERVARYING"):              # PostgreSQL spelling
                    got = got.replace("CHARACTERVARYING", "VARCHAR")
                if got == "TIMESTAMPWITHOUTTIMEZONE":
                    got = "TIMESTAMP"
                assert got == _norm(want.type), f"{name}.{c['name']}: {got} != {want.type}"
                if want.not_null:
                    assert not c["nullable"], f"{name}.{c['name']} should be NOT NULL"
            assert tuple(insp.get_pk_constraint(name)["constrained_columns"]) == table.key, name
    finally:
        engine.dispose()


@pytest.mark.parametrize("system", SYSTEMS)
def test_sqlite_sources_match_the_contract(small, system):
    urls, _, _ = small
    assert_matches_contract(urls[system], system)


def test_every_contract_table_gets_rows(small):
    _, folder, _ = small
    empty = []
    for system in SYSTEMS:
        con = sqlite3.connect(folder / f"source_{system}.db")
        empty += [t.name for t in CONTRACT.system_tables(system)
                  if con.execute(f"SELECT COUNT(*) FROM {t.name}").fetchone()[0] == 0]
        con.close()
    assert not empty, f"tables without rows: {empty}"


@pytest.mark.parametrize("system", SYSTEMS)
def test_declared_foreign_keys_hold(small, system):
    urls, folder, _ = small
    con = sqlite3.connect(folder / f"source_{system}.db")
    try:
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        con.close()


def _coded_columns(system: str) -> list[tuple[str, str, str]]:
    """(table, column, code_type) for every column whose comment starts with a code type."""
    types = {ct for (ct, _) in CONTRACT.codes[f"{system}_code"]}
    out = []
    for table in CONTRACT.system_tables(system):
        if table.name.endswith("_code"):
            continue
        for col in table.columns:
            words = col.comment.replace("[ADDED]", "").split()
            if words and words[0] in types:
                out.append((table.name, col.name, words[0]))
    return out


@pytest.mark.parametrize("system", SYSTEMS)
def test_code_values_come_from_the_code_lists(small, system):
    urls, folder, _ = small
    con = sqlite3.connect(folder / f"source_{system}.db")
    try:
        checked = 0
        for table, column, code_type in _coded_columns(system):
            allowed = {v for (ct, v) in CONTRACT.codes[f"{system}_code"] if ct == code_type}
            values = {r[0] for r in con.execute(f"SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL")}
            assert values <= allowed, f"{table}.{column}: {sorted(values - allowed)} not in {code_type}"
            checked += 1
        assert checked >= 10
        # the code tables hold exactly the contract's INSERTs
        rows = {(r[0], r[1]) for r in con.execute(f"SELECT code_type, code_value FROM {system}_code")}
        assert rows == set(CONTRACT.codes[f"{system}_code"])
    finally:
        con.close()


def test_customer_mix_is_mostly_residential(small):
    _, folder, _ = small
    con = sqlite3.connect(folder / "source_mis.db")
    n, res = con.execute("SELECT COUNT(*), SUM(cons_sort_code = '03') FROM mis_customer").fetchone()
    con.close()
    assert 2500 <= n <= 3500
    assert 0.84 <= res / n <= 0.92


def test_org_tree_and_calendar(small):
    _, folder, _ = small
    con = sqlite3.connect(folder / "source_mis.db")
    try:
        levels = dict(con.execute("SELECT org_type, COUNT(*) FROM mis_org GROUP BY org_type").fetchall())
        assert levels["02"] == 1 and levels["03"] == 1 and levels["04"] >= 2 and levels["05"] >= 2
        assert con.execute("SELECT COUNT(*) FROM mis_org WHERE parent_org_no IS NULL").fetchone()[0] == 1
        assert con.execute("SELECT COUNT(*) FROM mis_grid g JOIN mis_org o ON o.org_no = g.org_no "
                           "WHERE o.org_type <> '05'").fetchone()[0] == 0
        lo, hi, n = con.execute("SELECT MIN(cal_date), MAX(cal_date), COUNT(*) FROM mis_work_calendar").fetchone()
        assert lo <= "2026-09-01" and hi >= "2027-09-10"
        assert n == (date.fromisoformat(hi) - date.fromisoformat(lo)).days + 1    # no gaps
        # 2026-10-01 national day is a holiday, 2026-09-05 a Saturday
        flags = dict(con.execute("SELECT cal_date, work_flag FROM mis_work_calendar "
                                 "WHERE cal_date IN ('2026-10-01', '2026-09-05', '2026-09-07')").fetchall())
        assert flags == {"2026-10-01": 0, "2026-09-05": 0, "2026-09-07": 1}
    finally:
        con.close()


def _pg_admin():
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True,
                               connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 ({exc})")


@pytest.fixture
def pg_urls(tmp_path):
    """A throwaway PostgreSQL database holding all four systems (table names carry the prefix)."""
    admin = _pg_admin()
    name = f"sim_test_{os.getpid()}"
    admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        yield {s: url for s in SYSTEMS}, name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_postgresql_sources_match_the_contract(pg_urls, tmp_path):
    urls, _ = pg_urls
    counts = simulator.build(urls, scale="small", seed=42, days=2, start=date(2026, 9, 1), side=tmp_path)
    for system in SYSTEMS:
        assert_matches_contract(urls[system], system)
    engine = create_engine(urls["cs"])
    with engine.connect() as con:
        n = con.exec_driver_sql("SELECT COUNT(*) FROM cs_work_order").scalar()
    engine.dispose()
    assert n == counts["cs_work_order"] > 0
    # live upserts respect the foreign keys PostgreSQL enforces, step after step
    from simulator import live
    for _ in range(4):
        live.step(urls, 3 * 3600, side=tmp_path)
    engine = create_engine(urls["cs"])
    with engine.connect() as con:
        later = con.exec_driver_sql("SELECT COUNT(*), MAX(updated_at) FROM cs_work_order").one()
    engine.dispose()
    assert later[0] > n and str(later[1]) <= "2026-09-03 12:00:00"
