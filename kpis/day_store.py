"""Per-day store of reduced flow facts: months of day-additive KPIs as exact sums of their days.

After a one-minute ETL pass the running month of every woken flow KPI used to be re-read whole
to change a few of today's rows. A day-additive KPI (kpis.registry.day_additive: each fact row
placed by one time inside [ws, te), summed) has, per day, the reduction the engine makes anyway
before attribution: (org_no, grid_no) -> DECIMAL num, den, sample and a missing flag, plus the
day's presence. Those rows are kept in `kpi_day_fact` (one header row per KPI and day in
`kpi_day`: its te, presence and the hash of the SQL that produced it), and a month (or the month
to date) is the DECIMAL sum of its days, grouped by the same raw org and grid, then attributed
and rolled up as before. DECIMAL sums are exact, so the result is that of a month read to the
last bit (tests/kpis/test_day_store.py checks it on simulated data).

A stored day is used only when it was computed with the same SQL (facts, presence and the prelude
objects they read: `facts_hash`) and up to the te the month needs; for a KPI whose facts read
as_of and settle (`settles_after`: a day's collection counts if it succeeded before 09:00 of
the next day), only when it was computed at an as_of at least that long after the day's end;
for a resolved-or-due flow (`settles_when_none_pending`), only when none of its items was
pending. Anything else is read again from the facts in the same statements as the pass's other
periods ("backfill"), and the month sums those days as read. Only what a later pass can reuse is
stored: complete days, with their rows once settled, as a header marked pending until then;
today is read again by every pass and not stored (store_and_build).

Freshness: the days a pass reads are the periods it already evaluates (today, and past days the
ETL marked dirty); the sweep (kpis.evaluate.SWEEP_EVERY) re-reads the days of the months it
evaluates (the running month, and a closed month with restated days) whose inputs may have
changed, so a change the dirty dates do not show (a row of a joined table) reaches the month at
the next sweep, as restatements of closed months already do. A day is stored with the ETL run
its data was up to (`run_id`); the sweep keeps it when no later run changed a column the KPI
reads of any table it reads (kpis/changes.py: the ETL's record of changed columns), because a
day-additive KPI's day depends on nothing else (no as_of, no period end: day_additive). At city
the sweep re-read every day of the month for the collection rates (3.5 M meters a day) and the
billing flows although no column they read had changed since.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache

import duckdb

from kpis import changes
from kpis.periods import Period, days_of
from kpis.spec import KpiDef

DDL = (
    """CREATE TABLE IF NOT EXISTS kpi_day (
        kpi_id VARCHAR, day DATE, te TIMESTAMP, present BOOLEAN, facts_hash VARCHAR,
        computed_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS kpi_day_fact (
        kpi_id VARCHAR, day DATE, org_no VARCHAR, grid_no VARCHAR, num DECIMAL(38, 9),
        den DECIMAL(38, 9), sample DECIMAL(38, 9), missing BOOLEAN)""",
    # the ETL run the day's data was up to (kpis/changes.py); NULL: unknown, read again at a sweep
    "ALTER TABLE kpi_day ADD COLUMN IF NOT EXISTS run_id BIGINT",
    # the as_of the day was computed at: a KPI that settles (settles_after) reuses a day only
    # when it was computed after it settled
    "ALTER TABLE kpi_day ADD COLUMN IF NOT EXISTS as_of TIMESTAMP",
    # A month's stored days before `upto` summed once (month bases, store_and_build): the header
    # says the base exists (it may have no rows); writing any of its days deletes it.
    """CREATE TABLE IF NOT EXISTS kpi_month_base_head (kpi_id VARCHAR, month DATE, upto DATE)""",
    """CREATE TABLE IF NOT EXISTS kpi_month_base (
        kpi_id VARCHAR, month DATE, upto DATE, org_no VARCHAR, grid_no VARCHAR,
        num DECIMAL(38, 9), den DECIMAL(38, 9), sample DECIMAL(38, 9), missing BOOLEAN)""",
    # a day of a KPI with pending items (a window still open when it was read, e.g. urges
    # within 7 days) keeps that flag per (org, grid): a month is pending while a day of it is
    "ALTER TABLE kpi_day_fact ADD COLUMN IF NOT EXISTS pending BOOLEAN",
    "ALTER TABLE kpi_month_base ADD COLUMN IF NOT EXISTS pending BOOLEAN",
    # whether any (org, grid) row of the day was pending: a KPI that settles when none is
    # (settles_when_none_pending) reuses only days stored with FALSE (NULL: unknown)
    "ALTER TABLE kpi_day ADD COLUMN IF NOT EXISTS pending BOOLEAN",
    # a KPI with restated_by: the ETL run up to which the day's restatements were looked for
    # (its as_of likewise moves on): a pass that found a stored day not restated moves both on
    # (store_and_build), so the next pass looks only at what came since (NULL: run_id)
    "ALTER TABLE kpi_day ADD COLUMN IF NOT EXISTS checked_run BIGINT",
    # the digest of the day's rows in kpi_day_fact (_write_days; NULL: unknown)
    "ALTER TABLE kpi_day ADD COLUMN IF NOT EXISTS facts_digest VARCHAR",
    # a day not settled whose rows are kept all the same (a KPI with as_of_moves): a later pass
    # may bring them forward by difference (kpis/carry.py) instead of reading the day
    "ALTER TABLE kpi_day ADD COLUMN IF NOT EXISTS unsettled_rows BOOLEAN",
)
# A month base is rebuilt when the days it lacks before the first day a pass writes exceed this:
# a late row for yesterday writes yesterday, and the base up to it (or before) still serves.
BASE_LAG_DAYS = 3
# An ordinary pass reads a month whole (one period) when more than this share of its days are
# stored but not settled: they would be read again every pass, each as its own period, and
# order.urge_rate's 7 unsettled days of 10 cost 0.087 s as 7 periods against 0.067 s for the
# month in one (session 15). Days missing or stale count not: read once, they are stored; the
# sweep (refresh) always reads through the store, so days that settled since are stored anew.
READ_WHOLE_SHARE = 0.5
# Part of every hash: a change of what a stored row means invalidates every stored day.
FORMAT = "day-store 2"


_DEFINES = re.compile(r"^CREATE OR REPLACE (?:TEMP )?(?:TABLE|VIEW|MACRO) (\w+)")


@lru_cache(maxsize=1)
def _prelude_sql() -> dict[str, str]:
    """Prelude object name -> the statement defining it."""
    from kpis.prelude import statements  # noqa: PLC0415
    return {m.group(1): stmt for stmt in statements() if (m := _DEFINES.match(stmt))}


def facts_hash(k: KpiDef) -> str:
    """The SQL a stored day depends on: facts, presence, reduced facts and the prelude objects
    they read."""
    from kpis.dependencies import prelude_objects  # noqa: PLC0415
    prelude = _prelude_sql()
    parts = [FORMAT, k.facts, k.presence or "", k.settles_after or ""] + ([k.reduced] if k.reduced else [])
    parts += ["settles when none pending"] if k.settles_when_none_pending else []
    parts += [prelude.get(name, name) for name in sorted(prelude_objects(k))]
    return hashlib.sha256("\n\x00".join(parts).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Mode:
    """How an evaluation uses the store: refresh re-reads the days of the months it builds whose
    inputs changed since they were stored (the sweep); computed_at stamps the days written,
    run_id is the ETL run the data is up to (kpis.changes.top_run; None: unknown, so a refresh
    re-reads every day); carry: days stored before they settled may be brought forward by
    difference (kpis/carry.py; an ordinary pass, not a sweep or a full evaluation)."""
    refresh: bool
    computed_at: datetime
    run_id: int | None = None
    carry: bool = False


@dataclass
class Job:
    """One day-additive KPI of a plan: which periods it reads, which days it stores, which
    months it builds from the store."""
    kix: int
    k: KpiDef
    hash: str
    store_days: list[Period]                # daily periods read: written to the store
    months: dict[Period, list[Period]] = field(default_factory=dict)   # month -> its days to te
    extra: set[Period] = field(default_factory=set)    # read for the store only (not output)
    # restated_by: stored days found not restated, taken from the store as they are
    checked: list[date] = field(default_factory=list)


def needed_days(m: Period, as_of: datetime) -> list[Period]:
    """The days a month (or month to date) sums: those starting before its te."""
    te = m.te(as_of)
    return [d for d in days_of(m) if d.ws < te]


def _reads(k: KpiDef) -> dict[str, frozenset[str] | None]:
    """The columns the KPI's values depend on, per table it reads."""
    from kpis.dependencies import columns_named, tables_read  # noqa: PLC0415
    return {t: columns_named(k, t) for t in tables_read(k)}


_PARAM = re.compile(r"\$(run|after|as_of)\b")
_QUOTED = re.compile(r"'(\w+)'")


def restated_params(k: KpiDef, run: int, after: datetime, as_of: datetime) -> dict[str, object]:
    """The parameters restated_by names (DuckDB refuses values for names a statement lacks)."""
    given = {"run": run, "after": after, "as_of": as_of}
    return {n: given[n] for n in set(_PARAM.findall(k.restated_by or ""))}


def restated_days(con: duckdb.DuckDBPyConnection, k: KpiDef, runs: Sequence[int | None],
                  ats: Sequence[datetime | None], as_of: datetime) -> set[date] | None:
    """The stored days of a KPI with restated_by that may differ now (None: all of them): its
    SQL run from the earliest ETL run and as_of the days were stored at. The store asks it of
    the months a pass evaluates; a sweep of the days before them (kpis/evaluate.py). All when
    one is unknown, or when a run after it merged rows into a table the SQL names without
    recording their keys (etl_keys: a huge load, a reconciliation)."""
    if not runs or any(r is None for r in runs) or any(a is None for a in ats):
        return None
    run = min(runs)
    from kpis.dependencies import tables_read  # noqa: PLC0415
    named = sorted(set(_QUOTED.findall(k.restated_by or "")) & tables_read(k))
    if named and con.execute("""
            SELECT COUNT(*) FROM etl_run r
            WHERE r.run_id > $run AND r.rows_merged > 0 AND list_contains($tables, r.table_name)
              AND (NOT EXISTS (SELECT 1 FROM etl_keys x WHERE x.run_id = r.run_id
                               AND x.table_name = r.table_name)
                   OR EXISTS (SELECT 1 FROM etl_keys x WHERE x.run_id = r.run_id
                              AND x.table_name = r.table_name AND x.key IS NULL))""",
            {"run": run, "tables": named}).fetchone()[0]:
        return None
    params = restated_params(k, run, min(ats), as_of)
    return {d for (d,) in con.execute(f"SELECT DISTINCT day FROM ({k.restated_by})", params).fetchall()}


def plan(con: duckdb.DuckDBPyConnection, entries: Sequence[tuple[int, KpiDef, Sequence[Period]]],
         as_of: datetime, refresh: bool) -> dict[int, Job]:
    """A Job per entry that has a daily or monthly period. Months take their days from the store
    when stored with the same hash up to the right te; other days are added to the reads.
    refresh (the sweep): a stored day is read again unless the ETL's record shows that no run
    after the one it was stored at changed a column the KPI reads (kpis/changes.py)."""
    jobs: dict[int, Job] = {}
    wanted: list[tuple[int, KpiDef, list[Period], list[Period]]] = []
    for kix, k, ps in entries:
        months = [p for p in ps if p.grain == "monthly"]
        days = [p for p in ps if p.grain == "daily"]
        if months or days:
            wanted.append((kix, k, months, days))
    if not wanted:
        return jobs
    lo = min(p.ws for _, _, ms, ds in wanted for p in ms + ds).date()
    hi = max(p.we for _, _, ms, ds in wanted for p in ms + ds).date()
    ids = sorted({k.id for _, k, _, _ in wanted})
    rows = con.execute(
        "SELECT kpi_id, day, te, facts_hash, run_id, as_of, pending, COALESCE(checked_run, run_id) "
        "FROM kpi_day WHERE kpi_id IN (SELECT unnest($ids)) AND day >= $lo AND day < $hi",
        {"ids": ids, "lo": lo, "hi": hi}).fetchall()
    stored = {(kid, d): (te, h) for kid, d, te, h, *_ in rows}
    run_of = {(kid, d): run for kid, d, _, _, run, *_ in rows}
    computed_as_of = {(kid, d): at for kid, d, _, _, _, at, *_ in rows}
    pending_of = {(kid, d): pending for kid, d, *_, pending, _ in rows}
    checked_of = {(kid, d): checked for kid, d, *_, checked in rows}
    touched: dict[str, int | None] = {}
    if refresh:
        runs = [r for r in run_of.values() if r is not None]
        if runs:     # without the ETL's record (Changes.known) no day counts as fresh
            wanted_reads = {k.id: _reads(k) for _, k, _, _ in wanted}
            found = changes.Changes(con, min(runs), {t for r in wanted_reads.values() for t in r})
            touched = {kid: found.last_touch(r) for kid, r in wanted_reads.items()}

    def fresh(kid: str, d: date) -> bool:
        """At a sweep: no run after the day's changed what the KPI reads."""
        run = run_of.get((kid, d))
        if run is None or kid not in touched:
            return False
        last = touched[kid]
        return last is None or last <= run

    def settled(k: KpiDef, d: Period) -> bool:
        """A KPI that reads as_of: the day was computed after it stopped depending on it (with
        settles_when_none_pending: no item of it was pending, at an as_of not after this one;
        with restated_by: at an as_of not after this one, the days it names aside)."""
        at = computed_as_of.get((k.id, d.ws.date()))
        if k.settles_when_none_pending:
            return at is not None and at <= as_of and pending_of.get((k.id, d.ws.date())) is False
        if k.restated_by:
            return at is not None and at <= as_of
        return k.settles is None or (at is not None and at >= d.we + k.settles)

    restated: dict[str, set[date] | None] = {}
    # KPIs with the same restated_by and stored days checked alike ask once (the four on-time
    # arrival rates)
    asked: dict[tuple, set[date] | None] = {}
    for _, k, _, _ in wanted:
        if k.restated_by and k.id not in restated:
            mine = [(checked_of[key], computed_as_of[key]) for key in run_of if key[0] == k.id]
            runs, ats = [r for r, _ in mine], [a for _, a in mine]
            known = bool(mine) and None not in runs and None not in ats
            if not known:
                restated[k.id] = restated_days(con, k, runs, ats, as_of)
                continue
            from kpis.dependencies import tables_read  # noqa: PLC0415
            key = (k.restated_by, tables_read(k), min(runs), min(ats))
            if key not in asked:
                asked[key] = restated_days(con, k, runs, ats, as_of)
            restated[k.id] = asked[key]

    for kix, k, months, days in wanted:
        h = facts_hash(k)
        own = set(days)
        checked: list[date] = []
        extra: set[Period] = set()
        by_month: dict[Period, list[Period]] = {}
        for m in months:
            need = needed_days(m, as_of)
            if not need:
                continue    # a month starting at as_of: read as it is (presence of no day)
            again: list[Period] = []
            unsettled = 0
            for d in need:
                if d in own:
                    continue
                stale = (stored.get((k.id, d.ws.date())) != (d.te(as_of), h)
                         or (refresh and not fresh(k.id, d.ws.date()))
                         or (k.restated_by is not None
                             and (restated[k.id] is None or d.ws.date() in restated[k.id])))
                if stale or not settled(k, d):
                    again.append(d)
                    unsettled += not stale
            if not refresh and unsettled > READ_WHOLE_SHARE * len(need):
                continue    # read whole, as one period: the store serves it once more days settle
            by_month[m] = need
            extra.update(again)
            if k.restated_by and restated[k.id] is not None:
                checked.extend(d.ws.date() for d in need if d not in own and d not in again)
        jobs[kix] = Job(kix, k, h, sorted(own | extra), by_month, extra, checked)
    return jobs


def read_periods(job: Job, ps: Sequence[Period]) -> list[Period]:
    """The periods whose facts the engine reads for this KPI: the plan's periods without the
    months built from the store, plus the days read for the store only."""
    months = set(job.months)
    return sorted({p for p in ps if p not in months} | job.extra)


def _settled_by_time(k: KpiDef, d: Period, as_of: datetime) -> bool:
    """Whether the day no longer depends on as_of by its settles_after (a KPI without it: yes;
    one that settles when none pending: decided by its rows, in _write_days)."""
    return k.settles is None or as_of >= d.we + k.settles


def store_and_build(con: duckdb.DuckDBPyConnection, jobs: Sequence[Job], pid_of: dict[Period, int],
                    as_of: datetime, computed_at: datetime, run_id: int | None = None) -> None:
    """Store the complete days read this pass (_fr/_present), then add each month's rows to
    _fr/_present: its base, its stored days after the base, and the days read this pass
    straight from _fr. One transaction: a crash leaves the days as they were.

    Only what a later pass can reuse is written. A day not yet over (today) is read again by
    every pass (its te moves), so it is not stored: rewriting today's rows of ~50 KPIs cost a
    city minute ~0.06 s of comparing and writing. A complete day that has not settled (as_of
    before its settles_after, or an item still pending) is stored as its header only (pending):
    it is read again until it settles, and its header tells plan() that it is still moving.
    A KPI that carries its unsettled days (kpis/carry.py) keeps their rows too (unsettled_rows):
    a later pass brings them forward instead of reading the day."""
    from kpis.carry import carries  # noqa: PLC0415  (carry reads the store's tables)

    written = [(j.kix, pid_of[d], j.k.id, d.ws.date(), d.te(as_of), j.hash,
                _settled_by_time(j.k, d, as_of), j.k.settles_when_none_pending, carries(j.k))
               for j in jobs for d in j.store_days if d.te(as_of) >= d.we]
    month_ws = {m: m.ws.date() for j in jobs for m in j.months}
    con.execute("BEGIN TRANSACTION")
    try:
        if written:
            cols = list(zip(*written))
            con.execute("""CREATE OR REPLACE TEMP TABLE _dmap AS
                           WITH m AS (SELECT unnest($kix) AS kix, unnest($pid) AS pid,
                                             unnest($kpi) AS kpi_id, unnest($day) AS day,
                                             unnest($te) AS te, unnest($h) AS facts_hash,
                                             unnest($settled) AS settled, unnest($by_pending) AS by_pending,
                                             unnest($carries) AS carries)
                           SELECT m.kix, m.pid, m.kpi_id, m.day, m.te, m.facts_hash,
                                  pr.pid IS NOT NULL AS present, COALESCE(pe.pending, FALSE) AS pending,
                                  m.settled AND NOT (m.by_pending AND COALESCE(pe.pending, FALSE)) AS keep,
                                  NOT m.settled AND m.carries AS hold
                           FROM m LEFT JOIN (SELECT DISTINCT kix, pid FROM _present) pr
                                ON pr.kix = m.kix AND pr.pid = m.pid
                           LEFT JOIN (SELECT r.kix, r.pid, BOOL_OR(r.pending) AS pending FROM _fr r
                                      SEMI JOIN m ON m.kix = r.kix AND m.pid = r.pid
                                      GROUP BY r.kix, r.pid) pe ON pe.kix = m.kix AND pe.pid = m.pid""",
                        {"kix": cols[0], "pid": cols[1], "kpi": cols[2], "day": cols[3],
                         "te": cols[4], "h": cols[5], "settled": cols[6], "by_pending": cols[7],
                         "carries": cols[8]})
            _write_days(con)
            con.execute("""INSERT INTO kpi_day (kpi_id, day, te, present, facts_hash, computed_at,
                                               run_id, as_of, pending, checked_run, facts_digest,
                                               unsettled_rows)
                           SELECT m.kpi_id, m.day, m.te, m.present, m.facts_hash, $at, $run, $as_of,
                                  NOT m.keep, $run, g.digest, m.hold
                           FROM _dmap m JOIN _ddig g ON g.kpi_id = m.kpi_id AND g.day = m.day""",
                        {"at": computed_at, "run": run_id, "as_of": as_of})
            # a base that sums a day written now is no longer that day's sum
            con.execute("""CREATE OR REPLACE TEMP TABLE _mgone AS
                           SELECT DISTINCT h.kpi_id, h.month FROM kpi_month_base_head h
                           JOIN _dmap m ON m.kpi_id = h.kpi_id AND m.day >= h.month AND m.day < h.upto""")
            _drop_bases(con, "_mgone")
        checked = [(j.k.id, d) for j in jobs for d in j.checked]
        if checked and run_id is not None:
            # stored days found not restated up to this run and as_of: the next pass looks only
            # at what comes after (run_id stays: the sweep's check of other inputs starts there)
            cols = list(zip(*checked))
            con.execute("""UPDATE kpi_day SET checked_run = $run, as_of = $as_of
                           FROM (SELECT unnest($kpi) AS kpi_id, unnest($day) AS day) c
                           WHERE kpi_day.kpi_id = c.kpi_id AND kpi_day.day = c.day""",
                        {"run": run_id, "as_of": as_of, "kpi": cols[0], "day": cols[1]})
        stored, read = _month_days(con, jobs, pid_of, month_ws)
        if stored or read:
            cols = list(zip(*stored)) or [[], [], [], []]
            con.execute("CREATE OR REPLACE TEMP TABLE _mmap AS SELECT unnest($kix::INTEGER[]) AS kix, "
                        "unnest($pid::INTEGER[]) AS pid, unnest($kpi::VARCHAR[]) AS kpi_id, "
                        "unnest($day::DATE[]) AS day",
                        {"kix": cols[0], "pid": cols[1], "kpi": cols[2], "day": cols[3]})
            cols = list(zip(*read)) or [[], [], []]
            con.execute("CREATE OR REPLACE TEMP TABLE _mread AS SELECT unnest($kix::INTEGER[]) AS kix, "
                        "unnest($pid::INTEGER[]) AS pid, unnest($day_pid::INTEGER[]) AS day_pid",
                        {"kix": cols[0], "pid": cols[1], "day_pid": cols[2]})
            # each month: its base (the stored days before upto, summed once), the stored days
            # since, and the days read this pass
            con.execute("""INSERT INTO _fr
                           SELECT kix, pid, org_no, grid_no, SUM(num), SUM(den), SUM(sample),
                                  COALESCE(BOOL_OR(pending), FALSE), BOOL_OR(missing)
                           FROM (SELECT u.kix, u.pid, b.org_no, b.grid_no, b.num, b.den, b.sample,
                                        b.missing, b.pending
                                 FROM kpi_month_base b JOIN _muse u ON u.kpi_id = b.kpi_id
                                      AND u.month = b.month AND u.upto = b.upto
                                 UNION ALL
                                 SELECT m.kix, m.pid, f.org_no, f.grid_no, f.num, f.den, f.sample,
                                        f.missing, f.pending
                                 FROM kpi_day_fact f
                                 -- the days after each base chosen before the facts are met: as a
                                 -- filter on the joined rows the anti join ran over every stored
                                 -- fact of the months' days (0.07 s of a 10-day city minute)
                                 JOIN (SELECT * FROM _mmap m
                                       WHERE NOT EXISTS (SELECT 1 FROM _muse u WHERE u.kix = m.kix
                                                         AND u.pid = m.pid AND m.day < u.upto)) m
                                   ON m.kpi_id = f.kpi_id AND m.day = f.day
                                 UNION ALL
                                 SELECT d.kix, d.pid, r.org_no, r.grid_no, r.num, r.den, r.sample,
                                        r.missing, r.pending
                                 FROM _fr r JOIN _mread d ON d.kix = r.kix AND d.day_pid = r.pid)
                           GROUP BY kix, pid, org_no, grid_no""")
            con.execute("""INSERT INTO _present
                           SELECT DISTINCT m.kix, m.pid
                           FROM kpi_day d JOIN _mmap m ON m.kpi_id = d.kpi_id AND m.day = d.day
                           WHERE d.present
                           UNION
                           SELECT d.kix, d.pid FROM _present p
                           JOIN _mread d ON d.kix = p.kix AND d.day_pid = p.pid""")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _write_days(con: duckdb.DuckDBPyConnection) -> None:
    """Store the days of _dmap: their header rows anew, and of their (org, grid) rows (only for
    days kept, settled, or held: kpis/carry.py) those that differ from the stored ones. Rows
    are compared summed per (org, grid): a stored key may be split in several rows (reduced
    facts), whose sums are what a month reads. A day neither kept nor held loses its rows.

    A day whose rows are those stored is skipped before any row is compared: the header keeps
    a digest of its stored rows (their count and the sum of their hashes; NULL: unknown, from
    before session 22), and the new rows' digest equal to it leaves the day as it is. A real
    minute re-reads 6-9 past days of ~30 KPIs (their dirty dates) and almost every such day
    comes out as stored: comparing its ~250 k rows row by row was 0.2 s of a city minute."""
    def sums(a: str) -> str:
        return (f"SUM({a}.num) AS num, SUM({a}.den) AS den, SUM({a}.sample) AS sample, "
                f"BOOL_OR({a}.missing) AS missing, BOOL_OR({a}.pending) AS pending")

    # a day's facts come from one statement that reduced them per (org, grid) (kpis/batch.py
    # _fr_sql): taken as they are, not grouped again (0.08 s of a city minute's 250 k rows)
    con.execute("""CREATE OR REPLACE TEMP TABLE _dnew AS
                   SELECT m.kpi_id, m.day, r.org_no, r.grid_no, r.num, r.den, r.sample, r.missing,
                          r.pending
                   FROM _fr r JOIN _dmap m ON m.kix = r.kix AND m.pid = r.pid
                   WHERE m.keep OR m.hold""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _ddig AS
                    SELECT m.kpi_id, m.day, COALESCE(n.digest, '{_EMPTY_DIGEST}') AS digest
                    FROM (SELECT DISTINCT kpi_id, day FROM _dmap) m
                    LEFT JOIN (SELECT kpi_id, day, {_DIGEST} AS digest FROM _dnew
                               GROUP BY kpi_id, day) n ON n.kpi_id = m.kpi_id AND n.day = m.day""")
    con.execute("""CREATE OR REPLACE TEMP TABLE _dredo AS
                   SELECT g.kpi_id, g.day FROM _ddig g
                   WHERE NOT EXISTS (SELECT 1 FROM kpi_day t WHERE t.kpi_id = g.kpi_id
                                     AND t.day = g.day AND t.facts_digest = g.digest)""")
    con.execute("DELETE FROM kpi_day t USING _dmap m WHERE t.kpi_id = m.kpi_id AND t.day = m.day")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _dchg AS
                    WITH old AS (SELECT f.kpi_id, f.day, f.org_no, f.grid_no, {sums('f')}
                                 FROM kpi_day_fact f SEMI JOIN _dredo m
                                      ON m.kpi_id = f.kpi_id AND m.day = f.day
                                 GROUP BY f.kpi_id, f.day, f.org_no, f.grid_no),
                         new AS (SELECT n.kpi_id, n.day, n.org_no, n.grid_no, {sums('n')}
                                 FROM _dnew n SEMI JOIN _dredo m
                                      ON m.kpi_id = n.kpi_id AND m.day = n.day
                                 GROUP BY n.kpi_id, n.day, n.org_no, n.grid_no)
                    SELECT kpi_id, day, org_no, grid_no FROM (SELECT * FROM new EXCEPT SELECT * FROM old)
                    UNION
                    SELECT kpi_id, day, org_no, grid_no FROM (SELECT * FROM old EXCEPT SELECT * FROM new)""")
    same = ("t.kpi_id = c.kpi_id AND t.day = c.day AND t.org_no IS NOT DISTINCT FROM c.org_no "
            "AND t.grid_no IS NOT DISTINCT FROM c.grid_no")
    con.execute(f"DELETE FROM kpi_day_fact t USING _dchg c WHERE {same}")
    con.execute(f"INSERT INTO kpi_day_fact SELECT t.* FROM _dnew t SEMI JOIN _dchg c ON {same}")


# The digest of a day's stored rows (kpi_day.facts_digest): their count and the sum of their
# hashes (a sum, not an XOR: two equal rows of one key would cancel out in an XOR); a day
# without rows has _EMPTY_DIGEST.
_DIGEST = ("CAST(COUNT(*) AS VARCHAR) || ':' || CAST(SUM(hash(org_no, grid_no, num, den, sample, "
           "missing, pending)) AS VARCHAR)")
_EMPTY_DIGEST = "0"


def _drop_bases(con: duckdb.DuckDBPyConnection, keys: str) -> None:
    """Delete the month bases of the (kpi_id, month) pairs in the temp table `keys`."""
    for table in ("kpi_month_base_head", "kpi_month_base"):
        con.execute(f"DELETE FROM {table} t USING {keys} g "
                    "WHERE t.kpi_id = g.kpi_id AND t.month = g.month")


def _month_days(con: duckdb.DuckDBPyConnection, jobs: Sequence[Job], pid_of: dict[Period, int],
                month_ws: dict[Period, date]
                ) -> tuple[list[tuple[int, int, str, date]], list[tuple[int, int, int]]]:
    """What each month sums: the stored days (kix, month pid, KPI id, day), the days read this
    pass (kix, month pid, day pid), and the month bases (_muse: kix, pid, kpi_id, month, upto;
    stored days before upto come from the base).

    A month to date re-summed every stored day each minute: ~35 k rows a day at city, ~1 M at
    the end of a month. Its days before the first one this pass reads (today, or a restated
    day) change only when written, which deletes their base (above), so a base summed once
    serves every pass of the day. A base older than BASE_LAG_DAYS before that day is rebuilt."""
    out, read, use, build = [], [], [], []
    heads: dict[tuple[str, date], date] = {}
    ids = sorted({j.k.id for j in jobs if j.months})
    if ids:
        heads = {(kid, m): upto for kid, m, upto in con.execute(
            "SELECT kpi_id, month, upto FROM kpi_month_base_head WHERE kpi_id IN (SELECT unnest($ids))",
            {"ids": ids}).fetchall()}
    for j in jobs:
        this_pass = set(j.store_days)
        for m, ds in j.months.items():
            days = [d.ws.date() for d in ds]
            out.extend((j.kix, pid_of[m], j.k.id, d.ws.date()) for d in ds if d not in this_pass)
            read.extend((j.kix, pid_of[m], pid_of[d]) for d in ds if d in this_pass)
            if not days:
                continue
            upto = min([d.ws.date() for d in ds if d in this_pass] or [max(days) + timedelta(days=1)])
            have = heads.get((j.k.id, month_ws[m]))
            if have is not None and have <= upto and (upto - have).days <= BASE_LAG_DAYS:
                use.append((j.kix, pid_of[m], j.k.id, month_ws[m], have))
            elif (upto - month_ws[m]).days > 1:
                build.append((j.k.id, month_ws[m], upto))
                heads[(j.k.id, month_ws[m])] = upto
                use.append((j.kix, pid_of[m], j.k.id, month_ws[m], upto))
    con.execute("CREATE OR REPLACE TEMP TABLE _mbuild (kpi_id VARCHAR, month DATE, upto DATE)")
    if build:
        cols = list(zip(*sorted(set(build))))
        con.execute("INSERT INTO _mbuild SELECT unnest($k), unnest($m), unnest($u)",
                    {"k": cols[0], "m": cols[1], "u": cols[2]})
        _drop_bases(con, "_mbuild")
        con.execute("INSERT INTO kpi_month_base_head SELECT * FROM _mbuild")
        con.execute("""INSERT INTO kpi_month_base
                       SELECT b.kpi_id, b.month, b.upto, f.org_no, f.grid_no, SUM(f.num), SUM(f.den),
                              SUM(f.sample), BOOL_OR(f.missing), BOOL_OR(f.pending)
                       FROM kpi_day_fact f JOIN _mbuild b ON b.kpi_id = f.kpi_id
                            AND f.day >= b.month AND f.day < b.upto
                       GROUP BY b.kpi_id, b.month, b.upto, f.org_no, f.grid_no""")
    con.execute("CREATE OR REPLACE TEMP TABLE _muse (kix INTEGER, pid INTEGER, kpi_id VARCHAR, "
                "month DATE, upto DATE)")
    if use:
        cols = list(zip(*use))
        con.execute("INSERT INTO _muse SELECT unnest($x), unnest($p), unnest($k), unnest($m), unnest($u)",
                    {"x": cols[0], "p": cols[1], "k": cols[2], "m": cols[3], "u": cols[4]})
    return out, read


def prune(con: duckdb.DuckDBPyConnection, before: date) -> None:
    """Drop stored days before `before`: months that old are rebuilt only when restated, and
    then read their absent days again."""
    for table in ("kpi_day", "kpi_day_fact"):
        con.execute(f"DELETE FROM {table} WHERE day < $d", {"d": before})
    for table in ("kpi_month_base_head", "kpi_month_base"):
        con.execute(f"DELETE FROM {table} WHERE month < $d", {"d": before})


def forget(con: duckdb.DuckDBPyConnection, kpi_ids: Iterable[str]) -> None:
    """Drop every stored day of these KPIs (their pass failed: the dirty days it was to store
    will not be marked again, so the next month build must read them)."""
    ids = sorted(set(kpi_ids))
    if ids:
        for table in ("kpi_day", "kpi_day_fact", "kpi_month_base_head", "kpi_month_base"):
            con.execute(f"DELETE FROM {table} WHERE kpi_id IN (SELECT unnest($ids))", {"ids": ids})
