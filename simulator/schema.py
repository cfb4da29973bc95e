"""The contract DDL split into per-system statements, and the column layout of each table."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from simulator.config import REPO, SYSTEMS

CONTRACT = REPO / "contract" / "sources.sql"
_TARGET = re.compile(r"^(?:CREATE TABLE|CREATE INDEX \w+ ON|INSERT INTO)\s+(\w+)", re.S)
_COLUMN = re.compile(r"^\s+(\w+)\s+([A-Z]+(?:\(\d+(?:,\s*\d+)?\))?)(.*)$")


@dataclass(frozen=True)
class TableDef:
    """One contract table: name, system, ordered columns, key and defaults."""
    name: str
    system: str
    columns: tuple[str, ...]
    types: dict[str, str]
    not_null: frozenset[str]
    defaults: dict[str, object]
    key: tuple[str, ...]


def _strip_comment(line: str) -> str:
    """Drop a `--` comment that is outside any string literal."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == "'":
            quoted = not quoted
        elif ch == "-" and not quoted and line[i:i + 2] == "--":
            return line[:i]
    return line


def split_statements(text: str) -> list[str]:
    """Statements of the DDL; comments hold semicolons and code names hold `;`, so a
    statement ends only at a `;` closing a line once comments are removed."""
    out: list[str] = []
    buf: list[str] = []
    for raw in text.splitlines():
        line = _strip_comment(raw).rstrip()
        if not line.strip():
            continue
        buf.append(line)
        if line.endswith(";"):
            out.append("\n".join(buf)[:-1].strip())
            buf = []
    if buf:
        raise ValueError(f"{CONTRACT}: unterminated statement at the end: {buf[0]!r}")
    return out


def _parse_table(stmt: str) -> TableDef:
    lines = stmt.splitlines()
    name = _TARGET.match(stmt).group(1)
    cols: list[str] = []
    types: dict[str, str] = {}
    not_null: set[str] = set()
    defaults: dict[str, object] = {}
    key: tuple[str, ...] = ()
    for body in lines[1:-1]:
        pk = re.match(r"^\s+PRIMARY KEY \(([^)]+)\)", body)
        if pk:
            key = tuple(k.strip() for k in pk.group(1).split(","))
            continue
        m = _COLUMN.match(body)
        if not m:
            raise ValueError(f"{CONTRACT}: cannot read column line {body!r} of `{name}`")
        col, rest = m.group(1), m.group(3)
        cols.append(col)
        types[col] = m.group(2).replace(" ", "")
        if "NOT NULL" in rest:
            not_null.add(col)
        d = re.search(r"DEFAULT (\S+?)[,\s]", rest + " ")
        if d:
            defaults[col] = int(d.group(1)) if d.group(1).isdigit() else d.group(1).strip("'")
        if "PRIMARY KEY" in rest:
            key = (col,)
    return TableDef(name, name.split("_", 1)[0], tuple(cols), types, frozenset(not_null), defaults, key)


@dataclass(frozen=True)
class Contract:
    """Statements per system (in contract order) and table definitions."""
    statements: dict[str, list[str]]
    tables: dict[str, TableDef]


@lru_cache(maxsize=2)
def load(path: Path = CONTRACT) -> Contract:
    """Parse contract/sources.sql once."""
    statements: dict[str, list[str]] = {s: [] for s in SYSTEMS}
    tables: dict[str, TableDef] = {}
    for stmt in split_statements(path.read_text(encoding="utf-8")):
        m = _TARGET.match(stmt)
        if not m:
            raise ValueError(f"{path}: unexpected statement {stmt[:60]!r}")
        system = m.group(1).split("_", 1)[0]
        if system not in statements:
            raise ValueError(f"{path}: table `{m.group(1)}` has no system prefix {SYSTEMS}")
        statements[system].append(stmt)
        if stmt.startswith("CREATE TABLE"):
            t = _parse_table(stmt)
            tables[t.name] = t
    return Contract(statements, tables)


def codes(system: str) -> dict[str, list[str]]:
    """Code values per code type of one system's *_code INSERTs, in contract order."""
    out: dict[str, list[str]] = {}
    for stmt in load().statements[system]:
        if stmt.startswith("INSERT INTO"):
            for m in re.finditer(r"^\s+\('([^']*)', '([^']*)'", stmt, re.M):
                out.setdefault(m.group(1), []).append(m.group(2))
    return out
