"""Prelude macros that stand in for a slower spelling must agree with it on every input."""
from __future__ import annotations

import duckdb
import pytest

from kpis.prelude import statements


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    c.execute(next(s for s in statements() if s.startswith("CREATE OR REPLACE MACRO has_text")))
    return c


def test_has_text_is_trim_not_empty_for_every_character(con: duckdb.DuckDBPyConnection) -> None:
    """has_text(x) skips TRIM when the first character is not one TRIM removes: the list of those
    characters in the macro must be exactly DuckDB's. Every code point alone, before a letter,
    after a blank and between blanks."""
    differ = con.execute("""
        WITH c AS (SELECT chr(CAST(i AS INTEGER)) AS ch   -- every code point but the surrogates
                   FROM (SELECT * FROM range(1, 55296) UNION ALL SELECT * FROM range(57344, 1114112)) t(i)),
        x AS (SELECT ch AS s FROM c UNION ALL SELECT ch || 'a' FROM c
              UNION ALL SELECT ' ' || ch FROM c UNION ALL SELECT ch || chr(12288) || ch FROM c)
        SELECT s FROM x WHERE has_text(s) <> (NULLIF(TRIM(s), '') IS NOT NULL)
        LIMIT 5""").fetchall()
    assert differ == []


@pytest.mark.parametrize("value, expected", [
    (None, False), ("", False), ("   ", False), ("\u3000", False), ("\u00a0 \u2003", False),
    ("\t", True), ("某路1号", True), ("  a", True), ("\u3000地", True), ("a  ", True)])
def test_has_text_examples(con: duckdb.DuckDBPyConnection, value: str | None, expected: bool) -> None:
    assert con.execute("SELECT has_text(CAST($v AS VARCHAR))", {"v": value}).fetchone()[0] is expected
