"""Which contract tables each KPI reads, for incremental evaluation.

A definition declares its source systems; the ETL marks tables dirty. Deciding by system made
every meter KPI re-evaluate each minute because terminal heartbeats touch meter_terminal, which
only the terminal KPIs read. The tables are found in the definition's own SQL (facts, presence)
and, through the shared prelude objects and macros it names, in kpis/sql/prelude.sql. Every KPI
also reads the org tree (attribution and roll-up) and so depends on mis_org and mis_grid.
"""
from __future__ import annotations

import re
from functools import lru_cache

from etl.contract import load_contract
from kpis.prelude import statements
from kpis.spec import KpiDef

_WORD = re.compile(r"\b[a-z_][a-z0-9_]*\b")
_COMMENT = re.compile(r"--[^\n]*")
_DEFINES = re.compile(r"^CREATE OR REPLACE (?:TEMP )?(?:TABLE|VIEW|MACRO) (\w+)")
# attribution and roll-up of every KPI (kpis/compile.py) read the org tree
ALWAYS = frozenset({"mis_org", "mis_grid"})


@lru_cache(maxsize=1)
def _contract_tables() -> frozenset[str]:
    return frozenset(load_contract().tables)


@lru_cache(maxsize=1)
def _prelude_bodies() -> dict[str, frozenset[str]]:
    """Prelude object (table, view, macro) -> the words of its definition."""
    bodies: dict[str, frozenset[str]] = {}
    for stmt in statements():
        m = _DEFINES.match(stmt)
        if m:
            bodies[m.group(1)] = frozenset(_WORD.findall(stmt[m.end():].lower()))
    return bodies


@lru_cache(maxsize=1)
def _prelude_refs() -> dict[str, frozenset[str]]:
    """Prelude object -> the prelude objects it reads, transitively, itself included."""
    bodies = _prelude_bodies()

    def resolve(name: str, seen: frozenset[str]) -> frozenset[str]:
        out = {name}
        for w in bodies[name]:
            if w in bodies and w not in seen:
                out |= resolve(w, seen | {w})
        return frozenset(out)

    return {name: resolve(name, frozenset({name})) for name in bodies}


@lru_cache(maxsize=1)
def _prelude_tables() -> dict[str, frozenset[str]]:
    """Prelude object -> contract tables it reads, directly or through other prelude objects."""
    bodies, contract = _prelude_bodies(), _contract_tables()
    return {name: frozenset(w for o in refs for w in bodies[o] if w in contract)
            for name, refs in _prelude_refs().items()}


def prelude_tables(name: str) -> frozenset[str]:
    """The contract tables a prelude object reads, directly or through other prelude objects."""
    return _prelude_tables().get(name, frozenset())


def prelude_objects(k: KpiDef) -> frozenset[str]:
    """The prelude objects (tables, views, macros) the KPI's SQL reads, directly or through
    other prelude objects: which on-demand prelude tables an evaluation must build."""
    refs = _prelude_refs()
    out: set[str] = set()
    code = _COMMENT.sub("", f"{k.facts or ''}\n{k.presence or ''}")
    for w in _WORD.findall(code.lower()):
        out |= refs.get(w, frozenset())
    return frozenset(out)


def tables_read(k: KpiDef) -> frozenset[str]:
    """The contract tables whose changes can change this KPI's values."""
    contract, prelude = _contract_tables(), _prelude_tables()
    out: set[str] = set(ALWAYS)
    for w in _WORD.findall(f"{k.facts or ''}\n{k.presence or ''}".lower()):
        if w in contract:
            out.add(w)
        elif w in prelude:
            out |= prelude[w]
    return frozenset(out)


# Any of these can read columns the SQL does not name: a star (SELECT *, alias.*), a NATURAL
# join, COLUMNS(...), * EXCLUDE / REPLACE.
_ANY_COLUMN = re.compile(r"\bselect\s+(?:distinct\s+)?\*|\w\.\*|\bnatural\b|\bcolumns\s*\(|"
                         r"\*\s*(?:exclude|replace)\b")


@lru_cache(maxsize=1)
def _prelude_texts() -> dict[str, str]:
    """Prelude object -> its statement, lower case, comments dropped."""
    return {m.group(1): _COMMENT.sub("", stmt).lower()
            for stmt in statements() if (m := _DEFINES.match(stmt))}


