"""Which KPIs an ordinary pass can leave alone although a table they read received rows.

kpis.evaluate wakes a KPI when a table it reads is in the pass's dirty tables. Some tables take
rows every minute that change no column most of their KPIs read: meter_terminal's heartbeat
(last_online_time, every terminal, every minute) woke the terminal stocks
(customer.tq_relation_consistency_rate, metering.collect_coverage_rate), about a quarter of a
county minute pass's facts time, to compute the same values again.

A KPI's values depend on a table only through the columns it names (kpis.dependencies
.columns_read, None when a star or the like could read any). So for each (KPI, table) the
fingerprint of that projection of the table (an order-free sum of row hashes over the whole
table, as etl/reconcile.py compares days) is kept as of the KPI's last evaluation; an ordinary
pass skips a KPI whose woken tables all still have the fingerprint it was evaluated with.
A fingerprint scans the whole table, so it is taken only of tables up to FP_MAX_ROWS rows
(meter_terminal 1.5 k and mis_bill 60 k rows at county: 0.04 s for mis_bill, whose one or two
rows a minute often change no column the billing stocks read, 0.2-0.3 s each), never at a sweep (which evaluates everything and forgets the fingerprints of what it evaluated), and a KPI
evaluated without a fingerprint of a table forgets its old one: a stored fingerprint always
describes the data the KPI's stored values were computed from.

Before fingerprints, and for tables of any size, the ETL's own record of what it merged: for
each dirty table of a run, etl_changed names the columns in which a merged row differs from the
version it replaced ('*' when a row is new or the versions were not compared). A KPI none of
whose woken tables changed a column it reads (a work order's status moving on wakes no KPI
that counts orders by intake time and type) is left alone without a scan (`untouched`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import duckdb

from etl.schema import quote_ident
from kpis import changes
from kpis.dependencies import columns_named, columns_read, tables_read
from kpis.spec import KpiDef

DDL = ("CREATE TABLE IF NOT EXISTS kpi_wake_fp (kpi_id VARCHAR, table_name VARCHAR, cols VARCHAR, "
       "fp VARCHAR)")
FP_MAX_ROWS = 200_000

Key = tuple[str, frozenset[str]]      # (table, columns)


def _cols(cols: frozenset[str]) -> str:
    return ",".join(sorted(cols))


def projections(k: KpiDef, tables: Iterable[str]) -> dict[str, frozenset[str]] | None:
    """The columns the KPI reads of each table, or None when one of them may be read whole."""
    out = {}
    for t in tables:
        cols = columns_read(k, t)
        if cols is None:
            return None
        out[t] = cols
    return out


def worth_a_scan(con: duckdb.DuckDBPyConnection, tables: Iterable[str]) -> set[str]:
    """The tables small enough to fingerprint (the catalog's row estimate: a COUNT cost 25 ms)."""
    rows = con.execute("SELECT table_name, estimated_size FROM duckdb_tables() "
                       "WHERE database_name <> 'temp' AND list_contains($t, table_name)",
                       {"t": sorted(tables)}).fetchall()
    return {t for t, n in rows if n <= FP_MAX_ROWS}


def fingerprints(con: duckdb.DuckDBPyConnection, needs: Mapping[str, set[frozenset[str]]]
                 ) -> dict[Key, str]:
    """The fingerprint of each needed projection, one scan per table."""
    out: dict[Key, str] = {}
    for table, colsets in sorted(needs.items()):
        q = quote_ident(table)
        sets = sorted(colsets, key=_cols)
        exprs = [f"CAST(SUM(hash({', '.join(quote_ident(c) for c in sorted(cs))})) AS VARCHAR) || '/' "
                 "|| CAST(COUNT(*) AS VARCHAR)" if cs else "CAST(COUNT(*) AS VARCHAR)" for cs in sets]
        row = con.execute(f"SELECT {', '.join(exprs)} FROM {q}").fetchone()
        out.update({(table, cs): fp for cs, fp in zip(sets, row)})
    return out


def unchanged(con: duckdb.DuckDBPyConnection, candidates: Sequence[tuple[KpiDef, set[str]]]
              ) -> tuple[set[str], dict[Key, str]]:
    """Of (KPI, its woken tables), the KPIs whose woken tables all keep the fingerprint they
    were last evaluated with; and every fingerprint taken (recorded after the pass)."""
    wanted: list[tuple[KpiDef, dict[str, frozenset[str]]]] = []
    needs: dict[str, set[frozenset[str]]] = {}
    scan = worth_a_scan(con, {t for _, woken in candidates for t in woken}) if candidates else set()
    for k, woken in candidates:
        proj = projections(k, woken) if woken <= scan else None
        if proj:
            wanted.append((k, proj))
            for t, cols in proj.items():
                needs.setdefault(t, set()).add(cols)
    if not wanted:
        return set(), {}
    now = fingerprints(con, needs)
    con.execute(DDL)
    stored = {(kid, t, c): fp for kid, t, c, fp in con.execute(
        "SELECT kpi_id, table_name, cols, fp FROM kpi_wake_fp").fetchall()}
    same = {k.id for k, proj in wanted
            if all((t, cols) in now and stored.get((k.id, t, _cols(cols))) == now[(t, cols)]
                   for t, cols in proj.items())}
    return same, now


def record(con: duckdb.DuckDBPyConnection, evaluated: Iterable[KpiDef], failed: Iterable[str],
           now: Mapping[Key, str]) -> None:
    """After a pass: each evaluated KPI keeps the fingerprints taken this pass of the tables it
    reads and forgets the others; a failed one forgets all."""
    evaluated = list(evaluated)
    failed = set(failed)
    ids = sorted({k.id for k in evaluated} | failed)
    if not ids:
        return
    rows = []
    for k in evaluated:
        if k.id in failed:
            continue
        for t in sorted(tables_read(k)):
            cols = columns_read(k, t)
            if cols is not None and (t, cols) in now:
                rows.append((k.id, t, _cols(cols), now[(t, cols)]))
    con.execute(DDL)
    con.execute("DELETE FROM kpi_wake_fp WHERE kpi_id IN (SELECT unnest($ids))", {"ids": ids})
    if rows:
        cols = list(zip(*rows))
        con.execute("INSERT INTO kpi_wake_fp SELECT unnest($a), unnest($b), unnest($c), unnest($d)",
                    {"a": cols[0], "b": cols[1], "c": cols[2], "d": cols[3]})


def untouched(con: duckdb.DuckDBPyConnection, candidates: Sequence[tuple[KpiDef, set[str]]],
              since: int | None) -> set[str]:
    """Of (KPI, its woken tables), the KPIs that read none of the columns the runs after `since`
    changed in any of those tables (kpis/changes.py: a run that did not record its columns, or
    added rows, changed all of them)."""
    candidates = [(k, woken) for k, woken in candidates if woken]
    if not candidates:
        return set()
    found = changes.Changes(con, since or 0, {t for _, woken in candidates for t in woken})
    return {k.id for k, woken in candidates
            if found.last_touch({t: columns_named(k, t) for t in woken}) is None}
