"""Hand-made SQLite sources built from the contract DDL, for small exact ETL tests."""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from etl.contract import load_contract
from etl.settings import SOURCE_NAMES, load_settings

TS = "2026-10-15 08:00:00"
# updated_at ahead of the wall clock: the SQLite source clock is then MAX(updated_at)
U0 = "2030-01-01 08:00:00"
U1 = "2030-01-01 09:00:00"


def system_statements(system: str) -> list[str]:
    """The contract's CREATE TABLE / CREATE INDEX / INSERT statements of one system."""
    out = []
    for stmt in load_contract().ddl.split(";\n"):
        body = "\n".join(l for l in stmt.splitlines() if not l.lstrip().startswith("--")).strip()
        m = re.match(r"^(?:CREATE TABLE|CREATE INDEX \w+ ON|INSERT INTO)\s+(\w+)", body)
        if m and m.group(1).startswith(system + "_"):
            out.append(body)
    return out


def build_sources(root: Path, rows: dict[str, list[dict]] | None = None,
                  loose: tuple[str, ...] = ()) -> dict[str, str]:
    """One SQLite file per system under root; returns the environment naming them."""
    env = {"DATA_DIR": str(root / "data"), "ETL_SAFETY_LAG_S": "0"}
    for system in SOURCE_NAMES:
        path = root / f"source_{system}.db"
        con = sqlite3.connect(path)
        for stmt in system_statements(system):
            if any(stmt.startswith(f"CREATE TABLE {t} ") for t in loose):
                stmt = re.sub(r"\s+PRIMARY KEY(?! \()", "", stmt)
                stmt = re.sub(r",\s*PRIMARY KEY \([^)]*\)", "", stmt)
                stmt = stmt.replace("NOT NULL", "")     # a loose source: no constraint at all
            con.execute(stmt)
        con.commit()
        con.close()
        env[f"SOURCE_{system.upper()}_URL"] = f"sqlite:///{path}"
    if rows:
        insert(env, rows)
    return env


def insert(env: dict[str, str], rows: dict[str, list[dict]], replace: bool = True) -> None:
    """Insert (or replace) rows; missing NOT NULL columns get harmless defaults."""
    contract = load_contract()
    for table, items in rows.items():
        t = contract.tables[table]
        path = env[f"SOURCE_{t.system.upper()}_URL"].removeprefix("sqlite:///")
        con = sqlite3.connect(path)
        for item in items:
            full = {c.name: item.get(c.name, _default(c)) for c in t.columns}
            full.update(item)
            cols = ", ".join(full)
            verb = "INSERT OR REPLACE" if replace else "INSERT"
            con.execute(f"{verb} INTO {table} ({cols}) VALUES ({', '.join('?' * len(full))})",
                        list(full.values()))
        con.commit()
        con.close()


def _default(c) -> object:
    if c.name in ("created_at", "updated_at"):
        return U0
    if c.name == "is_deleted":
        return 0
    if not c.not_null:
        return None
    return {"TIMESTAMP": TS, "DATE": "2026-10-15", "NUMERIC": 1, "INTEGER": 1, "SMALLINT": 0,
            "BIGINT": 1}.get(c.base_type, "01")


def settings_for(env: dict[str, str]):
    return load_settings(env)
