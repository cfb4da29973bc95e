"""Which contract tables each KPI reads, for incremental evaluation.

A definition declares its source systems; the ETL marks tables dirty. Deciding by system made
every meter KPI re-evaluate each minute because terminal heartbeats touch meter_terminal, which
only the terminal KPIs read. The tables are found in the definition's own SQL (facts, presence)
and, through the shared prelude objects and macros it names, in kpis/sql/prelude.sql. Every KPI
also reads the org tree (attribution and roll-up) and so depends on mis_org and mis_grid.
"""
from __future__ import annotations

import re
from collections.abc import Collection
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


def _resolve(name: str, seen: frozenset[str]) -> frozenset[str]:
    """`name` and the prelude objects it reads, transitively, not reading through `seen`."""
    bodies = _prelude_bodies()
    out = {name}
    for w in bodies[name]:
        if w in bodies and w not in seen:
            out |= _resolve(w, seen | {w})
    return frozenset(out)


@lru_cache(maxsize=1)
def _prelude_refs() -> dict[str, frozenset[str]]:
    """Prelude object -> the prelude objects it reads, transitively, itself included."""
    return {name: _resolve(name, frozenset({name})) for name in _prelude_bodies()}


@lru_cache(maxsize=1)
def _prelude_tables() -> dict[str, frozenset[str]]:
    """Prelude object -> contract tables it reads, directly or through other prelude objects."""
    bodies, contract = _prelude_bodies(), _contract_tables()
    return {name: frozenset(w for o in refs for w in bodies[o] if w in contract)
            for name, refs in _prelude_refs().items()}


_QUALIFIED = re.compile(r"\b([a-z_][a-z0-9_]*)\s*\.\s*([a-z_][a-z0-9_]*)\b")
_FROM_ITEM = re.compile(r"\b(?:from|join)\s+([a-z_][a-z0-9_]*)\b(?:\s+(?:as\s+)?([a-z_][a-z0-9_]*)\b)?")
_NOT_ALIAS = frozenset("""where join left right inner outer cross full natural semi anti asof
    positional lateral on using group order limit offset union except intersect qualify having
    window select as""".split())


def _columns_in(text: str, table: str, columns: Collection[str]) -> frozenset[str]:
    """The words of `text` (lower case, comments dropped) that are columns of `table`, except
    where every occurrence is qualified by an alias of other contract tables only: k_wo's
    `w.status_code` (w: cs_work_order) is not the status of the customer it joins, whose
    closure would otherwise wake every work-order KPI and re-read its days."""
    aliases = _aliases(text)
    elsewhere = {m.start(2) for m in _QUALIFIED.finditer(text)
                 if m[1] in aliases and all(_not_from(t, m[2], table) for t in aliases[m[1]])}
    return frozenset(m[0] for m in _WORD.finditer(text)
                     if m[0] in columns and m.start() not in elsewhere)


def _aliases(text: str) -> dict[str, set[str]]:
    """Each name a FROM or JOIN item of the text can be qualified by -> the tables it names."""
    aliases: dict[str, set[str]] = {}
    for m in _FROM_ITEM.finditer(text):
        aliases.setdefault(m[1], set()).add(m[1])
        if m[2] and m[2] not in _NOT_ALIAS:
            aliases.setdefault(m[2], set()).add(m[1])
    return aliases


def _not_from(source: str, column: str, table: str) -> bool:
    """Whether `source.column` is known not to be a column of `table`: source is another
    contract table, or a prelude object passing the column on from other contract tables only
    (k_wo's status_code comes from its `w.*`, cs_work_order, not from the customer it joins)."""
    if source in _contract_tables():
        return source != table
    passed = _passed_from(source, column)
    return passed is not None and table not in passed


_PLAIN_ITEM = re.compile(r"([a-z_][a-z0-9_]*)\s*\.\s*(\*|[a-z_][a-z0-9_]*)")
_NAMED_ITEM = re.compile(r"(?:.+?\s+as\s+)?([a-z_][a-z0-9_]*)", re.S)


@lru_cache(maxsize=4096)
def _passed_from(obj: str, column: str) -> frozenset[str] | None:
    """The contract tables a prelude object's output `column` is passed on from, when every item
    of its outer select list that can give it is a plain `alias.column` or `alias.*` over
    contract tables; None when unknown (an expression of that name, a star over another object,
    a set operation, no such item)."""
    text = _prelude_texts().get(obj)
    if text is None or re.search(r"\b(?:union|except|intersect)\b", text):
        return None
    outer = _outer_items(text)
    if outer is None:
        return None
    aliases, contract, out = _aliases(text), _contract_tables(), set()
    for item in (it.strip() for it in outer[2]):
        m = _PLAIN_ITEM.fullmatch(item)
        if m and (m[2] == "*" or m[2] == column):
            sources = aliases.get(m[1], set())
            if not sources or not sources <= contract:
                return None
            out |= {t for t in sources if m[2] == column
                    or column in {c.name for c in load_contract().tables[t].columns}}
        elif not m:
            named = _NAMED_ITEM.fullmatch(item)
            if named is None or named[1] == column:
                return None
    return frozenset(out) or None