def columns_read(k: KpiDef, table: str) -> frozenset[str] | None:
    """The columns of a contract table the KPI's values can depend on: those of its names that
    the KPI's SQL, or a prelude object it reads that reads the table, writes as words (an
    over-approximation). None: any column may count (the org tree, read by every roll-up; a
    star, NATURAL join or COLUMNS() in that SQL)."""
    return _columns_read(k.facts or "", k.presence or "", table)


@lru_cache(maxsize=8192)
def _columns_read(facts: str, presence: str, table: str) -> frozenset[str] | None:
    if table in ALWAYS or table not in _contract_tables():
        return None
    code = _COMMENT.sub("", f"{facts}\n{presence}").lower()
    refs = _prelude_refs()
    objects = {o for w in _WORD.findall(code) for o in refs.get(w, ())}
    texts = [code] + [_prelude_texts()[o] for o in sorted(objects)
                      if table in _prelude_tables().get(o, ()) and o in _prelude_texts()]
    if any(_ANY_COLUMN.search(t) for t in texts):
        return None
    columns = {c.name for c in load_contract().tables[table].columns}
    return frozenset(w for t in texts for w in _WORD.findall(t) if w in columns)


# Whole rows passed on by a prelude object (`alias.*`, `SELECT *`) are still read column by
# column by the KPI that names them; these forms read columns no text names.
_ANY_COLUMN_IN_PRELUDE = re.compile(r"\bdistinct\s+(?:\w+\.)?\*|\bnatural\b|\bcolumns\s*\(|"
                                    r"\bby\s+all\b|\bby\s+name\b")
_TOKEN = re.compile(r"'(?:[^']|'')*'|[()]|,|\b(?:select|from)\b")
_PASSED = re.compile(r"(?:\w+\.)?\w+")


def _without_passed_columns(text: str) -> str:
    """The statement without the plain `alias.column` items of its outer select list: such a
    column only passes through under its own name, and counts for a KPI that names it. Items
    with an expression or an alias stay, as does every other clause (joins, filters, groups)."""
    depth, start, end, commas = 0, None, None, []
    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        elif depth == 0 and tok == "select":
            start, end, commas = m.end(), None, []
        elif depth == 0 and tok == "from" and start is not None and end is None:
            end = m.start()
        elif depth == 0 and tok == "," and start is not None and end is None:
            commas.append(m.start())
    if start is None or end is None:
        return text
    bounds = [start, *[c + 1 for c in commas], end + 1]
    items = [text[a:b - 1] for a, b in zip(bounds, bounds[1:])]
    if items[0].lstrip().startswith("distinct"):
        return text
    kept = [it for it in items if not _PASSED.fullmatch(it.strip())]
    return text[:start] + " " + ", ".join(kept) + " " + text[end:]


def columns_named(k: KpiDef, table: str) -> frozenset[str] | None:
    """The columns of a contract table the KPI's values can depend on, for waking it (kpis/wake.py),
    closer than columns_read: a prelude object passes columns on to the KPI, which reads the
    ones it names. So a star (k_wo is `SELECT w.*, ...`) or a plain `b.column` item of the
    object's outer select list (k_bill) counts only through the KPI's own SQL; the object's
    joins, filters and expressions count in full. None as in columns_read, or when the KPI's own
    SQL has a star."""
    return _columns_named(k.facts or "", k.presence or "", table)


@lru_cache(maxsize=8192)     # asked for every woken (KPI, table) of every minute pass
def _columns_named(facts: str, presence: str, table: str) -> frozenset[str] | None:
    if table in ALWAYS or table not in _contract_tables():
        return None
    code = _COMMENT.sub("", f"{facts}\n{presence}").lower()
    if _ANY_COLUMN.search(code):
        return None
    objects = {o for w in _WORD.findall(code) for o in _prelude_refs().get(w, ())}
    texts = [_prelude_texts()[o] for o in sorted(objects)
             if table in _prelude_tables().get(o, ()) and o in _prelude_texts()]
    if any(_ANY_COLUMN_IN_PRELUDE.search(t) for t in texts):
        return None
    columns = {c.name for c in load_contract().tables[table].columns}
    return frozenset(w for t in [code, *map(_without_passed_columns, texts)]
                     for w in _WORD.findall(t) if w in columns)
