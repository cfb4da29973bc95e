"""Warehouse core tables generated from the contract: same names and columns, typed.

KPI SQL is written against the contract's table and column names (CONVENTIONS.md), so the
warehouse keeps them unchanged: timestamps as TIMESTAMP, money and energy as DECIMAL, codes as
VARCHAR. Keys are enforced by the loader's dedupe + MERGE, not by DuckDB indexes (an ART index
on every table slows the minute merges and adds nothing the loader does not already guarantee).
"""
from __future__ import annotations

from etl.contract import Contract, Table, load_contract


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_table_sql(table: Table, name: str | None = None, if_not_exists: bool = True) -> str:
    cols = ",\n  ".join(f"{quote_ident(c.name)} {c.duckdb_type}" for c in table.columns)
    guard = "IF NOT EXISTS " if if_not_exists else ""
    return f"CREATE TABLE {guard}{quote_ident(name or table.name)} (\n  {cols}\n)"


def ods_statements(contract: Contract | None = None) -> list[str]:
    """CREATE TABLE statements for every contract table, in contract order."""
    contract = contract or load_contract()
    return [create_table_sql(t) for t in contract.tables.values()]