def prelude_tables(name: str) -> frozenset[str]:
    """The contract tables a prelude object reads, directly or through other prelude objects."""
    return _prelude_tables().get(name, frozenset())


def prelude_columns(name: str, beside: str | None = None) -> dict[str, frozenset[str] | None]:
    """Per contract table a prelude object reads, the columns its rows can depend on: the
    table's column names written as words in its statement or in those of the prelude objects
    it reads that read the table (an over-approximation); None when one of them could read
    columns it does not name (a star, NATURAL, COLUMNS()). beside: leave out what it reads
    through that prelude object alone (k_settle_grp beside k_settle_mp, which it groups)."""
    return dict(_prelude_columns(name, beside))


def _refs_beside(name: str, beside: str | None) -> frozenset[str]:
    """The prelude objects `name` reads, itself included, not reading through `beside`."""
    if beside is None:
        return _prelude_refs().get(name, frozenset())
    return _resolve(name, frozenset({name, beside}))


@lru_cache(maxsize=32)
def _prelude_columns(name: str, beside: str | None = None) -> tuple[tuple[str, frozenset[str] | None], ...]:
    texts, bodies, contract = _prelude_texts(), _prelude_bodies(), _contract_tables()
    refs = _refs_beside(name, beside)
    reads = {o: frozenset(w for r in _refs_beside(o, beside) for w in bodies[r] if w in contract)
             for o in refs}
    out = []
    for table in sorted(set().union(*reads.values())):
        own = [texts[o] for o in sorted(refs) if o in texts and table in reads[o]]
        if any(_reads_whole_rows(t) for t in own):
            out.append((table, None))
            continue
        columns = {c.name for c in load_contract().tables[table].columns}
        out.append((table, frozenset().union(*(_columns_in(t, table, columns) for t in own))))
    return tuple(out)


def prelude_objects(k: KpiDef) -> frozenset[str]:
    """The prelude objects (tables, views, macros) the KPI's SQL reads, directly or through
    other prelude objects: which on-demand prelude tables an evaluation must build."""
    return _prelude_objects(k.sql_text)


# By the SQL text: the pass asks for every KPI's tables several times a minute, and the word
# scans of ~190 definitions were ~0.02 s of a city minute.
@lru_cache(maxsize=1024)
def _prelude_objects(sql_text: str) -> frozenset[str]:
    refs = _prelude_refs()
    out: set[str] = set()
    code = _COMMENT.sub("", sql_text)
    for w in _WORD.findall(code.lower()):
        out |= refs.get(w, frozenset())
    return frozenset(out)


def tables_read(k: KpiDef) -> frozenset[str]:
    """The contract tables whose changes can change this KPI's values."""
    return _tables_read(k.sql_text)


@lru_cache(maxsize=1024)
def _tables_read(sql_text: str) -> frozenset[str]:
    contract, prelude = _contract_tables(), _prelude_tables()
    out: set[str] = set(ALWAYS)
    for w in _WORD.findall(sql_text.lower()):
        if w in contract:
            out.add(w)
        elif w in prelude:
            out |= prelude[w]
    return frozenset(out)


# Any of these can read columns the SQL does not name: a star (SELECT *, alias.*), a NATURAL
# join, COLUMNS(...), * EXCLUDE / REPLACE. (_reads_whole_rows lets a star over a CTE or a
# derived table pass: see there.)
_ANY_COLUMN = re.compile(r"\bselect\s+(?:distinct\s+)?\*|\w\.\*|\bnatural\b|\bcolumns\s*\(|"
                         r"\*\s*(?:exclude|replace)\b")
_UNNAMED = re.compile(r"\bnatural\b|\bcolumns\s*\(")
_SQL_TOKEN = re.compile(r"'(?:[^']|'')*'|\w+|[().,*;]")
_CTE_NAME = re.compile(r"\b(\w+)\s+as\s+(?:not\s+)?(?:materialized\s+)?\(")
# the words that end a FROM clause, or follow a table where an alias could stand
_CLAUSE_END = frozenset({"where", "group", "order", "having", "qualify", "window", "limit", "union",
                         "except", "intersect", "returning", ";"})
