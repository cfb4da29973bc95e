"""How much near-real-time history kpi_value keeps: per KPI the newest snapshot and the last
snapshot of every earlier clock hour; for a KPI whose baseline is its value at the same clock time
days before, the last of every 5 minutes while a baseline can still read it.

A snapshot KPI is a new period every pass (period_start = as_of, CONVENTIONS.md §2): at city scale
each minute added ~7,800 rows, ~11 M a day, and nothing removed them. Every statement that reads
kpi_value by key then grew with the days the worker had run: with one day of snapshots (13 M rows)
the store's change check went from 0.015 to 0.16 s a minute and the alarm step's read of the
current rows from 0.4 to 2.1 s, a day more each day (docs/decisions.md, session 19). No page,
export or alarm reads a snapshot other than the newest, and the last one of each hour still draws
a day's curve. Three KPIs (call.queue_now, newconn.in_progress, repair.open_tasks) compare the
snapshot with the one nearest the same clock time 1-28 days before, within 5 minutes
(kpis.evaluate.apply_baselines): one snapshot per 5 minutes leaves one in every such window.

The store removes, in the transaction that writes a KPI's new snapshot, its earlier snapshots of
the same slot (`thin_pass`); the nightly job applies the rule to every hour before the current one
(`thin_history`), which also thins a baseline KPI's 5-minute slots to hours once they are older
than its baseline reads, and any history written before this rule or out of order.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import duckdb

from kpis.value_layout import literal

GRAIN = "near-real-time"
FINE = "INTERVAL 5 MINUTE"


def _quoted(kpi_id: str) -> str:
    return "'" + kpi_id.replace("'", "''") + "'"


def _ids(fine: Mapping[str, int]) -> str:
    return ", ".join(_quoted(k) for k in sorted(fine)) or "NULL"


def _slot(alias: str, fine: Mapping[str, int]) -> str:
    return (f"CASE WHEN {alias}.kpi_id IN ({_ids(fine)}) THEN time_bucket({FINE}, {alias}.period_start) "
            f"ELSE date_trunc('hour', {alias}.period_start) END")


def thin_pass(con: duckdb.DuckDBPyConnection, source: str, fine: Mapping[str, int]) -> int:
    """Delete the stored snapshots that the snapshots in `source` (rows about to be or just
    inserted) follow within the same slot, per KPI; `fine`: the KPIs kept per 5 minutes (id ->
    days). Returns the rows deleted."""
    first = con.execute(f"SELECT MIN(date_trunc('hour', period_start)) FROM {source} "
                        f"WHERE grain = '{GRAIN}'").fetchone()[0]
    if first is None:
        return 0
    return con.execute(f"""
        DELETE FROM kpi_value v USING (SELECT DISTINCT kpi_id, period_start FROM {source}
                                       WHERE grain = '{GRAIN}') n
        WHERE v.grain = '{GRAIN}' AND v.period_start >= {literal(first)}
          AND v.kpi_id = n.kpi_id AND v.period_start < n.period_start
          AND {_slot('v', fine)} = {_slot('n', fine)}
        """).fetchone()[0]


def thin_history(con: duckdb.DuckDBPyConnection, now: datetime, fine: Mapping[str, int]) -> int:
    """Keep, per KPI and slot before the clock hour holding `now`, only the slot's last
    snapshot: slots of an hour, or of 5 minutes for a KPI of `fine` within its days before `now`.
    Returns the rows deleted."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    days = ", ".join(f"({_quoted(k)}, {int(d)})" for k, d in sorted(fine.items())) or "(NULL, NULL)"
    return con.execute(f"""
        DELETE FROM kpi_value v USING (
            WITH f(kpi_id, days) AS (VALUES {days}),
            s AS (SELECT DISTINCT x.kpi_id, x.period_start,
                         CASE WHEN x.period_start >= {literal(now)} - to_days(f.days)
                              THEN time_bucket({FINE}, x.period_start)
                              ELSE date_trunc('hour', x.period_start) END AS slot
                  FROM kpi_value x LEFT JOIN f ON f.kpi_id = x.kpi_id
                  WHERE x.grain = '{GRAIN}' AND x.period_start < {literal(hour)})
            SELECT kpi_id, period_start FROM s
            QUALIFY period_start < MAX(period_start) OVER (PARTITION BY kpi_id, slot)) d
        WHERE v.grain = '{GRAIN}' AND v.period_start < {literal(hour)}
          AND v.kpi_id = d.kpi_id AND v.period_start = d.period_start
        """).fetchone()[0]
