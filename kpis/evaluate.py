"""Evaluation: run compiled KPI SQL for periods and write kpi_value, baselines and revisions."""
from __future__ import annotations

import calendar
import fnmatch
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import duckdb

from kpis import changes, day_store, distinct_month, fact_diff, images, retention, value_layout, wake
from kpis.batch import RESULT_COLUMNS, Diff, compute_plan, fact_columns, per_kpi
from kpis.compile import is_relative, status_sql
from kpis.dependencies import columns_named, prelude_objects, tables_read
from kpis.periods import Period, day, hours_of, month, snapshot
from kpis.prelude import ON_DEMAND, apply_prelude, refresh_on_demand
from kpis.registry import POPULATION_AT_TE, Registry, day_additive, day_additive_blockers
from kpis.spec import KpiDef

log = logging.getLogger(__name__)

VALUE_COLUMNS = ("kpi_id", "theme", "org_no", "org_level", "grain", "period_start", "period_end",
                 "value", "numerator", "denominator", "baseline", "status", "is_final",
                 "computed_at", "watermarks")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS kpi_value (
        kpi_id VARCHAR, theme VARCHAR, org_no VARCHAR, org_level VARCHAR, grain VARCHAR,
        period_start TIMESTAMP, period_end TIMESTAMP, value DOUBLE, numerator DOUBLE,
        denominator DOUBLE, baseline DOUBLE, status VARCHAR, is_final BOOLEAN,
        computed_at TIMESTAMP, watermarks VARCHAR, sample DOUBLE)""",
    """CREATE TABLE IF NOT EXISTS kpi_value_revision (
        kpi_id VARCHAR, org_no VARCHAR, grain VARCHAR, period_start TIMESTAMP,
        old_value DOUBLE, new_value DOUBLE, old_status VARCHAR, new_status VARCHAR,
        old_computed_at TIMESTAMP, revised_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS kpi_def (
        kpi_id VARCHAR, name_zh VARCHAR, name_en VARCHAR, theme VARCHAR, unit VARCHAR,
        direction VARCHAR, grain VARCHAR, warning VARCHAR, critical VARCHAR, clear VARCHAR,
        org_levels VARCHAR, min_sample INTEGER, tier VARCHAR, sources VARCHAR,
        definition VARCHAR, formula VARCHAR, baseline VARCHAR, sort_no INTEGER)""",
    """CREATE TABLE IF NOT EXISTS kpi_eval_state (
        id INTEGER, last_dirty_run_id BIGINT, last_full_at TIMESTAMP, last_eval_at TIMESTAMP)""",
    "ALTER TABLE kpi_eval_state ADD COLUMN IF NOT EXISTS last_sweep_at TIMESTAMP",
    # etl_dirty run id up to which closed periods have been re-evaluated (restatements)
    "ALTER TABLE kpi_eval_state ADD COLUMN IF NOT EXISTS last_past_run_id BIGINT",
    *day_store.DDL,
    *distinct_month.DDL,
    wake.DDL,
    *fact_diff.DDL,
]

# Every KPI is re-evaluated at least this often, and at each new hour; in between only KPIs whose
# tables (kpis/dependencies.py) received rows, snapshots and resolved-or-due KPIs (their
# deadlines pass with time).
# Closed periods touched by late or corrected rows (restatements) are re-evaluated at these
# sweeps too, not on every pass: at county scale late meter collections touch past days every
# minute, and re-reading a closed month of facts each minute cost 10-15 s CPU per pass. A
# restated past value is therefore at most SWEEP_EVERY late; open periods are fresh every pass.
SWEEP_EVERY = timedelta(minutes=10)
# How far back a sweep carries a register's change through a stock's later periods
# (stock_carried): the days of the running and the previous month, the month ends of a year.
CARRY_MONTHS_OF_DAYS, CARRY_MONTH_ENDS = 1, 12


@dataclass
class EvalSummary:
    rows: int = 0
    kpis: int = 0
    periods: int = 0
    changed: list[tuple[str, str, str, datetime]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: int = 0      # woken by a table whose columns they read did not change (kpis/wake.py)
    # past (KPI id, day) pairs opened by dirty dates and found as stored (kpis/images.py)
    as_stored: list[tuple[str, date]] = field(default_factory=list)
    # how each kept prelude table the pass read was brought up to date ('full', 'delta',
    # 'unchanged'; kpis/prelude.py refresh_on_demand): a 'full' one is a rebuild, the costliest
    kept: dict[str, str] = field(default_factory=dict)
    # (KPI id, period) evaluated; with kpis.fact_diff only the rows of changed units are written
    evaluated: list[tuple[str, Period]] = field(default_factory=list)


def local_now() -> datetime:
    """Wall time in Asia/Shanghai, naive like every time in the warehouse."""
    return datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None, microsecond=0)


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    for stmt in SCHEMA:
        con.execute(stmt)


def write_registry_table(con: duckdb.DuckDBPyConnection, registry: Registry) -> None:
    con.execute("DELETE FROM kpi_def")
    rows = [(k.id, k.name_zh, k.name_en, k.theme, k.unit, k.direction, k.grain, k.warning,
             k.critical, k.clear, ";".join(k.org_levels), k.min_sample, k.tier,
             ";".join(k.sources), k.definition, k.formula, k.baseline, i)
            for i, k in enumerate(registry.kpis.values())]
    con.executemany("INSERT INTO kpi_def VALUES (" + ", ".join("?" * 18) + ")", rows)


def select_kpis(registry: Registry, pattern: str | None) -> list[KpiDef]:
    kpis = list(registry.kpis.values())
    if pattern:
        kpis = [k for k in kpis if fnmatch.fnmatchcase(k.id, pattern)]
    return kpis


def stock_carried(changed: date, as_of: datetime) -> set[Period]:
    """The periods after a change dated `changed` whose stock it moves (a customer built, closed
    or moved that day; a payment made or an alarm raised then, keyed in late): a stock at a
    period's end counts the rows valid then, so every later day and month end moves with it,
    not the changed day's alone. Back to the first of the previous month for days and a year
    for month ends, the history users compare with; older stored values stay as they were
    (docs/decisions.md, sessions 31 and 32)."""
    return (_days_from(max(changed, _months_back(as_of, CARRY_MONTHS_OF_DAYS)), as_of)
            | _months_from(max(changed, _months_back(as_of, CARRY_MONTH_ENDS)), as_of))


_CARRIED: dict[tuple[str, str], bool] = {}


def carried_forward(k: KpiDef) -> bool:
    """Whether a change dated D moves the KPI's value at every period end after D (stock_carried):
    a stock, or a flow beside a population taken at te (repair.orders_per_10k: the customers
    active at the month's end). Kept by (id, SQL): a sweep asks it of every KPI."""
    key = (k.id, k.sql_text)
    if key not in _CARRIED:
        _CARRIED[key] = k.shape == "stock" or POPULATION_AT_TE in day_additive_blockers(k)
    return _CARRIED[key]


def _days_from(first: date, as_of: datetime) -> set[Period]:
    """The days from `first` to as_of's."""
    return {day(first + timedelta(days=i)) for i in range((as_of.date() - first).days + 1)}


def _months_from(first: date, as_of: datetime) -> set[Period]:
    """The months from `first`'s to as_of's."""
    out, cur = set(), first.replace(day=1)
    while cur <= as_of.date():
        out.add(month(cur.year, cur.month))
        cur = (cur + timedelta(days=32)).replace(day=1)
    return out


def _months_back(as_of: datetime, n: int) -> date:
    """The first day of the month n months before as_of's."""
    y, m = divmod(as_of.year * 12 + as_of.month - 1 - n, 12)
    return date(y, m + 1, 1)


def periods_for(k: KpiDef, requested: Iterable[Period], as_of: datetime) -> list[Period]:
    """The periods a KPI is evaluated for, given the requested ones (CONVENTIONS.md §2)."""
    if k.grain == "near-real-time":
        return [snapshot(as_of)]
    out = []
    for p in requested:
        if p.grain == "near-real-time":
            continue
        if k.complete_months_only and (p.grain != "monthly" or p.we > as_of):
            continue
        if p.grain == "hourly" and k.grain != "hourly":
            continue
        if p.ws > as_of:
            continue
        out.append(p)
    return sorted(set(out))


_SNAPSHOT_OFFSETS = {
    "snapshot_same_time_4w": ((7, 14, 21, 28), True),
    "snapshot_same_time_7d": ((1, 2, 3, 4, 5, 6, 7), False),
    "snapshot_7_days_earlier": ((7,), True),
}


def fine_snapshots(kpis: Iterable[KpiDef]) -> dict[str, int]:
    """The snapshot KPIs whose baseline reads their value at the same clock time days before, with
    the days their snapshots are kept per 5 minutes (kpis/retention.py): the longest offset and
    one more."""
    return {k.id: max(_SNAPSHOT_OFFSETS[k.baseline][0]) + 1 for k in kpis
            if k.baseline in _SNAPSHOT_OFFSETS}


_OFFSETS = {
    "same_day_prev_month": {"daily": ["1 month"], "monthly": ["1 month"]},
    "previous_period": {"hourly": ["1 hour"], "daily": ["1 day"], "monthly": ["1 month"]},
    "same_weekday_4w": {"hourly": ["7 days", "14 days", "21 days", "28 days"],
                        "daily": ["7 days", "14 days", "21 days", "28 days"]},
    "same_hour_weekday_4w": {"hourly": ["7 days", "14 days", "21 days", "28 days"],
                             "daily": ["7 days", "14 days", "21 days", "28 days"]},
    "value_7_days_earlier": {"hourly": ["7 days"], "daily": ["7 days"]},
    "same_month_last_year": {"hourly": ["1 year"], "daily": ["1 year"], "monthly": ["1 year"]},
    "mean_prev_3_months": {"hourly": ["1 hour", "2 hours", "3 hours"],
                           "daily": ["1 day", "2 days", "3 days"],
                           "monthly": ["1 month", "2 months", "3 months"]},
}


MAX_OFFSETS = max(len(offs) for grains in _OFFSETS.values() for offs in grains.values())


def _baseline_sources(k: KpiDef, p: Period) -> list[datetime]:
    """period_start of the rows (same KPI and grain) a row's baseline reads; snapshots: none
    (kpis.fact_diff recomputes them whole: each pass is a new period)."""
    if k.baseline is None or not is_relative(k):
        return []
    if k.baseline == "previous_month_end":
        if p.grain == "daily":
            return [p.ws.replace(day=1) - timedelta(days=1)]
        return [(p.ws.replace(day=1) - timedelta(days=1)).replace(day=1)] if p.grain == "monthly" else []
    out = []
    for off in _OFFSETS.get(k.baseline, {}).get(p.grain, ()):
        n, unit = off.split()
        unit = unit.rstrip("s")
        if unit in ("month", "year"):
            out.append(_months_before(p.ws, int(n) * (12 if unit == "year" else 1)))
        else:
            out.append(p.ws - timedelta(**{unit + "s": int(n)}))
    return out


def _months_before(t: datetime, n: int) -> datetime:
    """t - INTERVAL n MONTH as DuckDB computes it: the day clamped to the month's last
    (03-31 - 1 month = 02-28, 2028-02-29 - 1 year = 2027-02-28)."""
    y, m = divmod(t.year * 12 + t.month - 1 - n, 12)
    return t.replace(year=y, month=m + 1, day=min(t.day, calendar.monthrange(y, m + 1)[1]))


def _baseline_in_plan(plan: Sequence[tuple[KpiDef, Sequence[Period]]]) -> frozenset[tuple[str, Period]]:
    """(KPI id, period) whose baseline reads a period the same plan evaluates: its source row
    may change in this pass (kpis.fact_diff recomputes the units recomputed there)."""
    return frozenset((kid, p) for kid, p, _ in _baseline_edges(plan))


def _baseline_edges(plan: Sequence[tuple[KpiDef, Sequence[Period]]]
                    ) -> frozenset[tuple[str, Period, Period]]:
    """(KPI id, period, source period) for each period whose baseline reads a period the same
    plan evaluates: a unit's baseline is its own value in the source, so kpis.fact_diff
    recomputes the units of the source it recomputes (whose value may change) too."""
    out = set()
    for k, ps in plan:
        by_start = {(p.grain, p.ws): p for p in ps}
        out |= {(k.id, p, by_start[(p.grain, s)]) for p in ps for s in _baseline_sources(k, p)
                if (p.grain, s) in by_start}
    return frozenset(out)


def _relative_with_baseline(kpis: Iterable[KpiDef]) -> list[KpiDef]:
    return [k for k in kpis if k.baseline is not None and is_relative(k)]


def _ids(kpis: Sequence[KpiDef]) -> str:
    return ", ".join(f"'{k.id}'" for k in kpis)


def apply_baselines(con: duckdb.DuckDBPyConnection,
                    plan: Sequence[tuple[KpiDef, Sequence[Period]]]) -> None:
    """Fill `baseline` of the rows in _result from stored values, then recompute status.

    One statement per baseline kind and grain for all KPIs of the plan that use it (a KPI's
    rows are matched on kpi_id throughout), not a statement set per KPI."""
    relative = _relative_with_baseline(k for k, _ in plan)
    if relative:
        # a KPI without a row to fill (a pass whose facts left every unit of it as stored,
        # kpis/fact_diff.py) reads nothing: with no period start to name, its statement read
        # the KPI's whole history (0.10 s of a replayed city minute for customer.sensitive_count)
        present = {kid for (kid,) in con.execute(
            f"SELECT DISTINCT kpi_id FROM _result WHERE kpi_id IN ({_ids(relative)})").fetchall()}
        relative = [k for k in relative if k.id in present]
    if not relative:
        return
    grains = {k.id: {p.grain for p in ps} for k, ps in plan}
    by_kind: dict[str, list[KpiDef]] = {}
    for k in relative:
        by_kind.setdefault(k.baseline, []).append(k)
    for kind, kpis in by_kind.items():
        ids = _ids(kpis)
        if kind in _OFFSETS:
            continue
        if kind in _SNAPSHOT_OFFSETS:
            days, need_all = _SNAPSHOT_OFFSETS[kind]
            need = f"= {len(days)}" if need_all else ">= 1"
            values = ", ".join(f"({d})" for d in days)
            # The value at the same clock time n days before: the snapshot nearest to it within
            # 5 minutes (the earlier on a tie). The store keeps one per 5 minutes for these KPIs
            # (kpis/retention.py), so every such window holds one where the worker ran.
            con.execute(f"""
                UPDATE _result r SET baseline = b.base FROM (
                    SELECT kpi_id, org_no, period_start,
                           CASE WHEN COUNT(v) {need} THEN AVG(v) END AS base
                    FROM (SELECT r.kpi_id, r.org_no, r.period_start, o.n,
                                 arg_min(h.value, (abs(epoch(h.period_start)
                                                       - epoch(r.period_start - to_days(o.n))),
                                                   h.period_start)) AS v
                          FROM _result r
                          CROSS JOIN (VALUES {values}) o(n)
                          LEFT JOIN ({_snapshot_windows(con, ids, days)}) h
                               ON h.kpi_id = r.kpi_id AND h.org_no = r.org_no
                               AND h.period_start BETWEEN r.period_start - to_days(o.n) - INTERVAL 5 MINUTE
                                                      AND r.period_start - to_days(o.n) + INTERVAL 5 MINUTE
                          WHERE r.kpi_id IN ({ids})
                          GROUP BY r.kpi_id, r.org_no, r.period_start, o.n)
                    GROUP BY kpi_id, org_no, period_start) b
                WHERE r.kpi_id = b.kpi_id AND r.org_no = b.org_no AND r.period_start = b.period_start""")
        elif kind == "previous_month_end":
            # A daily stock compared with the stock at the end of the previous month (its last
            # day's value); a monthly row with the previous month's. The stored rows are read by
            # their starts as constants (kpis/value_layout.py), not every stored row of the KPIs.
            prior = (f"CASE r.grain WHEN 'daily' THEN date_trunc('month', r.period_start) - INTERVAL 1 DAY "
                     f"ELSE r.period_start - INTERVAL 1 MONTH END")
            wanted = value_layout.among("v", [t for (t,) in con.execute(
                f"SELECT DISTINCT {prior} FROM _result r WHERE r.kpi_id IN ({ids}) "
                f"AND r.grain IN ('daily', 'monthly')").fetchall()])
            con.execute(f"""
                UPDATE _result r SET baseline = h.value FROM (
                    SELECT kpi_id, org_no, grain, period_start, value FROM _result
                    WHERE kpi_id IN ({ids})
                    UNION ALL
                    SELECT v.kpi_id, v.org_no, v.grain, v.period_start, v.value FROM kpi_value v
                    WHERE v.kpi_id IN ({ids}) {wanted} AND NOT EXISTS (
                        SELECT 1 FROM _result x WHERE x.kpi_id = v.kpi_id AND x.grain = v.grain
                                                  AND x.period_start = v.period_start
                                                  AND x.org_no = v.org_no)
                ) h
                WHERE h.kpi_id = r.kpi_id AND h.org_no = r.org_no AND h.grain = r.grain
                  AND r.grain IN ('daily', 'monthly')
                  AND h.period_start = CASE r.grain
                        WHEN 'daily' THEN date_trunc('month', r.period_start) - INTERVAL 1 DAY
                        ELSE r.period_start - INTERVAL 1 MONTH END""")
    _offset_baselines(con, [k for k in relative if k.baseline in _OFFSETS], grains)
    # A row still without a baseline keeps the status it was computed with (the same expression
    # with baseline NULL): only rows that got one are recomputed.
    status = per_kpi("kpi_id", [k.id for k in relative], [f"({status_sql(k)})" for k in relative])
    con.execute(f"UPDATE _result SET status = {status} WHERE kpi_id IN ({_ids(relative)}) "
                "AND baseline IS NOT NULL")


def _snapshot_windows(con: duckdb.DuckDBPyConnection, ids: str, days: Sequence[int]) -> str:
    """The stored snapshots a snapshot baseline may read: one branch per window of 5 minutes
    around each evaluated instant n days back, with its bounds as constants (row groups of
    other times are skipped); the whole snapshot history when the plan holds many instants."""
    starts = [r[0] for r in con.execute(f"SELECT DISTINCT period_start FROM _result "
                                        f"WHERE kpi_id IN ({ids})").fetchall()]
    where = f"grain = 'near-real-time' AND value IS NOT NULL AND kpi_id IN ({ids})"
    if not starts or len(starts) * len(days) > value_layout.MAX_LISTED:
        return f"SELECT kpi_id, org_no, period_start, value FROM kpi_value WHERE {where}"
    windows = sorted({(t - timedelta(days=d, minutes=5), t - timedelta(days=d) + timedelta(minutes=5))
                      for t in starts for d in days})
    return " UNION ALL ".join(
        f"SELECT kpi_id, org_no, period_start, value FROM kpi_value WHERE {where} "
        f"AND period_start BETWEEN {value_layout.literal(lo)} AND {value_layout.literal(hi)}"
        for lo, hi in windows)


def _offset_baselines(con: duckdb.DuckDBPyConnection, kpis: Sequence[KpiDef],
                      grains: dict[str, set[str]]) -> None:
    """The mean of the values at the KPI's offsets (all of them needed), for every KPI whose
    baseline is one of _OFFSETS, in one statement: one scan of kpi_value instead of one per
    KPI kind and grain. The mean is summed in offset order, so its last bit does not depend on
    the join's row order."""
    offsets = [(k.id, grain, off, len(offs), rank) for k in kpis
               for grain, offs in _OFFSETS[k.baseline].items() if grain in grains[k.id]
               for rank, off in enumerate(offs, 1)]
    if not offsets:
        return
    values = ", ".join(f"('{kid}', '{grain}', INTERVAL '{off}', {n}, {rank})"
                       for kid, grain, off, n, rank in offsets)
    # the mean as ((v1 + v2) + v3) + v4 in offset order, over at most MAX_OFFSETS values: an
    # AVG(value ORDER BY off) gave the same order but its ordered aggregation was most of the
    # statement (0.2 s of a city minute for ~46 k rows)
    ordered = " + ".join(f"COALESCE(MAX(h.value) FILTER (WHERE o.rk = {i}), 0)"
                         for i in range(1, MAX_OFFSETS + 1))
    # the stored rows are read by their starts as constants (kpis/value_layout.py): a join key
    # alone read every row of every day kept (0.36 s a city minute with 120 days of history)
    wanted = value_layout.among("v", [t for (t,) in con.execute(
        f"SELECT DISTINCT r.period_start - o.off FROM _result r "
        f"JOIN (VALUES {values}) o(kpi_id, grain, off, n, rk) ON o.kpi_id = r.kpi_id AND o.grain = r.grain"
    ).fetchall()])
    # Values of the same batch count too (a backfill computes many days at once). Only the
    # (KPI, grain, period) keys some offset points at are read (`need`): the anti-join against
    # _result over every stored row of these KPIs was most of the statement's time in a minute pass.
    con.execute(f"""
        UPDATE _result r SET baseline = b.base FROM (
            WITH o AS (SELECT * FROM (VALUES {values}) o(kpi_id, grain, off, n, rk)),
            need AS (SELECT DISTINCT r.kpi_id, r.grain, r.period_start - o.off AS period_start
                     FROM _result r JOIN o ON o.kpi_id = r.kpi_id AND o.grain = r.grain),
            h AS (
                SELECT x.kpi_id, x.grain, x.org_no, x.period_start, x.value FROM _result x
                SEMI JOIN need n ON n.kpi_id = x.kpi_id AND n.grain = x.grain
                                AND n.period_start = x.period_start
                UNION ALL
                SELECT v.kpi_id, v.grain, v.org_no, v.period_start, v.value FROM kpi_value v
                SEMI JOIN need n ON n.kpi_id = v.kpi_id AND n.grain = v.grain
                                AND n.period_start = v.period_start {wanted}
                -- by row, not by period: a pass that recomputes some units of a period
                -- (kpis/fact_diff.py) leaves the others' stored values the current ones
                WHERE NOT EXISTS (SELECT 1 FROM _result x WHERE x.kpi_id = v.kpi_id
                                  AND x.grain = v.grain AND x.period_start = v.period_start
                                  AND x.org_no = v.org_no))
            SELECT r.kpi_id, r.grain, r.org_no, r.period_start,
                   CASE WHEN COUNT(h.value) = MAX(o.n) THEN ({ordered}) / MAX(o.n) END AS base
            FROM _result r
            JOIN o ON o.kpi_id = r.kpi_id AND o.grain = r.grain
            LEFT JOIN h ON h.kpi_id = r.kpi_id AND h.grain = r.grain AND h.org_no = r.org_no
               AND h.period_start = r.period_start - o.off
            GROUP BY r.kpi_id, r.grain, r.org_no, r.period_start) b
        WHERE r.kpi_id = b.kpi_id AND r.grain = b.grain AND r.org_no = b.org_no
          AND r.period_start = b.period_start""")


def evaluate_kpi(con: duckdb.DuckDBPyConnection, k: KpiDef, periods: Sequence[Period],
                 as_of: datetime, level: str | None = None) -> list[tuple]:
    """Compute and return rows without storing them (CLI, tests)."""
    if not periods:
        return []
    errors: dict[str, str] = {}
    done = compute_plan(con, [(k, periods)], as_of, errors)
    if errors:
        raise duckdb.Error(errors[k.id])
    apply_baselines(con, done)
    where = "WHERE org_level = $level" if level else ""
    return con.execute(
        f"SELECT kpi_id, org_no, org_level, grain, period_start, period_end, value, numerator, "
        f"denominator, baseline, status, is_final FROM _result {where} "
        f"ORDER BY period_start, org_level, org_no", {"level": level} if level else {}).fetchall()


def _watermarks(con: duckdb.DuckDBPyConnection) -> str:
    try:
        rows = con.execute("SELECT source, CAST(last_good_high AS VARCHAR) FROM etl_freshness").fetchall()
    except duckdb.CatalogException:
        return "{}"
    return json.dumps({s: h for s, h in rows}, ensure_ascii=False)


# A value counts as changed past rounding noise only (values are compared at 1e-9 relative).
_DIFFERS = """(o.status IS DISTINCT FROM n.status OR (o.value IS NULL) <> (n.value IS NULL)
               OR abs(o.value - n.value) > 1e-9 * greatest(1.0, abs(n.value)))"""


BATCH_DDL = ("CREATE OR REPLACE TEMP TABLE _batch (kpi_id VARCHAR, theme VARCHAR, org_no VARCHAR, "
             "org_level VARCHAR, grain VARCHAR, period_start TIMESTAMP, period_end TIMESTAMP, "
             "value DOUBLE, numerator DOUBLE, denominator DOUBLE, baseline DOUBLE, status VARCHAR, "
             "is_final BOOLEAN, sample DOUBLE)")
FLUSH_ROWS = 2_000_000   # a backfill at city scale is flushed in parts rather than held whole


def store(con: duckdb.DuckDBPyConnection, computed_at: datetime, watermarks: str,
          summary: EvalSummary, source: str = "_batch", diffed: bool = False,
          fine: Mapping[str, int] | None = None) -> None:
    """Replace the stored values of every period in `source` (_batch, or _result when the plan
    was computed in one part), in one transaction; record changed final values as revisions.
    One statement set per pass, not per KPI: the per-KPI version cost 12 ms a KPI in statements
    alone. diffed: kpis.fact_diff prepared this compute: the rows of its restricted KPI-periods
    replace their units' rows only, and the reduced facts are kept for the next pass. A KPI's new
    near-real-time snapshot replaces its earlier ones of the same clock hour, or of the same
    5 minutes for a KPI of `fine` (kpis/retention.py, fine_snapshots)."""
    con.execute("BEGIN TRANSACTION")
    try:
        starts = value_layout.period_starts(con, source)
        in_o, in_v = value_layout.among("o", starts), value_layout.among("v", starts)
        changed = con.execute(f"""
            SELECT n.kpi_id, n.org_no, n.grain, n.period_start, o.is_final
            FROM {source} n JOIN kpi_value o ON o.kpi_id = n.kpi_id AND o.org_no = n.org_no
                 AND o.grain = n.grain AND o.period_start = n.period_start {in_o}
            WHERE {_DIFFERS}""").fetchall()
        if any(r[4] for r in changed):   # a final value that changes is a restatement
            con.execute(f"""
                INSERT INTO kpi_value_revision
                SELECT n.kpi_id, n.org_no, n.grain, n.period_start, o.value, n.value, o.status,
                       n.status, o.computed_at, $at
                FROM {source} n JOIN kpi_value o ON o.kpi_id = n.kpi_id AND o.org_no = n.org_no
                     AND o.grain = n.grain AND o.period_start = n.period_start {in_o}
                WHERE o.is_final AND {_DIFFERS}""", {"at": computed_at})
        restricted = "EXCEPT SELECT kpi_id, grain, period_start FROM _fd_restricted" if diffed else ""
        con.execute(f"""DELETE FROM kpi_value v USING (SELECT DISTINCT kpi_id, grain, period_start
                                                       FROM {source} {restricted}) r
                       WHERE v.kpi_id = r.kpi_id AND v.grain = r.grain
                         AND v.period_start = r.period_start {in_v}""")
        if diffed:
            con.execute(f"""DELETE FROM kpi_value v USING (
                               SELECT n.kpi_id, n.grain, n.period_start, n.org_no FROM {source} n
                               SEMI JOIN _fd_restricted r ON r.kpi_id = n.kpi_id
                                    AND r.grain = n.grain AND r.period_start = n.period_start) r
                           WHERE v.kpi_id = r.kpi_id AND v.grain = r.grain
                             AND v.period_start = r.period_start AND v.org_no = r.org_no {in_v}""")
            fact_diff.remember(con)
        con.execute(f"""INSERT INTO kpi_value SELECT kpi_id, theme, org_no, org_level, grain,
                       period_start, period_end, value, numerator, denominator, baseline, status,
                       is_final, $at, $wm, sample FROM {source}""", {"at": computed_at, "wm": watermarks})
        retention.thin_pass(con, source, fine or {})
        rows = con.execute(f"SELECT COUNT(*) FROM {source}").fetchone()[0]
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    summary.rows += rows
    summary.changed.extend((r[0], r[1], r[2], r[3]) for r in changed)
    con.execute(BATCH_DDL)


def _plan_parts(con: duckdb.DuckDBPyConnection, plan: Sequence[tuple[KpiDef, Sequence[Period]]]
                ) -> list[list[tuple[KpiDef, Sequence[Period]]]]:
    """The plan cut into parts of at most FLUSH_ROWS result rows (units x periods)."""
    units = dict(con.execute("SELECT unit_level, COUNT(*) FROM k_org GROUP BY unit_level").fetchall())
    parts: list[list[tuple[KpiDef, Sequence[Period]]]] = [[]]
    rows = 0
    for k, periods in plan:
        if not periods:
            continue
        n = len(periods) * sum(units.get(lvl, 0) for lvl in set(k.org_levels))
        if parts[-1] and rows + n > FLUSH_ROWS:
            parts.append([])
            rows = 0
        parts[-1].append((k, periods))
        rows += n
    return [p for p in parts if p]


def evaluate_plan(con: duckdb.DuckDBPyConnection, plan: Sequence[tuple[KpiDef, Sequence[Period]]],
                  as_of: datetime, computed_at: datetime,
                  store_mode: day_store.Mode | None = None, diff: Diff | None = None) -> EvalSummary:
    """Compute the KPIs of the plan for their periods (kpis.batch: a few statements for all of
    them), then store the batch in one transaction.

    Computing writes only temp tables, so a KPI that fails at run time is skipped alone (DuckDB
    has no savepoints) and the stored values of every period change together or not at all.
    A backfill larger than FLUSH_ROWS rows is computed and stored in parts.
    diff (kpis/fact_diff.py): for a plan of one part, the reduced facts are kept for the next
    pass and, with `restrict`, only the units whose facts changed since are recomputed."""
    summary = EvalSummary()
    fine = fine_snapshots(k for k, _ in plan)
    watermarks = _watermarks(con)
    con.execute(BATCH_DDL)
    cols = ", ".join(RESULT_COLUMNS)
    pending = 0
    parts = _plan_parts(con, plan)
    for part in parts:
        done = compute_plan(con, part, as_of, summary.errors, store_mode,
                            diff if len(parts) == 1 else None)
        try:
            apply_baselines(con, done)
        except duckdb.Error:
            done = _baselines_one_by_one(con, done, summary.errors)
        if len(parts) == 1:     # stored from _result itself: copying it was ~0.1 s at city
            summary.kpis += len(done)
            summary.periods += sum(len(ps) for _, ps in done)
            summary.evaluated.extend((k.id, p) for k, ps in done for p in ps)
            store(con, computed_at, watermarks, summary, source="_result",
                  diffed=diff is not None and fact_diff.prepared(con), fine=fine)
            return summary
        con.execute(f"INSERT INTO _batch SELECT {cols} FROM _result")
        pending += con.execute("SELECT COUNT(*) FROM _result").fetchone()[0]
        summary.kpis += len(done)
        summary.periods += sum(len(ps) for _, ps in done)
        summary.evaluated.extend((k.id, p) for k, ps in done for p in ps)
        if pending >= FLUSH_ROWS:
            store(con, computed_at, watermarks, summary, fine=fine)
            pending = 0
    store(con, computed_at, watermarks, summary, fine=fine)
    return summary


def _baselines_one_by_one(con: duckdb.DuckDBPyConnection,
                          done: list[tuple[KpiDef, Sequence[Period]]],
                          errors: dict[str, str]) -> list[tuple[KpiDef, Sequence[Period]]]:
    """A baseline statement failed for the whole part: find the KPI, drop its rows."""
    kept = []
    for k, ps in done:
        try:
            apply_baselines(con, [(k, ps)])
            kept.append((k, ps))
        except duckdb.Error as exc:
            log.error("KPI %s failed: %s", k.id, exc)
            errors[k.id] = str(exc)
            con.execute("DELETE FROM _result WHERE kpi_id = $k", {"k": k.id})
    return kept


def evaluate_and_store(con: duckdb.DuckDBPyConnection, registry: Registry,
                       requested: Sequence[Period], as_of: datetime,
                       kpis: Sequence[KpiDef] | None = None,
                       computed_at: datetime | None = None, prelude: bool = True,
                       use_day_store: bool = False) -> EvalSummary:
    """Evaluate the KPIs for the requested periods and store them (the worker's path).
    use_day_store: months of day-additive KPIs from stored days (kpis/day_store.py), a stored
    day read again unless the ETL's record shows nothing it reads changed since (as a sweep
    does: a full evaluation must not trust a day stored before an ETL run it did not see)."""
    ensure_schema(con)
    # the rows written here were not computed from the kept facts: the next ordinary pass
    # recomputes every row once (kpis/fact_diff.py)
    fact_diff.forget(con)
    chosen = kpis if kpis is not None else list(registry.kpis.values())
    if prelude:
        # the kept tables as an ordinary pass keeps them (kpis/prelude.py): rebuilt where no build
        # state or ETL record vouches for them, else brought up to date by the changed keys or
        # columns. Rebuilding them all made a full evaluation on a warehouse the worker keeps
        # cost what a cold one does (~9 s of prelude at city)
        apply_prelude(con, needed=())
        refresh_on_demand(con, on_demand_tables(chosen))
    plan = [(k, periods_for(k, requested, as_of)) for k in chosen]
    at = computed_at or local_now()
    mode = (day_store.Mode(refresh=True, computed_at=at, run_id=changes.top_run(con))
            if use_day_store else None)
    return evaluate_plan(con, plan, as_of, at, mode)


def on_demand_tables(kpis: Iterable[KpiDef]) -> set[str]:
    """The on-demand prelude tables (kpis.prelude.ON_DEMAND) these KPIs read."""
    return {name for k in kpis for name in prelude_objects(k) if name in ON_DEMAND}


def default_periods(as_of: datetime, first_day: datetime | None = None) -> list[Period]:
    """Today, its hours, the current month, the last closed month and each day back to first_day."""
    today = day(as_of.date())
    cur = month(as_of.year, as_of.month)
    prev_day = cur.ws - timedelta(days=1)
    last = month(prev_day.year, prev_day.month)
    out = {today, cur, last, *hours_of(today)}
    start = first_day.date() if first_day else last.ws.date()
    d = start
    while d <= as_of.date():
        out.add(day(d))
        if d.day == 1:
            out.add(month(d.year, d.month))
        d += timedelta(days=1)
    return sorted(out)


def _top_dirty_run(con: duckdb.DuckDBPyConnection) -> int | None:
    """The newest run with dirty marks (None: none, or no ETL record)."""
    try:
        return con.execute("SELECT MAX(run_id) FROM etl_dirty").fetchone()[0]
    except duckdb.CatalogException:
        return None


def _dirty_dates(con: duckdb.DuckDBPyConnection, since: int | None
                 ) -> tuple[list[tuple[str, object, changes.Columns]], int | None]:
    """(table, business date, columns changed there) the ETL marked since run `since`, and the
    newest run id."""
    try:
        rows = changes.dirty_dates(con, since)
    except duckdb.CatalogException:
        return [], since
    return rows, _top_dirty_run(con) or since


def _pending(con: duckdb.DuckDBPyConnection, k: KpiDef) -> bool:
    """Facts with a pending flag change with time alone; a KPI whose SQL does not bind counts
    too (its evaluation then reports the error for it alone)."""
    try:
        return "pending" in fact_columns(con, k)
    except duckdb.Error:
        return True


def evaluate_incremental(con: duckdb.DuckDBPyConnection, registry: Registry,
                         as_of: datetime) -> EvalSummary:
    """After an ETL pass: periods touched by new dirty dates, open periods and snapshots."""
    ensure_schema(con)
    state = con.execute("SELECT last_dirty_run_id, last_full_at FROM kpi_eval_state WHERE id = 1").fetchone()
    if state is None or state[1] is None:
        first = con.execute("SELECT MIN(cal_date) FROM mis_work_calendar "
                            "WHERE cal_date <= CAST($a AS DATE)", {"a": as_of}).fetchone()[0]
        lower = datetime(as_of.year, as_of.month, 1) - timedelta(days=100)
        first_day = max(datetime.combine(first, datetime.min.time()), lower) if first else None
        top = _top_dirty_run(con)
        summary = evaluate_and_store(con, registry, default_periods(as_of, first_day), as_of,
                                     use_day_store=True)
        con.execute("DELETE FROM kpi_eval_state")
        con.execute("INSERT INTO kpi_eval_state (id, last_dirty_run_id, last_full_at, last_eval_at, "
                    "last_sweep_at, last_past_run_id) VALUES (1, $r, $a, $a, $a, $r)",
                    {"r": top, "a": as_of})
        return summary
    last_eval, last_sweep, past_run = con.execute(
        "SELECT last_eval_at, last_sweep_at, COALESCE(last_past_run_id, last_dirty_run_id) "
        "FROM kpi_eval_state WHERE id = 1").fetchone()
    new_hour = (last_sweep is None or last_eval is None
                or as_of.replace(minute=0, second=0, microsecond=0)
                != last_eval.replace(minute=0, second=0, microsecond=0))
    sweep = new_hour or as_of - last_sweep >= SWEEP_EVERY
    dirty, top = _dirty_dates(con, state[0])
    dirty_tables = {table for table, *_ in dirty}
    if sweep:   # every restatement since the last sweep, not only since the last pass
        dirty, top = _dirty_dates(con, past_run)
    # Open periods: today, this month and the running hour (with the one before it, whose last
    # rows an ETL lag may bring after the new hour's sweep); past days of this month when their
    # dates turn up in etl_dirty and the month is summed from stored days; other past days,
    # today's earlier hours, a closed month's days and the month itself at the next sweep. The
    # dirty dates cannot say which hour a late row belongs to, and by mid-afternoon the 12
    # hourly KPIs re-read 15 closed hours every pass for it.
    today = day(as_of.date())
    hours = hours_of(today) if sweep else [h for h in hours_of(today)
                                           if as_of - timedelta(hours=1) < h.we and h.ws <= as_of]
    base = {today, month(as_of.year, as_of.month), *hours}
    # per table, the past periods a dirty date opens and the columns changed on that date: a
    # KPI reads them again only when it reads one of those columns (a call's quality check
    # filled two days later changes no column the call counts read)
    by_table: dict[str, list[tuple[set[Period], changes.Columns]]] = {}
    for table, d, cols in dirty:
        if d is None:
            continue
        dd = d if not isinstance(d, datetime) else d.date()
        if dd > as_of.date() or dd < as_of.date() - timedelta(days=800):
            continue
        if not sweep and (dd.year, dd.month) != (as_of.year, as_of.month):
            continue    # a closed month's dates wait for the next sweep (SWEEP_EVERY)
        by_table.setdefault(table, []).append(({day(dd), month(dd.year, dd.month)}, cols))

    def dirty_periods(k: KpiDef, t: str) -> set[Period]:
        named = columns_named(k, t) if t in by_table else None
        return {p for ps, cols in by_table.get(t, ()) if changes.touches(cols, named) for p in ps}

    apply_prelude(con, needed=())
    always = {k.id for k in registry.kpis.values()
              if sweep or k.grain == "near-real-time"
              or (k.time_steps == "minute" and (k.resolved_or_due or _pending(con, k)))}
    woken = [(k, tables_read(k) & dirty_tables) for k in registry.kpis.values() if k.id not in always]
    # of the KPIs woken by a table only, those whose columns of it did not change (kpis/wake.py):
    # by the ETL's record of the columns it changed, then by fingerprints of small tables
    same = wake.untouched(con, [(k, t) for k, t in woken if t], state[0])
    more, fingerprints = wake.unchanged(con, [(k, t) for k, t in woken if t and k.id not in same])
    same |= more
    wanted: list[tuple[KpiDef, set[Period]]] = []
    # (KPI, the one table that opened a past day, the day): the day may be left as stored when
    # the table's changed rows give the same facts before and after (kpis/images.py)
    judged: list[tuple[KpiDef, str, date]] = []
    imaged = (images.covered(con, state[0], top, dirty_tables)
              if not sweep and state[0] is not None and top is not None else set())
    for k in registry.kpis.values():
        reads = tables_read(k)
        if k.id not in always and (not reads & dirty_tables or k.id in same):
            continue
        periods = set(base)
        if not sweep and not day_additive(k):
            # A past day is closed: its restatement waits for the sweep like a closed month's.
            # Only a month summed from stored days (kpis/day_store.py) needs its dirty days now.
            wanted.append((k, periods))
            continue
        opened_by = {t: dirty_periods(k, t) for t in reads}
        opened = set().union(*opened_by.values())
        periods |= opened
        for p in opened - base:
            if p.grain == "daily":
                tables = [t for t, ps in opened_by.items() if p in ps]
                if len(tables) == 1 and tables[0] in imaged and images.eligible(k, tables[0]):
                    judged.append((k, tables[0], p.ws.date()))
        if sweep and carried_forward(k):
            dated = [p.ws for ps in opened_by.values() for p in ps if p.grain == "daily"]
            if dated:
                periods |= stock_carried(min(dated).date(), as_of)
        if k.shape == "rolling" and opened:
            # every window that contains a changed date (CONVENTIONS.md §6): each day and month
            # from the first of the earliest one's month on (`opened` holds its month)
            earliest = min(p.ws for p in opened).date()
            periods |= _days_from(earliest, as_of) | _months_from(earliest, as_of)
        wanted.append((k, periods))
    # kept between passes: only the keys whose inputs this pass's ETL merged are re-derived
    # (before the judgement below, whose facts read them as the pass does)
    kept = refresh_on_demand(con, on_demand_tables(k for k, _ in wanted))
    if sweep and past_run is not None and last_sweep is not None:
        # the days a restated_by names since the last sweep, of closed months too (a task moved
        # to an order accepted last month restates that day; its dirty dates are its own): the
        # store asks it only of the months a pass evaluates (kpis/day_store.py). After the
        # refresh: it reads the kept tables (k_task) as this pass's runs left them.
        for k, periods in wanted:
            if not k.restated_by:
                continue
            for d in day_store.restated_days(con, k, [past_run], [last_sweep], as_of) or ():
                if d is not None and as_of.date() - timedelta(days=800) <= d <= as_of.date():
                    periods |= {day(d), month(d.year, d.month)}
    same_days = images.unchanged(con, judged, state[0], top, as_of) if judged else set()
    plan = [(k, periods_for(k, sorted(p for p in periods
                                      if p.grain != "daily" or (k.id, p.ws.date()) not in same_days),
                            as_of))
            for k, periods in wanted]
    # The sweep re-reads the days of the months it evaluates whose inputs changed (kpis/changes.py):
    # a change the dirty dates do not show (a row of a joined table) reaches the stored days at
    # most SWEEP_EVERY late.
    at = local_now()
    if sweep:   # older months are evaluated only when restated; they read absent days again
        day_store.prune(con, (month(as_of.year, as_of.month).ws - timedelta(days=1)).replace(day=1).date())
        fact_diff.prune(con, today.ws, month(as_of.year, as_of.month).ws)
    # A pass recomputes only the units whose facts changed since they were stored
    # (kpis/fact_diff.py), the sweeps within an hour too; the sweep at each new hour recomputes
    # every row (a change the bookkeeping could miss is at most an hour late).
    tree = fact_diff.tree_signature(con)
    diff = Diff({k.id: fact_diff.key_hash(k, tree) for k, _ in plan},
                restrict=not new_hour, follows=_baseline_edges(plan))
    summary = evaluate_plan(con, plan, as_of, at, day_store.Mode(refresh=sweep, computed_at=at,
                                                                  run_id=changes.top_run(con),
                                                                  carry=not sweep), diff)
    wake.record(con, [k for k, _ in plan], summary.errors, fingerprints)
    summary.skipped = len(same)
    summary.as_stored = sorted(same_days)
    summary.kept = kept
    con.execute("UPDATE kpi_eval_state SET last_dirty_run_id = $r, last_eval_at = $a, "
                "last_sweep_at = CASE WHEN $sweep THEN $a ELSE last_sweep_at END, "
                "last_past_run_id = CASE WHEN $sweep THEN $r "
                "ELSE COALESCE(last_past_run_id, $p) END WHERE id = 1",
                {"r": top, "a": as_of, "sweep": sweep, "p": past_run})
    return summary