_NOT_ALIAS = frozenset({"on", "using", "join", "left", "right", "inner", "outer", "full", "cross",
                        "semi", "anti", "asof", "positional", "lateral", "natural", "where", "group",
                        "order", "having", "qualify", "window", "limit", "union", "except",
                        "intersect", "as", "tablesample"})


def _from_items(toks: list[str], i: int) -> list[tuple[str, str]] | None:
    """(source, alias) of the FROM clause of the SELECT whose list holds token i; source '('
    for a derived table or a table function. None when no FROM follows at that depth."""
    depth = 0
    while i < len(toks):
        t = toks[i]
        if t == "(":
            depth += 1
        elif t == ")":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0 and t == "from":
            break
        elif depth == 0 and t in _CLAUSE_END:
            return None
        i += 1
    else:
        return None
    items: list[tuple[str, str]] = []
    i += 1
    expect = True      # an item starts here (after FROM, a comma or JOIN)
    while i < len(toks):
        t = toks[i]
        if t == ")" or t in _CLAUSE_END:
            break
        if t in (",", "join"):
            expect = True
            i += 1
            continue
        if t == "(" and not expect:      # ON/USING conditions: skip the group
            i = _skip_group(toks, i)
            continue
        if expect and t == "lateral":
            i += 1
            continue
        if expect and t not in _NOT_ALIAS:
            if t == "(":
                source, i = "(", _skip_group(toks, i)
            else:
                source = t
                i += 1
                while i + 1 < len(toks) and toks[i] == ".":       # schema.table
                    source, i = toks[i + 1], i + 2
                if i < len(toks) and toks[i] == "(":              # a table function
                    source, i = "(", _skip_group(toks, i)
            if i < len(toks) and toks[i] == "as":
                i += 1
            alias = source
            if i < len(toks) and re.fullmatch(r"\w+", toks[i]) and toks[i] not in _NOT_ALIAS:
                alias = toks[i]
                i += 1
            items.append((source, alias))
            expect = False
            continue
        i += 1
    return items


def _skip_group(toks: list[str], i: int) -> int:
    """The index after the parenthesised group opening at i."""
    depth = 0
    while i < len(toks):
        depth += toks[i] == "("
        depth -= toks[i] == ")"
        i += 1
        if depth == 0:
            break
    return i


def _reads_whole_rows(text: str) -> bool:
    """Whether the SQL (lower case, comments dropped) can read columns of a table that it does
    not name: a NATURAL join, COLUMNS(...), or a star over a contract table or a prelude object.
    A star over a CTE of the text, or over a derived table, passes on columns that the text
    names in that CTE or subquery (its own stars are checked in turn): the shared-subquery
    wrapper (`SELECT * FROM (facts)`) and `SELECT * FROM intr` leave a KPI's columns known."""
    if _UNNAMED.search(text):
        return True
    if not _ANY_COLUMN.search(text):
        return False
    toks = _SQL_TOKEN.findall(text)
    ctes = set(_CTE_NAME.findall(text))
    named = _contract_tables() | set(_prelude_bodies())
    for i, t in enumerate(toks):
        if t != "*" or i == 0:
            continue
        before = toks[i - 1]
        if before == ".":
            alias = toks[i - 2] if i >= 2 else ""
        elif before in ("select", "distinct", ","):
            alias = None
        else:
            continue        # COUNT(*), a product
        items = _from_items(toks, i + 1)
        if items is None:
            return True
        sources = [s for s, a in items if alias is None or a == alias]
        if not sources or any(s in named or (s != "(" and s not in ctes) for s in sources):
            return True
    return False


@lru_cache(maxsize=1)
def _prelude_texts() -> dict[str, str]:
    """Prelude object -> its statement, lower case, comments dropped."""
    return {m.group(1): _COMMENT.sub("", stmt).lower()
            for stmt in statements() if (m := _DEFINES.match(stmt))}


def _rest(k: KpiDef) -> str:
    """The KPI's SQL beside its facts (reduced facts, presence), read alike."""
    return "\n".join(x for x in (k.reduced, k.presence) if x)


def columns_read(k: KpiDef, table: str) -> frozenset[str] | None:
    """The columns of a contract table the KPI's values can depend on: those of its names that
    the KPI's SQL, or a prelude object it reads that reads the table, writes as words (an
    over-approximation). None: any column may count (the org tree, read by every roll-up; a
    star, NATURAL join or COLUMNS() in that SQL)."""
    return _columns_read(k.facts or "", _rest(k), table)


