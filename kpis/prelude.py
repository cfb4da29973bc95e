"""Applies the shared KPI definitions (kpis/sql/prelude.sql) to a warehouse connection."""
from __future__ import annotations

from pathlib import Path

import duckdb

PRELUDE_PATH = Path(__file__).resolve().parent / "sql" / "prelude.sql"


def statements() -> list[str]:
    text = "\n".join(line for line in PRELUDE_PATH.read_text(encoding="utf-8").splitlines()
                     if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def apply_prelude(con: duckdb.DuckDBPyConnection, temp: bool = False) -> None:
    """(Re)build the org tree, calendar and shared views from the current core tables.

    temp=True creates them as TEMP objects of this connection only, which a read-only
    connection to a published snapshot may do (detail pages, exports).
    """
    for stmt in statements():
        if temp:
            for kind in ("TABLE", "VIEW", "MACRO"):
                stmt = stmt.replace(f"CREATE OR REPLACE {kind}", f"CREATE OR REPLACE TEMP {kind}")
        con.execute(stmt)
