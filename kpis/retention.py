"""How much near-real-time history kpi_value keeps: the newest snapshot of each KPI, and the last
snapshot of every earlier clock hour.

A snapshot KPI is a new period every pass (period_start = as_of, CONVENTIONS.md §2): at city scale
each minute added ~7,800 rows, ~11 M a day, and nothing removed them. Every statement that reads
kpi_value by key then grew with the days the worker had run: with one day of snapshots (13 M rows)
the store's change check went from 0.015 to 0.16 s a minute and the alarm step's read of the
current rows from 0.4 to 2.1 s, a day more each day (bench/RESULTS.md, session 19). No page, export
or alarm reads a snapshot other than the newest; the last one of each hour still draws a day's
curve. So the store removes, in the transaction that writes a KPI's new snapshot, its earlier
snapshots of the same clock hour (`thin_pass`); the nightly job applies the same rule to every
hour before the current one (`thin_history`), for history written before this rule or by a pass
that wrote snapshots out of order (an as_of earlier than one already stored).
"""
from __future__ import annotations

from datetime import datetime

import duckdb

GRAIN = "near-real-time"


def _literal(ts: datetime) -> str:
    # a constant, which DuckDB checks against each row group's min/max (a join key it does not)
    return f"TIMESTAMP '{ts:%Y-%m-%d %H:%M:%S}'"


def thin_pass(con: duckdb.DuckDBPyConnection, source: str) -> int:
    """Delete the stored snapshots that the snapshots in `source` (rows about to be or just
    inserted) follow within the same clock hour, per KPI. Returns the rows deleted."""
    first = con.execute(f"SELECT MIN(date_trunc('hour', period_start)) FROM {source} "
                        f"WHERE grain = '{GRAIN}'").fetchone()[0]
    if first is None:
        return 0
    return con.execute(f"""
        DELETE FROM kpi_value v USING (SELECT DISTINCT kpi_id, period_start FROM {source}
                                       WHERE grain = '{GRAIN}') n
        WHERE v.grain = '{GRAIN}' AND v.period_start >= {_literal(first)}
          AND v.kpi_id = n.kpi_id AND v.period_start < n.period_start
          AND date_trunc('hour', v.period_start) = date_trunc('hour', n.period_start)
        """).fetchone()[0]


def thin_history(con: duckdb.DuckDBPyConnection, now: datetime) -> int:
    """Keep, per KPI, only the last snapshot of each clock hour before the one holding `now`.
    Returns the rows deleted."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    return con.execute(f"""
        DELETE FROM kpi_value v USING (
            SELECT kpi_id, date_trunc('hour', period_start) AS h, MAX(period_start) AS last
            FROM kpi_value WHERE grain = '{GRAIN}' AND period_start < {_literal(hour)}
            GROUP BY ALL) k
        WHERE v.grain = '{GRAIN}' AND v.period_start < {_literal(hour)}
          AND v.kpi_id = k.kpi_id AND date_trunc('hour', v.period_start) = k.h
          AND v.period_start < k.last
        """).fetchone()[0]