@lru_cache(maxsize=8192)
def _columns_read(facts: str, presence: str, table: str) -> frozenset[str] | None:
    if table in ALWAYS or table not in _contract_tables():
        return None
    code = _COMMENT.sub("", f"{facts}\n{presence}").lower()
    refs = _prelude_refs()
    objects = {o for w in _WORD.findall(code) for o in refs.get(w, ())}
    texts = [code] + [_prelude_texts()[o] for o in sorted(objects)
                      if table in _prelude_tables().get(o, ()) and o in _prelude_texts()]
    if any(_reads_whole_rows(t) for t in texts):
        return None
    columns = {c.name for c in load_contract().tables[table].columns}
    return frozenset().union(*(_columns_in(t, table, columns) for t in texts))


# Whole rows passed on by a prelude object (`alias.*`, `SELECT *`) are still read column by
# column by the KPI that names them; these forms read columns no text names.
_ANY_COLUMN_IN_PRELUDE = re.compile(r"\bdistinct\s+(?:\w+\.)?\*|\bnatural\b|\bcolumns\s*\(|"
                                    r"\bby\s+all\b|\bby\s+name\b")
_TOKEN = re.compile(r"'(?:[^']|'')*'|[()]|,|\b(?:select|from)\b")
_PASSED = re.compile(r"(?:\w+\.)?\w+")
_ALIASED = re.compile(r"(.+?)\s+as\s+(\w+)", re.S)


def _outer_items(text: str) -> tuple[int, int, list[str]] | None:
    """(start, end, items) of the statement's outer select list; None when it has none."""
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
        return None
    bounds = [start, *[c + 1 for c in commas], end + 1]
    return start, end, [text[a:b - 1] for a, b in zip(bounds, bounds[1:])]


def _without_passed_columns(text: str, named: Collection[str] | None = None) -> str:
    """The statement without the plain `alias.column` items of its outer select list: such a
    column only passes through under its own name, and counts for a KPI that names it. Items
    with an expression stay, as does every other clause (joins, filters, groups); with `named`
    (the words of the SQL that reads the statement's object), an item `expr AS name` whose name
    is not among them, nor written elsewhere in the statement (a filter on it), goes too: the
    visit KPIs read k_wo's attribution, not its `vwo` (status_code), so a work order's status
    changed on a past day no longer re-reads that day's visits."""
    outer = _outer_items(text)
    if outer is None:
        return text
    start, end, items = outer
    if items[0].lstrip().startswith("distinct"):
        return text

    def unread(item: str) -> bool:
        m = _ALIASED.fullmatch(item.strip())
        return (named is not None and m is not None and m.group(2) not in named
                and len(re.findall(rf"\b{m.group(2)}\b", text)) == 1)
    kept = [it for it in items if not _PASSED.fullmatch(it.strip()) and not unread(it)]
    return text[:start] + " " + ", ".join(kept) + " " + text[end:]


def columns_named(k: KpiDef, table: str) -> frozenset[str] | None:
    """The columns of a contract table the KPI's values can depend on, for waking it (kpis/wake.py),
    closer than columns_read: a prelude object passes columns on to the KPI, which reads the
    ones it names. So a star (k_wo is `SELECT w.*, ...`) or a plain `b.column` item of the
    object's outer select list (k_bill) counts only through the KPI's own SQL; the object's
    joins, filters and expressions count in full. None as in columns_read, or when the KPI's own
    SQL has a star."""
    return _columns_named(k.facts or "", _rest(k), table)


@lru_cache(maxsize=8192)     # asked for every woken (KPI, table) of every minute pass
def _columns_named(facts: str, presence: str, table: str) -> frozenset[str] | None:
    if table in ALWAYS or table not in _contract_tables():
        return None
    code = _COMMENT.sub("", f"{facts}\n{presence}").lower()
    if _reads_whole_rows(code):
        return None
    objects = {o for w in _WORD.findall(code) for o in _prelude_refs().get(w, ())}
    all_texts = _prelude_texts()
    reading = [o for o in sorted(objects) if table in _prelude_tables().get(o, ()) and o in all_texts]
    if any(_ANY_COLUMN_IN_PRELUDE.search(all_texts[o]) for o in reading):
        return None
    columns = {c.name for c in load_contract().tables[table].columns}

    def named(obj: str) -> set[str]:
        # the words of what reads the object: the KPI, and the other objects it reads
        return {w for t in [code, *(all_texts[o] for o in objects if o != obj and o in all_texts)]
                for w in _WORD.findall(t)}
    return frozenset().union(*(_columns_in(t, table, columns) for t in
                               [code, *(_without_passed_columns(all_texts[o], named(o)) for o in reading)]))
