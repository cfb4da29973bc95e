"""The source records behind a KPI value: the facts of one period under a set of org units."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

import duckdb

from kpis.compile import PERIODS_DDL, attributed_facts
from kpis.periods import Period
from kpis.prelude import MARKED, ON_DEMAND, apply_prelude
from kpis.spec import KpiDef

DETAIL_COLUMNS = ("item_key", "org_no", "grid_no", "numerator", "denominator", "pending")


def detail_sql(k: KpiDef, columns: set[str]) -> str:
    """Facts of the KPI attributed (by org or grid) to any of the units in $units."""
    pending = "f.pending" if "pending" in columns else "FALSE"
    key = "CAST(f.item_key AS VARCHAR)" if "item_key" in columns else "NULL"
    num = "f.num_key" if k.num_agg == "count_distinct" and "num_key" in columns else "f.num"
    return f"""
{attributed_facts(k)}
SELECT {key} AS item_key, f.attr_org AS org_no, f.attr_grid AS grid_no,
       CAST({num} AS VARCHAR) AS numerator, CAST(f.den AS VARCHAR) AS denominator,
       {pending} AS pending
FROM fa f
WHERE f.attr_grid IN (SELECT unnest($units))
   OR f.attr_org IN (SELECT a.unit_no FROM k_org_ancestor a
                     WHERE a.ancestor_no IN (SELECT unnest($units)))
ORDER BY item_key
"""


def prepare(cur: duckdb.DuckDBPyConnection, period: Period, as_of: datetime,
            kpi: KpiDef | None = None) -> None:
    """Temp prelude and the one-period _periods table on this cursor (read-only safe). With
    `kpi`, only the on-demand tables its SQL reads are built (the others empty): building all
    of them (kept rows and groups of customers, bills, points) took ~10.6 s at city per export."""
    needed = None
    if kpi is not None:
        from kpis.dependencies import prelude_objects  # noqa: PLC0415  (imports kpis.prelude)
        needed = {name for name in prelude_objects(kpi) if name in ON_DEMAND}
    # a MARKED table from the period's days only: k_clock_off whole from a city snapshot's 22 days
    # of collection rows was ~2 s, the 7 days the one period reads ~0.6 s
    marked = sorted(needed & MARKED.keys()) if needed else []
    apply_prelude(cur, temp=True, needed=None if needed is None else needed - set(marked))
    cur.execute(PERIODS_DDL)
    te = period.te(as_of)
    cur.execute("INSERT INTO _periods VALUES (0, ?, ?, ?, ?, ?, ?)",
                [period.grain, period.ws, period.we, te, as_of,
                 (period.we - period.ws).total_seconds() / 3600])
    last_day = (te - timedelta(microseconds=1)).date()
    for name in marked:
        m = MARKED[name]
        cur.execute(m.for_days(name), {"lo": last_day - timedelta(days=m.lookback_days), "hi": last_day})


def iter_detail(cur: duckdb.DuckDBPyConnection, k: KpiDef, units: Sequence[str], period: Period,
                as_of: datetime, batch: int = 10_000) -> Iterator[list[tuple]]:
    """Batches of detail rows (DETAIL_COLUMNS), streamed: flat memory for any row count."""
    prepare(cur, period, as_of, k)
    cols = {r[0] for r in cur.execute(f"DESCRIBE SELECT * FROM ({k.facts}) AS f").fetchall()}
    cur.execute(detail_sql(k, cols), {"units": list(units)})
    while True:
        rows = cur.fetchmany(batch)
        if not rows:
            return
        yield rows
