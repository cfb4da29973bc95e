"""A day stored before it settled, brought forward by difference instead of read again.

The two daily collection rates count a reading of day D when it succeeded before 09:00 of D+1
and by as_of (`settles_after: 9 hours`). Until then the day depends on as_of, so every pass read
it again: yesterday's 3.5 M readings semi-joined to 3.5 M collection objects, 0.67 s of every
city minute from the night's first readings (~00:30) to 09:00 (docs/decisions.md, session 26).
The night's retries change ~30 readings a minute, and they do move the day, so the row images'
judgement (kpis/images.py) finds it changed.

A KPI that states `as_of_moves` keeps such a day's reduced facts in the store although it has
not settled (kpi_day.unsettled_rows; kpis/day_store.py), with the as_of and the ETL run they
were computed at. An ordinary pass then takes the day as

    stored + F(rows after, as_of) - F(rows before, stored as_of)

per (org, grid), where the rows are those of the table that the runs since the stored one
merged (each as the first of those runs found it, and as the last left it: the ETL's row
images) and those `as_of_moves` names (unchanged, but their facts differ between the two as_of:
a success in between; taken as they are on both sides). F is the KPI's own reduced facts
statement (kpis/batch.py) with the table renamed, so the rows that did not change add the same
to the stored sums as to the day read whole. DECIMAL sums are exact.

Where it cannot be told, the day is read as before:
- a flag (missing, pending) on the before side: an OR is not undone by a difference;
- a group the before side touches whose sums come out zero: it may have lost its last fact row
  (no row) or keep rows that sum to zero (a row); the stored rows do not carry their count;
- a KPI the images cannot judge (images.eligible), or with a presence query;
- another table the KPI reads changed in a column it reads since the stored run
  (kpis/changes.py), or a run since did not keep the table's images;
- a sweep (kpis/evaluate.py passes no `since`): it reads the day, and stores it anew.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import date, datetime

import duckdb

from etl.contract import load_contract
from etl.schema import quote_ident as q
from kpis import changes, images
from kpis.periods import Period, day
from kpis.spec import KpiDef

log = logging.getLogger(__name__)


def carries(k: KpiDef) -> bool:
    """Whether the store keeps the KPI's unsettled days' rows to bring them forward."""
    return (k.as_of_moves is not None and k.settles is not None and not k.presence
            and not k.settles_when_none_pending and not k.restated_by)


def moves_params(k: KpiDef, after: datetime, as_of: datetime) -> dict[str, object]:
    """The parameters as_of_moves names (DuckDB refuses values for names a statement lacks)."""
    text = k.as_of_moves or ""
    return {n: v for n, v in (("after", after), ("as_of", as_of)) if re.search(rf"\${n}\b", text)}


def moves_table(k: KpiDef) -> str | None:
    """The one table whose rows as_of_moves returns (None: not exactly one)."""
    from kpis.dependencies import ALWAYS, _tables_read  # noqa: PLC0415
    named = _tables_read(k.as_of_moves or "") - ALWAYS
    return next(iter(named)) if len(named) == 1 else None


def bring_forward(con: duckdb.DuckDBPyConnection, days: Sequence[tuple[int, KpiDef, str, date]],
                  as_of: datetime, top: int) -> dict[int, list[date]]:
    """Of the (kix, KPI, facts hash, day) given, the days brought forward, by kix; their
    reduced facts are in temp table _carry (kix, day, org_no, grid_no, num, den, sample,
    pending, missing). `top`: the ETL run the warehouse is up to."""
    con.execute("""CREATE OR REPLACE TEMP TABLE _carry (kix INTEGER, day DATE, org_no VARCHAR,
                   grid_no VARCHAR, num DECIMAL(38, 9), den DECIMAL(38, 9), sample DECIMAL(38, 9),
                   pending BOOLEAN, missing BOOLEAN)""")
    cands = [(kix, k, h, d) for kix, k, h, d in days if carries(k)]
    if not cands:
        return {}
    rows = con.execute("""SELECT kpi_id, day, te, facts_hash, run_id, as_of FROM kpi_day
                          WHERE kpi_id IN (SELECT unnest($ids)) AND day IN (SELECT unnest($days))
                            AND (pending IS FALSE OR unsettled_rows)""",
                       {"ids": sorted({k.id for _, k, _, _ in cands}),
                        "days": sorted({d for *_, d in cands})}).fetchall()
    stored = {(kid, d): (te, h, run, at) for kid, d, te, h, run, at in rows}
    groups: dict[tuple[str, int, datetime, str], list[tuple[int, KpiDef, date]]] = {}
    for kix, k, h, d in cands:
        got = stored.get((k.id, d))
        table = moves_table(k)
        if got is None or table is None or not images.eligible(k, table):
            continue
        te, stored_hash, run, at = got
        p = day(d)
        if te != p.we or stored_hash != h or run is None or at is None or not p.we <= at <= as_of \
                or run > top:
            continue
        groups.setdefault((table, run, at, k.as_of_moves), []).append((kix, k, d))
    out: dict[int, list[date]] = {}
    for (table, run, at, moves), mine in sorted(groups.items(), key=lambda g: g[0][:3]):
        mine = _others_unchanged(con, mine, table, run)
        if not mine:
            continue
        if run < top and table not in images.covered(con, run, top, [table]):
            continue
        try:
            done = _difference(con, table, run, top, at, as_of, moves, mine)
        except duckdb.Error as exc:
            # its days are read as before (a KPI whose SQL fails fails in the pass's own
            # statements too)
            log.warning("the stored days of %s could not be brought forward: %s", table, exc)
            continue
        for kix, d in done:
            out.setdefault(kix, []).append(d)
    return out


def _others_unchanged(con: duckdb.DuckDBPyConnection, mine: Sequence[tuple[int, KpiDef, date]],
                      table: str, run: int) -> list[tuple[int, KpiDef, date]]:
    """Those of `mine` whose KPI no run after `run` changed a column of, in a table other than
    `table` (one look at the ETL's record for all of them)."""
    from kpis.dependencies import columns_named, tables_read  # noqa: PLC0415
    others = {k.id: {t: columns_named(k, t) for t in tables_read(k) if t != table} for _, k, _ in mine}
    found = changes.Changes(con, run, {t for reads in others.values() for t in reads})
    return [(kix, k, d) for kix, k, d in mine if found.last_touch(others[k.id]) is None]


def _difference(con: duckdb.DuckDBPyConnection, table: str, run: int, top: int, at: datetime,
                as_of: datetime, moves: str, mine: Sequence[tuple[int, KpiDef, date]]
                ) -> list[tuple[int, date]]:
    """bring_forward() for the candidates of one table, stored run and stored as_of."""
    from kpis.batch import Bounds, _facts_sql, _note_integral, fact_columns, load_periods  # noqa: PLC0415

    contract = load_contract().tables[table]
    key = [q(c) for c in contract.key]
    if run < top:
        images._versions(con, table, run, top)
    else:   # no run since: nothing changed
        for side in ("_img_after", "_img_before"):
            con.execute(f"CREATE OR REPLACE TEMP TABLE {side} AS SELECT * FROM {q(table)} LIMIT 0")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _mv AS SELECT * FROM ({moves})",
                moves_params(mine[0][1], at, as_of))
    on = " AND ".join(f"m.{c} = a.{c}" for c in key)
    for side, image in (("after", "_img_after"), ("before", "_img_before")):
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _cside_{side} AS
                        SELECT * FROM {image}
                        UNION ALL BY NAME
                        SELECT m.* FROM _mv m ANTI JOIN _img_after a ON {on}""")

    kpis = sorted({k.id: (kix, k) for kix, k, _ in mine}.values(), key=lambda x: x[0])
    days = sorted({d for _, _, d in mine})
    periods: list[Period] = [day(d) for d in days]
    items = []
    for kix, k in kpis:
        _note_integral(con, k)
        items.append((kix, k, fact_columns(con, k)))
    for side, when in (("after", as_of), ("before", at)):
        load_periods(con, "_periods", list(range(len(periods))), periods, when)
        lo = Bounds(min(p.ws for p in periods), min(p.te(when) for p in periods))
        sql = images._rename(_facts_sql(items, lo), table, f"_cside_{side}")
        con.execute(f"CREATE OR REPLACE TEMP TABLE _c_{side} AS {sql}")
    wanted = [(kix, k.id, days.index(d), d) for kix, k, d in mine]
    cols = list(zip(*wanted))
    con.execute("""CREATE OR REPLACE TEMP TABLE _cwant AS
                   SELECT unnest($kix) AS kix, unnest($kpi) AS kpi_id, unnest($pid) AS pid,
                          unnest($day) AS day""",
                {"kix": cols[0], "kpi": cols[1], "pid": cols[2], "day": cols[3]})
    con.execute("""CREATE OR REPLACE TEMP TABLE _csum AS
                   SELECT kix, day, org_no, grid_no, SUM(num) AS num, SUM(den) AS den,
                          SUM(sample) AS sample, BOOL_OR(pending) AS pending,
                          BOOL_OR(missing) AS missing, BOOL_OR(side < 0) AS touched,
                          BOOL_OR(side < 0 AND (pending OR missing)) AS flagged
                   FROM (SELECT w.kix, w.day, f.org_no, f.grid_no, f.num, f.den, f.sample,
                                COALESCE(f.pending, FALSE) AS pending, f.missing, 0 AS side
                         FROM kpi_day_fact f JOIN _cwant w ON w.kpi_id = f.kpi_id AND w.day = f.day
                         UNION ALL
                         SELECT w.kix, w.day, a.org_no, a.grid_no, a.num, a.den, a.sample,
                                a.pending, a.missing, 1
                         FROM _c_after a JOIN _cwant w ON w.kix = a.kix AND w.pid = a.pid
                         UNION ALL
                         SELECT w.kix, w.day, b.org_no, b.grid_no, -b.num, -b.den, -b.sample,
                                b.pending, b.missing, -1
                         FROM _c_before b JOIN _cwant w ON w.kix = b.kix AND w.pid = b.pid)
                   GROUP BY kix, day, org_no, grid_no""")
    refused = set(con.execute("""SELECT DISTINCT kix, day FROM _csum
                                 WHERE flagged OR (touched AND num = 0 AND den = 0 AND sample = 0)"""
                              ).fetchall())
    con.execute("""INSERT INTO _carry
                   SELECT kix, day, org_no, grid_no, num, den, sample, pending, missing FROM _csum c
                   WHERE NOT EXISTS (SELECT 1 FROM _csum r WHERE r.kix = c.kix AND r.day = c.day
                                     AND (r.flagged OR (r.touched AND r.num = 0 AND r.den = 0
                                                        AND r.sample = 0)))""")
    return [(kix, d) for kix, _, _, d in wanted if (kix, d) not in refused]
