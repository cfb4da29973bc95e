"""Applies the shared KPI definitions (kpis/sql/prelude.sql) to a warehouse connection."""
from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path

import duckdb

_CREATE = re.compile(r"^CREATE OR REPLACE (TEMP )?(TABLE|VIEW) (\w+)")

PRELUDE_PATH = Path(__file__).resolve().parent / "sql" / "prelude.sql"

# Prelude tables that only some KPIs read and whose build scans a large source table (work
# orders, repair tasks, metering points): an evaluation builds them only when a KPI of its plan
# reads them (kpis.dependencies.prelude_objects), so a pass without such a KPI does not pay.
ON_DEMAND = frozenset({"k_settle_tg", "k_wo", "k_task"})


def statements() -> list[str]:
    text = "\n".join(line for line in PRELUDE_PATH.read_text(encoding="utf-8").splitlines()
                     if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def apply_prelude(con: duckdb.DuckDBPyConnection, temp: bool = False,
                  needed: Collection[str] | None = None) -> None:
    """(Re)build the org tree, calendar and shared views from the current core tables.

    temp=True creates them as TEMP objects of this connection only, which a read-only
    connection to a published snapshot may do (detail pages, exports).
    needed: the ON_DEMAND tables to rebuild (None: all). One that is not needed keeps its
    current rows (only KPIs that need it read it, and they rebuild it), or is created empty
    when missing so that every definition still binds.
    """
    existing = _existing_kinds(con, temp)
    for stmt in statements():
        if temp:
            for kind in ("TABLE", "VIEW", "MACRO"):
                stmt = stmt.replace(f"CREATE OR REPLACE {kind}", f"CREATE OR REPLACE TEMP {kind}")
        m = _CREATE.match(stmt)
        if m and needed is not None and m.group(3) in ON_DEMAND and m.group(3) not in needed:
            if existing.get(m.group(3)) == "TABLE":
                continue
            stmt = f"{stmt} LIMIT 0"
        if m and existing.get(m.group(3), m.group(2)) != m.group(2):
            # A shared object may change kind between releases (a view made a table).
            con.execute(f"DROP {existing[m.group(3)]} {'temp.' if temp else ''}{m.group(3)}")
        con.execute(stmt)


def _existing_kinds(con: duckdb.DuckDBPyConnection, temp: bool) -> dict[str, str]:
    """Tables and views of the prelude's schema by name, read in one catalog query: the
    evaluation runs every minute, and a catalog query per object cost 50 ms each."""
    where = "database_name = 'temp'" if temp else "database_name <> 'temp'"
    rows = con.execute(f"""SELECT table_name, 'TABLE' FROM duckdb_tables() WHERE NOT internal AND {where}
                           UNION ALL
                           SELECT view_name, 'VIEW' FROM duckdb_views() WHERE NOT internal AND {where}
                        """).fetchall()
    return {name: kind for name, kind in rows}


def build_on_demand(con: duckdb.DuckDBPyConnection, names: Collection[str]) -> None:
    """Rebuild the ON_DEMAND tables among `names` (after apply_prelude has created the rest)."""
    for stmt in statements():
        m = _CREATE.match(stmt)
        if m and m.group(3) in ON_DEMAND and m.group(3) in names:
            con.execute(stmt)
