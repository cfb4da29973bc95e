"""Independent comparison of warehouse tables with their sources (values normalised in Python)."""
from __future__ import annotations

import hashlib
import sqlite3
from datetime import date, datetime

import duckdb
import sqlalchemy as sa

from etl.contract import Column, Table, load_contract


def _converter(c: Column):
    """A per-column normaliser: the same Python value whatever the storage type."""
    base = c.base_type
    if base == "TIMESTAMP":
        return lambda v: v if v is None or isinstance(v, datetime) else datetime.fromisoformat(str(v))
    if base == "DATE":
        return lambda v: v if v is None or isinstance(v, date) else date.fromisoformat(str(v))
    if base == "NUMERIC":
        scale = int(c.type.split(",")[1].rstrip(")")) if "," in c.type else 0
        return lambda v: None if v is None else round(float(v), scale)
    if base in ("SMALLINT", "INTEGER", "BIGINT"):
        return lambda v: None if v is None else int(v)
    return lambda v: None if v is None else str(v)


def source_rows(url: str, table: Table) -> dict[tuple, tuple]:
    cols = ", ".join(table.column_names)
    if url.startswith("sqlite:///"):
        con = sqlite3.connect(f"file:{url.removeprefix('sqlite:///')}?mode=ro", uri=True)
        rows = con.execute(f"SELECT {cols} FROM {table.name}").fetchall()
        con.close()
    else:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as con:
            rows = [tuple(r) for r in con.execute(sa.text(f"SELECT {cols} FROM {table.name}"))]
        engine.dispose()
    return _keyed(table, rows)


def warehouse_rows(con: duckdb.DuckDBPyConnection, table: Table) -> dict[tuple, tuple]:
    rows = con.execute(f"SELECT {', '.join(table.column_names)} FROM {table.name}").fetchall()
    out = _keyed(table, rows)
    assert len(out) == len(rows), f"`{table.name}`: duplicated keys in the warehouse"
    return out


def _keyed(table: Table, rows: list[tuple]) -> dict[tuple, tuple]:
    idx = [table.column_names.index(k) for k in table.key]
    out = {}
    conv = [_converter(c) for c in table.columns]
    for r in rows:
        norm = tuple(f(v) for f, v in zip(conv, r))
        out[tuple(norm[i] for i in idx)] = norm
    return out


def checksum(rows: dict[tuple, tuple]) -> str:
    h = hashlib.sha256()
    for k in sorted(rows):
        h.update(repr(rows[k]).encode())
    return h.hexdigest()


def assert_equal_to_sources(con: duckdb.DuckDBPyConnection, env: dict[str, str]) -> dict[str, str]:
    """Every contract table: same keys, same values; returns the checksums per table."""
    sums = {}
    for t in load_contract().tables.values():
        src = source_rows(env[f"SOURCE_{t.system.upper()}_URL"], t)
        got = warehouse_rows(con, t)
        assert set(got) == set(src), f"`{t.name}`: keys differ: {len(set(src) - set(got))} missing, " \
                                     f"{len(set(got) - set(src))} extra"
        bad = [k for k in src if src[k] != got[k]]
        assert not bad, f"`{t.name}`: {len(bad)} rows differ, e.g. {src[bad[0]]} != {got[bad[0]]}"
        sums[t.name] = checksum(got)
    return sums


def warehouse_checksums(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return {t.name: checksum(warehouse_rows(con, t)) for t in load_contract().tables.values()}
