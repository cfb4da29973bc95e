"""The source contract (contract/sources.sql) parsed into table and column descriptions.

The contract is the business's agreement on the four source systems. Everything the ETL
needs to know about a table (columns, types, required values, primary key, system) is read
from it here, so the extractor, the warehouse schema and the tests never retype a column list.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CONTRACT_PATH = Path(__file__).resolve().parent.parent / "contract" / "sources.sql"
SYSTEMS = ("mis", "cs", "dist", "meter")

_CREATE = re.compile(r"^CREATE TABLE (\w+) \($")
_COLUMN = re.compile(r"^\s+(\w+)\s+([A-Z]+(?:\(\d+(?:,\s*\d+)?\))?)(.*?)(?:--.*)?$")
_TABLE_PK = re.compile(r"^\s+PRIMARY KEY \(([^)]+)\)")
_CODE_INSERT = re.compile(r"^INSERT INTO (\w+_code) \(")
_CODE_ROW = re.compile(r"^\s+\('([^']*)', '([^']*)', '((?:[^']|'')*)', (NULL|'[^']*'), (NULL|'[^']*')")


@dataclass(frozen=True)
class Column:
    name: str
    type: str            # as written in the contract, e.g. VARCHAR(16), NUMERIC(16,2), TIMESTAMP
    not_null: bool
    comment: str
    default: str | None = None   # the DDL default, as SQL text (e.g. 0, 1)

    @property
    def base_type(self) -> str:
        return self.type.split("(")[0]

    @property
    def duckdb_type(self) -> str:
        """The warehouse type: timestamps as TIMESTAMP, money/energy as DECIMAL, codes as VARCHAR."""
        base = self.base_type
        if base == "NUMERIC":
            return self.type.replace("NUMERIC", "DECIMAL")
        if base == "VARCHAR":
            return "VARCHAR"
        return base  # SMALLINT, INTEGER, BIGINT, DATE, TIMESTAMP


@dataclass(frozen=True)
class Table:
    name: str
    system: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"`{self.name}` has no column `{name}` in the contract")


@dataclass(frozen=True)
class Contract:
    tables: dict[str, Table]
    codes: dict[str, dict[tuple[str, str], tuple[str, str | None, str | None]]]
    ddl: str

    def system_tables(self, system: str) -> list[Table]:
        return [t for t in self.tables.values() if t.system == system]


def _system_of(table: str) -> str:
    prefix = table.split("_", 1)[0]
    if prefix not in SYSTEMS:
        raise ValueError(f"contract table `{table}` has no known system prefix {SYSTEMS}")
    return prefix


def parse_contract(text: str) -> Contract:
    """Parse the contract DDL; raises ValueError naming the line that does not fit."""
    tables: dict[str, Table] = {}
    codes: dict[str, dict[tuple[str, str], tuple[str, str | None, str | None]]] = {}
    lines = text.splitlines()
    i = 0
    code_table: str | None = None
    while i < len(lines):
        line = lines[i]
        m = _CREATE.match(line)
        if m:
            name, cols, key = m.group(1), [], ()
            i += 1
            while not lines[i].startswith(");"):
                body = lines[i]
                pk = _TABLE_PK.match(body)
                if pk:
                    key = tuple(k.strip() for k in pk.group(1).split(","))
                elif body.strip() and not body.strip().startswith("--"):
                    cm = _COLUMN.match(body)
                    if not cm:
                        raise ValueError(f"sources.sql:{i + 1}: cannot read column line {body!r}")
                    rest = cm.group(3)
                    comment = body.split("--", 1)[1].strip() if "--" in body else ""
                    dm = re.search(r"DEFAULT\s+('[^']*'|[-\w.]+)", rest)
                    cols.append(Column(cm.group(1), cm.group(2).replace(" ", ""), "NOT NULL" in rest,
                                       comment, dm.group(1) if dm else None))
                    if "PRIMARY KEY" in rest:
                        key = (cm.group(1),)
                i += 1
            if not key:
                raise ValueError(f"sources.sql: table `{name}` has no primary key")
            tables[name] = Table(name, _system_of(name), tuple(cols), key)
            code_table = None
        elif _CODE_INSERT.match(line):
            code_table = _CODE_INSERT.match(line).group(1)
        elif code_table and _CODE_ROW.match(line):
            r = _CODE_ROW.match(line)
            ptype = None if r.group(4) == "NULL" else r.group(4).strip("'")
            pval = None if r.group(5) == "NULL" else r.group(5).strip("'")
            codes.setdefault(code_table, {})[(r.group(1), r.group(2))] = (r.group(3), ptype, pval)
        elif not line.startswith("  ("):
            code_table = None if not line.startswith("--") else code_table
        i += 1
    return Contract(tables, codes, text)


@lru_cache(maxsize=4)
def load_contract(path: Path = CONTRACT_PATH) -> Contract:
    return parse_contract(path.read_text(encoding="utf-8"))
