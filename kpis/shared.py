"""Named subqueries several KPI definitions share (kpis/sql/shared.sql).

A definition names a shared subquery like a table; `expand` wraps its facts in
`WITH name AS MATERIALIZED (body) SELECT * FROM (facts)`, so that the facts remain one
self-contained statement for every reader (dependencies, binding, detail pages, a KPI's own
statement). `split` undoes the wrapping, for the batched engine to state each shared subquery
once at the top of a statement that holds several KPIs reading it (kpis/batch.py)."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

SHARED_PATH = Path(__file__).resolve().parent / "sql" / "shared.sql"
_HEADER = re.compile(r"^-- shared: (\w+)\s*$", re.MULTILINE)
_OPEN = "SELECT * FROM (\n"
_CLOSE = "\n) AS _shared_facts"


@lru_cache(maxsize=1)
def definitions() -> dict[str, str]:
    """name -> its SELECT (comment lines dropped, no trailing semicolon), in file order."""
    text = SHARED_PATH.read_text(encoding="utf-8")
    heads = list(_HEADER.finditer(text))
    out: dict[str, str] = {}
    for i, m in enumerate(heads):
        block = text[m.end():heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        body = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("--"))
        out[m.group(1)] = body.strip().rstrip(";").strip()
    return out


def cte(name: str) -> str:
    """The CTE a shared subquery is stated as (`expand`, `with_clause`)."""
    return f"{name} AS MATERIALIZED (\n{definitions()[name]}\n)"


def names_in(sql: str) -> list[str]:
    """The shared subqueries the SQL names, in file order."""
    return list(_names_in(sql))


@lru_cache(maxsize=1024)     # asked for each definition every pass: ~0.035 s of regex a city minute
def _names_in(sql: str) -> tuple[str, ...]:
    return tuple(n for n in definitions() if re.search(rf"\b{n}\b", sql))


def expand(facts: str) -> str:
    """The facts wrapped with the shared subqueries they name (unchanged when none)."""
    names = names_in(facts)
    if not names:
        return facts
    return f"WITH {', '.join(cte(n) for n in names)}\n{_OPEN}{facts}{_CLOSE}"


def split(facts: str) -> tuple[list[str], str]:
    """(names, the facts as written) of expanded facts; ([], facts) for facts that are not."""
    names = names_in(facts)
    if not names:
        return [], facts
    head = f"WITH {', '.join(cte(n) for n in names)}\n{_OPEN}"
    if not (facts.startswith(head) and facts.endswith(_CLOSE)):
        return [], facts
    return names, facts[len(head):-len(_CLOSE)]


def with_clause(names: list[str]) -> str:
    """`WITH a AS MATERIALIZED (...), b AS ...` for a statement's top (empty for none)."""
    return f"WITH {', '.join(cte(n) for n in names)}\n" if names else ""
