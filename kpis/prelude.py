"""Applies the shared KPI definitions (kpis/sql/prelude.sql) to a warehouse connection."""
from __future__ import annotations

from pathlib import Path

import duckdb

PRELUDE_PATH = Path(__file__).resolve().parent / "sql" / "prelude.sql"


def statements() -> list[str]:
    text = "\n".join(line for line in PRELUDE_PATH.read_text(encoding="utf-8").splitlines()
                     if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def apply_prelude(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)build the org tree, calendar and shared views from the current core tables."""
    for stmt in statements():
        con.execute(stmt)
