"""Applies the shared KPI definitions (kpis/sql/prelude.sql) to a warehouse connection."""
from __future__ import annotations

from pathlib import Path

import re

import duckdb

_CREATE = re.compile(r"^CREATE OR REPLACE (TEMP )?(TABLE|VIEW) (\w+)")

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
        m = _CREATE.match(stmt)
        if m:
            _drop_other_kind(con, m.group(3), m.group(2), temp)
        con.execute(stmt)


def _drop_other_kind(con: duckdb.DuckDBPyConnection, name: str, kind: str, temp: bool) -> None:
    """A shared object may change kind between releases (a view made a table): drop the old one."""
    db = "temp" if temp else None
    other = "VIEW" if kind == "TABLE" else "TABLE"
    catalog = "duckdb_views()" if other == "VIEW" else "duckdb_tables()"
    row = con.execute(f"SELECT COUNT(*) FROM {catalog} WHERE table_name = $n AND NOT internal "
                      f"AND ($db IS NULL AND database_name <> 'temp' OR database_name = $db)"
                      if other == "TABLE" else
                      f"SELECT COUNT(*) FROM {catalog} WHERE view_name = $n AND NOT internal "
                      f"AND ($db IS NULL AND database_name <> 'temp' OR database_name = $db)",
                      {"n": name, "db": db}).fetchone()
    if row and row[0]:
        con.execute(f"DROP {other} {'temp.' if temp else ''}{name}")
