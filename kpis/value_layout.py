"""kpi_value's physical order, so that reading the rows of a few periods does not scan its history.

The store looks up the stored rows of the periods it writes (its change check, the revisions, the
deletes) every minute. Rows are appended in the order they are computed, so every row group of a
month holds rows of that month's monthly period, its days and its hours: a lookup by key read the
whole table (0.05 s a minute with 10 days of history at city, 0.16 s with 13 M rows, and more each
day). The nightly job re-appends the rows written since its last run in (period_start, grain,
kpi_id, org_no) order (`sort_recent`), and the store's lookups name their periods' starts as
literals (`among`): DuckDB then skips every sorted row group whose period_start range holds none
of them, and reads the unsorted rows of the current day only. A pass that wrote millions of rows
(the worker's first, its backfill) is sorted right after it (`sort_after_large_pass`): left to
the night, the first day's minutes read all of them unsorted.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb

ORDER = "period_start, grain, kpi_id, org_no"
STATE_DDL = "CREATE TABLE IF NOT EXISTS kpi_value_sorted (upto TIMESTAMP)"
# A pass writing this many rows is followed by a sort (sort_after_large_pass). A city minute
# writes ~11 k rows and an hourly sweep ~1 M; a 10-day city backfill 23 M, which left unsorted
# cost the store's lookup 0.27 s of a 2.6 s minute (session 25).
SORT_AFTER_ROWS = 5_000_000
# A backfill's thousands of periods are looked up by the join alone (the list would cost more to
# check per row group than it saves).
MAX_LISTED = 200


def literal(ts: datetime) -> str:
    """A timestamp as a SQL constant (to the microsecond), which DuckDB checks against each row
    group's min/max."""
    return f"TIMESTAMP '{ts.isoformat(sep=' ')}'"


def period_starts(con: duckdb.DuckDBPyConnection, source: str) -> list[datetime]:
    return [r[0] for r in con.execute(f"SELECT DISTINCT period_start FROM {source}").fetchall()]


def among(alias: str, starts: Sequence[datetime]) -> str:
    """`AND alias.period_start IN (literals)`: a filter DuckDB checks against each row group's
    min/max (a join key it does not), or '' when there are none or too many."""
    if not starts or len(starts) > MAX_LISTED:
        return ""
    return (f"AND {alias}.period_start IN ("
            + ", ".join(literal(ts) for ts in starts) + ")")


def sort_after_large_pass(con: duckdb.DuckDBPyConnection, rows: int) -> int:
    """sort_recent after a pass that wrote at least SORT_AFTER_ROWS rows (the worker's first
    pass, its backfill, or a pass after a long stop); the rows moved, 0 when not sorted. Until
    the night's sort every minute's lookups would read all of them unsorted."""
    if rows < SORT_AFTER_ROWS:
        return 0
    return sort_recent(con)


def sort_recent(con: duckdb.DuckDBPyConnection) -> int:
    """Re-append, sorted, the kpi_value rows computed after the last call (all of them the first
    time). One transaction; returns the rows moved."""
    con.execute(STATE_DDL)
    con.execute("BEGIN TRANSACTION")
    try:
        upto = con.execute("SELECT MAX(upto) FROM kpi_value_sorted").fetchone()[0]
        since = "WHERE computed_at > $upto" if upto is not None else ""
        params = {"upto": upto} if upto is not None else {}
        con.execute(f"CREATE OR REPLACE TEMP TABLE _kv_recent AS SELECT * FROM kpi_value {since} "
                    f"ORDER BY {ORDER}", params)
        moved, newest = con.execute("SELECT COUNT(*), MAX(computed_at) FROM _kv_recent").fetchone()
        if moved:
            con.execute(f"DELETE FROM kpi_value {since}", params)
            con.execute("INSERT INTO kpi_value SELECT * FROM _kv_recent")
            con.execute("DELETE FROM kpi_value_sorted")
            con.execute("INSERT INTO kpi_value_sorted VALUES ($t)", {"t": newest})
        con.execute("DROP TABLE _kv_recent")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return moved
