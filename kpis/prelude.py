"""Applies the shared KPI definitions (kpis/sql/prelude.sql) to a warehouse connection."""
from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

import duckdb

from kpis import changes

_CREATE = re.compile(r"^CREATE OR REPLACE (TEMP )?(TABLE|VIEW) (\w+)")

PRELUDE_PATH = Path(__file__).resolve().parent / "sql" / "prelude.sql"

# Prelude tables that only some KPIs read and whose build scans a large source table (work
# orders, repair tasks, metering points, bills): an evaluation builds them only when a KPI of
# its plan reads them (kpis.dependencies.prelude_objects), so a pass without such a KPI does
# not pay.
ON_DEMAND = frozenset({"k_settle_tg", "k_settle_mp", "k_bill", "k_payment", "k_rc_event", "k_wo",
                       "k_task", "k_cust_grp", "k_cust_stock_grp", "k_cust_check",
                       "k_cust_area_grp", "k_tg_cust_grp", "k_settle_grp", "k_unit_book_ev",
                       "k_unit_book_n", "k_cust_check_grp", "k_clock_off", "k_cust_sensitive",
                       "k_cust_important"})


@dataclass(frozen=True)
class Reverse:
    """A table whose rows point at base rows, over one key or several (mis_meter -> point,
    collection object -> meter -> point): `to_base` selects the base_to_key values the rows of
    `table` with the keys of `{keys}` (a subquery) reach, through the tables' current rows.
    Exact while none of `moved_by` changed: they are the columns on the way up from a row of
    `table` to the base that are not keys of the tables on it, and a row whose `moved_by` changed
    leaves the base rows it reached before stale (then the kept table is rebuilt whole). New rows
    reach their base rows like any other."""
    table: str
    key: str
    to_base: str
    moved_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Follow:
    """How a kept on-demand table follows its inputs between the worker's passes.

    The rows of key value x are derived from the rows of `base` whose `base_to_key` is x (k_wo:
    the work order x; k_settle_tg: the metering points of customer x), joined to `links`. So
    after an ETL pass, x is re-derived when a row of base with that value changed, when the base
    row recorded in the kept row (`kept_base_key`) changed (a point moved to another customer),
    or when a linked row changed that a base row of x points at (a customer's grid -> its work
    orders' attr_grid). A change of a `whole` table (the org tree) rebuilds the table."""
    key: str
    base: str
    base_key: str
    base_to_key: str
    kept_base_key: str
    links: tuple[tuple[str, str, str], ...] = ()    # (table, its key, column of base naming it)
    whole: frozenset[str] = frozenset()
    reverse: tuple[Reverse, ...] = ()
    # (table, condition): in a refresh, `table` is read narrowed to the rows the condition
    # keeps, in order, a condition naming the narrowed base and the tables narrowed before it:
    # the rows the re-derived keys' rows can join (their meters, those meters' collection
    # objects), so that the refresh does not join whole tables for a hundred keys
    narrow: tuple[tuple[str, str], ...] = ()
    # one kept row per base row (the joins on keys keep them): a count that differs after a
    # refresh means a key vanished or a join key duplicated, and the table is rebuilt whole;
    # False for a table that filters its base rows
    row_per_base: bool = True

    def tables(self) -> frozenset[str]:
        return frozenset({self.base, *self.whole, *(t for t, _, _ in self.links),
                          *(r.table for r in self.reverse)})


FOLLOW = {
    "k_wo": Follow("wo_no", "cs_work_order", "wo_no", "wo_no", "wo_no",
                   links=(("mis_customer", "cons_no", "cons_no"), ("dist_tg", "tg_no", "tg_no")),
                   whole=frozenset({"mis_org", "mis_grid"})),
    "k_task": Follow("task_id", "dist_repair_task", "task_id", "task_id", "task_id",
                     links=(("cs_work_order", "wo_no", "wo_no"), ("dist_tg", "tg_no", "tg_no"))),
    "k_settle_tg": Follow("cons_no", "mis_metering_point", "mp_no", "cons_no", "mp_no"),
    # a point's running meters, their collection objects and terminals reach it over two keys
    # (terminal -> collection object -> meter -> point); the terminals' heartbeat
    # (last_online_time, every terminal each minute) is a column it does not read. Rebuilt whole
    # (GATED) it was ~3 s of each city minute in which a row it reads was added or changed: one
    # in four, a terminal new to the warehouse coming among the heartbeats.
    "k_settle_mp": Follow(
        "mp_no", "mis_metering_point", "mp_no", "mp_no", "mp_no",
        links=(("mis_customer", "cons_no", "cons_no"),),
        reverse=(Reverse("mis_meter", "meter_asset_no",
                         "SELECT mp_no FROM mis_meter WHERE meter_asset_no IN ({keys})", ("mp_no",)),
                 # a collection object's key is its meter's
                 Reverse("meter_coll_obj", "meter_asset_no",
                         "SELECT mp_no FROM mis_meter WHERE meter_asset_no IN ({keys})"),
                 Reverse("meter_terminal", "terminal_id",
                         "SELECT mp_no FROM mis_meter WHERE meter_asset_no IN (SELECT meter_asset_no "
                         "FROM meter_coll_obj WHERE terminal_id IN ({keys}))")),
        # the whole build joins 3.5 M collection objects to their terminals before it meets the
        # points: 0.7-0.9 s of a refresh of ~100 points at city
        narrow=(("mis_meter", "mp_no IN (SELECT mp_no FROM mis_metering_point)"),
                ("meter_coll_obj", "meter_asset_no IN (SELECT meter_asset_no FROM mis_meter)"),
                ("mis_customer", "cons_no IN (SELECT cons_no FROM mis_metering_point)")),
        row_per_base=False),
    "k_bill": Follow("bill_id", "mis_bill", "bill_id", "bill_id", "bill_id",
                     links=(("mis_customer", "cons_no", "cons_no"),)),
    "k_payment": Follow("charge_id", "mis_payment", "charge_id", "charge_id", "charge_id",
                        links=(("mis_customer", "cons_no", "cons_no"),)),
    "k_rc_event": Follow("rc_id", "mis_rc_event", "rc_id", "rc_id", "rc_id",
                         links=(("mis_customer", "cons_no", "cons_no"),)),
    # one row per customer (not deleted), its inputs beside the customer (codes, the org tree,
    # settlement points and their 台区) reaching it over other keys: a change of theirs rebuilds
    # it; a changed customer is re-derived alone (rebuilt whole for ten closures a city minute:
    # 1.05 s, session 30)
    "k_cust_check": Follow("cons_no", "mis_customer", "cons_no", "cons_no", "cons_no",
                           whole=frozenset({"mis_code", "mis_org", "mis_grid", "mis_metering_point",
                                            "dist_tg"}),
                           row_per_base=False),
    # the customers flagged service-sensitive: a changed customer is re-derived alone
    "k_cust_sensitive": Follow("cons_no", "mis_customer", "cons_no", "cons_no", "cons_no",
                               row_per_base=False),
    # the customers flagged important or sensitive: a changed customer is re-derived alone
    "k_cust_important": Follow("cons_no", "mis_customer", "cons_no", "cons_no", "cons_no",
                               row_per_base=False),
}

# The primary key of each table the kept tables follow (what etl_keys records of it).
_KEYS = {t: k for f in FOLLOW.values()
         for t, k in ((f.base, f.base_key), *((t, k) for t, k, _ in f.links),
                      *((r.table, r.key) for r in f.reverse))}

# On-demand tables kept between passes but not re-derived per key (no FOLLOW): rebuilt whole by
# a pass that needs them when a column they read changed since their build (kpis/changes.py),
# and why. tests/kpis/test_dependencies.py wants every ON_DEMAND table in FOLLOW or GATED.
GATED = {
    # counts, not rows: a changed customer moves a count from one group to another, and its floor
    # day moves with the newest build date; FOLLOW re-derives rows by a key. Grouping the 3.5 M
    # customers was ~0.1 s of every city minute that read cust_counts; a changed customer now
    # reaches the groups by difference from its row images (OVER_IMAGED)
    "k_cust_grp": "an aggregate: a changed customer moves a count between groups",
    # the same for the archive stocks' counts (k_cust_groups read ~0.6 s of each city sweep)
    "k_cust_stock_grp": "an aggregate: a changed customer moves its counts between groups",
    # the same, counted by the reliability area of the customer's 台区 (rs1_urban, rs1_rural)
    "k_cust_area_grp": "an aggregate over customers and their settlement 台区",
    # customers counted per settlement 台区 (NTG of 19 reliability KPIs)
    "k_tg_cust_grp": "an aggregate over customers and their settlement 台区",
    # the point stocks' counts of k_settle_mp (itself GATED), grouped at the floor day
    "k_settle_grp": "an aggregate of k_settle_mp",
    # the customers on the books per province / city unit and day (N(x) of the MED KPIs): the
    # book events per unit and day follow a changed customer by difference (OVER_IMAGED); their
    # running sum, which any changed customer moves from its day on, is rebuilt over them
    "k_unit_book_ev": "an aggregate: a changed customer moves its book events between days",
    "k_unit_book_n": "a running sum: a changed customer moves every later day's count",
    # archive completeness counted per customer group at the floor day (of k_cust_check, which
    # FOLLOW re-derives per customer: OVER_KEPT)
    "k_cust_check_grp": "an aggregate of k_cust_check",
}


@dataclass(frozen=True)
class OverKept:
    """A GATED table that groups a FOLLOW table (`kept`) by `keys` into the sums `sums` (the first
    counts the group's rows), every row stamped with `stamp`, the value of `stamp_sql` in its
    statement (the floor day its dates are clamped at), which depends only on the columns the
    table reads beside `kept`."""
    kept: str
    keys: tuple[str, ...]
    sums: tuple[str, ...]
    stamp: str | None = None        # None: no stamp (k_unit_book_ev clamps no date)
    stamp_sql: str | None = None
    # the contract table the statement reads only through stamp_sql, or None: what it changed
    # reaches the groups only if the stamp moved, which _stamp_kept judges (a customer closed at
    # city changed status_code and cancel_date, words k_settle_grp writes of k_settle_mp's
    # rows, and the 185 k point groups were rebuilt, 0.21 s, although no point count moved)
    stamp_table: str | None = None

    def __post_init__(self) -> None:
        # _stamp_kept knows one stamp: the customers' floor day
        assert self.stamp_table in (None, "mis_customer") and (
            self.stamp_table is None or self.stamp_sql == "cust_floor_day()"), self


# GATED tables that aggregate a FOLLOW table: rebuilt when a column they read beside it changed,
# not on every change of the kept table's inputs (a terminal added among a city minute's
# heartbeats re-derives no point of k_settle_mp, and the 3.5 M points were grouped again, ~1 s,
# because meter_terminal had a new row). When the kept table's rows changed (its refresh
# compares the rows it re-derived with those it replaced), the groups are brought up to date by
# difference: the statement run over the rows re-derived, minus over the rows they replaced
# (_over_delta; a whole build 0.59 s of a city minute at 00:08), or rebuilt whole when that
# refresh's rows are not at hand (another pass changed them, a whole rebuild).
OVER_KEPT = {"k_settle_grp": OverKept(
    "k_settle_mp", keys=("org_no", "grid_no", "status_code", "bd", "cancel_date", "floor_day"),
    sums=("n", "n_smart", "n_run_meter", "n_run_meter_covered", "n_lv_related", "lv_rel_n",
          "lv_rel_same"),
    stamp="floor_day", stamp_sql="cust_floor_day()", stamp_table="mis_customer"),
    "k_cust_check_grp": OverKept(
        "k_cust_check", keys=("org_no", "grid_no", "status_code", "bd", "cancel_date", "floor_day"),
        sums=("n", "num"), stamp="floor_day", stamp_sql="cust_floor_day()", stamp_table="mis_customer")}

# GATED tables that aggregate the customers themselves: brought up to date by difference from
# the ETL's row images of the customers that the runs since their build changed (the statement
# over each changed customer's version after the runs, minus over its version before them),
# when no other table they read changed, every batch of those runs kept its images and the
# floor day did not move; else rebuilt whole. A real archive changes every working minute
# (closures, new connections, contacts): at city ten customers closed in a minute rebuilt these
# and the other customer tables, 2.09 -> 6.45 s a minute (bench_kpis.py --churn 10, session 30).
_FLOOR_GROUP = ("org_no", "grid_no", "status_code", "bd", "cancel_date", "floor_day")
OVER_IMAGED = {
    "k_cust_grp": OverKept("mis_customer", keys=_FLOOR_GROUP, sums=("n",), stamp="floor_day",
                           stamp_sql="cust_floor_day()", stamp_table="mis_customer"),
    "k_cust_stock_grp": OverKept(
        "mis_customer", keys=_FLOOR_GROUP,
        sums=("n", "n_residential", "n_general_ci", "n_large_industry", "n_agriculture",
              "n_other_class", "n_hv", "cap_mva", "n_cap_ge_315", "n_important",
              "n_important_compliant", "n_important_emergency", "n_low_voltage", "n_lv_echannel",
              "n_lv_smart_payment", "n_dg", "n_valid_mobile", "n_ebill"),
        stamp="floor_day", stamp_sql="cust_floor_day()", stamp_table="mis_customer"),
    "k_cust_area_grp": OverKept(
        "mis_customer", keys=("org_no", "grid_no", "status_code", "rel_area_code", "bd", "cancel_date",
                              "floor_day"),
        sums=("n",), stamp="floor_day", stamp_sql="cust_floor_day()", stamp_table="mis_customer"),
    "k_tg_cust_grp": OverKept(
        "mis_customer", keys=("tg_no", "status_code", "bd", "cancel_date", "floor_day"), sums=("n",),
        stamp="floor_day", stamp_sql="cust_floor_day()", stamp_table="mis_customer"),
    "k_unit_book_ev": OverKept("mis_customer", keys=("unit_no", "d"), sums=("n_ev", "delta")),
}


@dataclass(frozen=True)
class Marked:
    """A kept table of the rows of `base` that pass `keep`, of every `key` value that has such a
    row passing `mark` too: a few keys' rows out of a large table. Followed by the base rows an ETL
    pass merged (updated_at from the runs' window low, SLACK wide): a changed row of a kept key
    replaces its kept version, a key whose last marked row went is dropped, and a key newly
    marked brings all its rows (a scan of the base, rare). Its statement in prelude.sql is
    `statement()`, written out (tests/kpis/test_dependencies.py holds them equal)."""
    base: str
    key: str
    row_key: tuple[str, ...]        # the base's primary key
    columns: tuple[str, ...]
    keep: str
    mark: str
    # its readers read a kept row only when `date` is within [D - lookback_days, D] of a period's
    # last day D: a one-period reader (a detail page) may build it from those days alone
    date: str
    lookback_days: int

    def __post_init__(self) -> None:
        # the refresh matches kept rows by row_key and keys by key, read from the kept columns
        assert {self.key, *self.row_key} <= set(self.columns), self

    def statement(self, name: str) -> str:
        return (f"CREATE OR REPLACE TABLE {name} AS\nSELECT {', '.join(self.columns)}\n"
                f"FROM {self.base}\nWHERE {self.keep}\n  AND {self.key} IN (SELECT {self.key} "
                f"FROM {self.base}\n{' ' * 25}WHERE {self.keep} AND {self.mark})")

    def for_days(self, name: str) -> str:
        """A TEMP table of the same rows with the base narrowed to `date` in [$lo, $hi]: exact for
        a reader whose periods' last days D all have [D - lookback_days, D] inside it (a key
        marked only outside cannot end on a marked row inside; a key marked inside brings all
        its rows inside)."""
        body = self.statement(name).split(" AS\n", 1)[1]
        # NOT MATERIALIZED: read twice, the CTE was materialized with every column of the days
        return (f"CREATE OR REPLACE TEMP TABLE {name} AS WITH {self.base} AS NOT MATERIALIZED ("
                f"SELECT * FROM main.{self.base} WHERE {self.date} BETWEEN $lo AND $hi) {body}")


MARKED = {
    # a meter's clock drifts out of tolerance seldom, and stays out until set; ~4 in 1,000 meters
    "k_clock_off": Marked("meter_collection_daily", "meter_asset_no", ("meter_asset_no", "data_date"),
                          ("meter_asset_no", "data_date", "clock_dev_s", "org_no", "tg_no"),
                          "is_deleted = 0 AND clock_dev_s IS NOT NULL",
                          "ABS(clock_dev_s) > 300", "data_date", 6),
}


# Rows an ETL pass merges carry updated_at > its window's low. SQLite sources filter the window
# on text: a same-day stamp written another way ('T' separator, a zone offset) can pass the text
# filter with an earlier typed value, so changed rows are looked for from a day before the low.
SLACK = timedelta(days=1)
# Above this many keys to re-derive, a kept table is rebuilt whole: the refresh reads the base
# by an IN list of them and deletes them from the kept table, slower than a rebuild by then.
AFFECTED_MAX = 200_000
STATE_DDL = ("CREATE TABLE IF NOT EXISTS kpi_prelude_state (name VARCHAR, sql_hash VARCHAR, "
             "run_id BIGINT, built_at TIMESTAMP)")
STATE_CHANGED_DDL = "ALTER TABLE kpi_prelude_state ADD COLUMN IF NOT EXISTS changed_run BIGINT"
# etl_changed's markers (etl/load.py TRACKED, ANY): columns compared; a row added (or, in a run
# without recorded keys, the versions not compared)
TRACKED, ADDED = "", "*"
# Part of every hash: a change of how kept rows are maintained rebuilds them.
FORMAT = "kept 1"


def statements() -> list[str]:
    text = "\n".join(line for line in PRELUDE_PATH.read_text(encoding="utf-8").splitlines()
                     if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def apply_prelude(con: duckdb.DuckDBPyConnection, temp: bool = False,
                  needed: Collection[str] | None = None) -> None:
    """(Re)build the org tree, calendar and shared views from the current core tables.

    temp=True creates them as TEMP objects of this connection only, which a read-only
    connection to a published snapshot may do (detail pages, exports).
    needed: the ON_DEMAND tables to rebuild (None: all). One that is not needed keeps its
    current rows (only KPIs that need it read it, and they rebuild or refresh it), or is created
    empty when missing so that every definition still binds.
    """
    existing = _existing_kinds(con, temp)
    top = None if temp else changes.top_run(con)     # before building: a run after it counts
    if top is not None and needed is not None and not needed and _unchanged(con, existing, top):
        return
    for stmt in statements():
        if temp:
            for kind in ("TABLE", "VIEW", "MACRO"):
                stmt = stmt.replace(f"CREATE OR REPLACE {kind}", f"CREATE OR REPLACE TEMP {kind}")
        m = _CREATE.match(stmt)
        on_demand = bool(m) and m.group(3) in ON_DEMAND
        if on_demand and needed is not None and m.group(3) not in needed:
            if existing.get(m.group(3)) == "TABLE":
                continue
            stmt = f"{stmt} LIMIT 0"
        if m and existing.get(m.group(3), m.group(2)) != m.group(2):
            # A shared object may change kind between releases (a view made a table).
            con.execute(f"DROP {existing[m.group(3)]} {'temp.' if temp else ''}{m.group(3)}")
        if on_demand and not temp:
            _build(con, m.group(3), stmt, full=not stmt.endswith("LIMIT 0"))
        else:
            con.execute(stmt)
    if not temp:
        _record_whole(con, top)


# The state row of the prelude as a whole (kpi_prelude_state): its statements' hash and the ETL
# run its always-built tables (the org tree, the calendar) are up to.
WHOLE = "(prelude)"


@lru_cache(maxsize=1)
def _whole_hash() -> str:
    return _hash("\n;\n".join(statements()))


@lru_cache(maxsize=1)
def _always_built() -> tuple[frozenset[str], frozenset[str]]:
    """The objects every apply creates (names) and the contract tables its tables read: the
    tables other than ON_DEMAND (k_org, k_org_ancestor, k_calendar, ...); macros and views hold
    no rows."""
    from kpis.dependencies import prelude_tables  # noqa: PLC0415  (dependencies imports this module)
    names, tables = set(), set()
    for stmt in statements():
        m = _CREATE.match(stmt)
        if m:
            names.add(m.group(3))
            if m.group(2) == "TABLE" and m.group(3) not in ON_DEMAND:
                tables |= prelude_tables(m.group(3))
    return frozenset(names), frozenset(tables)


def _unchanged(con: duckdb.DuckDBPyConnection, existing: dict[str, str], top: int) -> bool:
    """Whether the worker's apply (needed=()) would create what is there already: every object
    exists, the statements are those of the last apply, and no ETL run since changed a table its
    tables read. A city minute re-created ~30 objects (the org tree and its ancestors, the
    calendar, the macros) for ~0.04 s a pass although none of their inputs had changed. Without
    the ETL's record (a test database filled by hand) it is always applied."""
    names, tables = _always_built()
    state = _states(con).get(WHOLE)
    if state is None or state[0] != _whole_hash() or not names <= existing.keys():
        return False
    if top != state[1]:
        if changes.Changes(con, state[1], tables).last_touch({t: None for t in tables}) is not None:
            return False
        _record_whole(con, top)
    return True


def _record_whole(con: duckdb.DuckDBPyConnection, top: int | None) -> None:
    con.execute(STATE_DDL)
    con.execute("DELETE FROM kpi_prelude_state WHERE name = $n", {"n": WHOLE})
    if top is not None:
        con.execute("INSERT INTO kpi_prelude_state (name, sql_hash, run_id, built_at) VALUES ($n, $h, $r, $at)",
                    {"n": WHOLE, "h": _whole_hash(), "r": top,
                     "at": datetime.now().replace(microsecond=0)})


def _existing_kinds(con: duckdb.DuckDBPyConnection, temp: bool) -> dict[str, str]:
    """Tables and views of the prelude's schema by name, read in one catalog query: the
    evaluation runs every minute, and a catalog query per object cost 50 ms each."""
    where = "database_name = 'temp'" if temp else "database_name <> 'temp'"
    rows = con.execute(f"""SELECT table_name, 'TABLE' FROM duckdb_tables() WHERE NOT internal AND {where}
                           UNION ALL
                           SELECT view_name, 'VIEW' FROM duckdb_views() WHERE NOT internal AND {where}
                        """).fetchall()
    return {name: kind for name, kind in rows}


def refresh_on_demand(con: duckdb.DuckDBPyConnection, names: Collection[str]) -> dict[str, str]:
    """Bring the ON_DEMAND tables among `names` up to date with the core tables, re-deriving only
    the keys whose inputs an ETL pass merged since the table was built (FOLLOW, etl_run), after
    apply_prelude. Returns how each was brought up to date: 'full' (rebuilt: no build state,
    another SQL, no etl_run, an org change, a reload), 'delta' or 'unchanged'. One transaction
    per table, with its build state: a crash leaves each table and its state as they were.

    The worker's minute pass: a rebuild of k_wo wrote the whole table again every minute
    (0.15-0.57 s at county, more when it set off a checkpoint) for a few changed work orders.
    Committed table by table, not together: a table built in the same open transaction is read
    from its transaction-local storage, 2-3x slower than committed (at city k_cust_area_grp and
    k_tg_cust_grp read the just-built k_settle_tg: 1.70 and 0.96 s against 0.60 and 0.52 s)."""
    wanted = _on_demand_statements(names)
    if not wanted:
        return {}
    top = _top_run(con)
    states = _states(con) if top is not None else {}
    out = {}
    # a FOLLOW table watched by an OVER_KEPT one -> the run its refresh of this pass started
    # from, its rows before and after kept in _kd_before_<name> / _kd_new_<name>
    deltas: dict[str, int] = {}
    # the customers' row images an OVER_IMAGED table took, by (kept, since, top): the next one
    # of the same runs reads them again rather than taking them again (five tables, 14 ms each)
    versions: dict[tuple[str, int, int], bool] = {}
    for name, stmt in wanted:
        state = states.get(name)
        con.execute("BEGIN TRANSACTION")
        try:
            if name in GATED:
                out[name] = _gated(con, name, stmt, state, deltas, versions)
            elif name in MARKED:
                out[name] = _marked(con, name, stmt, state, top)
            elif top is None or state is None or state[0] != _hash(stmt) or not _follows(name, stmt):
                out[name] = _full(con, name, stmt, top)
            else:
                out[name] = _refresh(con, name, stmt, state[1], top, deltas)
            con.execute("COMMIT")
        except duckdb.CatalogException:
            # the table dropped behind its state (apply_prelude, run first, recreates it)
            con.execute("ROLLBACK")
            versions.clear()        # temp tables made in the transaction went with it
            _build(con, name, stmt, full=True)
            out[name] = "full"
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return out


def _on_demand_statements(names: Collection[str]) -> list[tuple[str, str]]:
    return [(m.group(3), stmt) for stmt in statements()
            if (m := _CREATE.match(stmt)) and m.group(3) in ON_DEMAND and m.group(3) in names]


def _hash(stmt: str) -> str:
    return hashlib.sha256(f"{FORMAT}\n\x00{stmt}".encode()).hexdigest()[:24]


@lru_cache(maxsize=8)
def _follows(name: str, stmt: str) -> bool:
    """The statement reads exactly the tables its FOLLOW names, and its base once (the base is
    narrowed by a CTE of the same name): else it is rebuilt whole every pass, as before."""
    from kpis.dependencies import prelude_tables  # noqa: PLC0415  (dependencies imports this module)
    f = FOLLOW.get(name)
    return (f is not None and prelude_tables(name) == f.tables()
            and len(re.findall(rf"\b{f.base}\b", stmt)) == 1)


def _top_run(con: duckdb.DuckDBPyConnection) -> int | None:
    """The newest ETL run whose merges the core tables hold (None: no ETL bookkeeping, e.g. a
    test database; then nothing is kept)."""
    try:
        return con.execute("SELECT COALESCE(MAX(run_id), 0) FROM etl_run").fetchone()[0]
    except duckdb.CatalogException:
        return None


def _states(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, int]]:
    try:
        rows = con.execute("SELECT name, sql_hash, run_id, changed_run FROM kpi_prelude_state").fetchall()
    except duckdb.CatalogException:
        return {}
    except duckdb.BinderException:     # a state table from before changed_run
        rows = [(*r, None) for r in con.execute("SELECT name, sql_hash, run_id FROM kpi_prelude_state").fetchall()]
    return {name: (h, run, changed) for name, h, run, changed in rows}


def _record(con: duckdb.DuckDBPyConnection, name: str, stmt: str | None, top: int | None,
            same: bool = False) -> None:
    """The build state of a kept table: its SQL, the ETL run its rows are up to (no row: not
    kept, the next refresh rebuilds it) and the run at which its rows last changed (same: they
    did not change now; that run stays, or is unknown without one)."""
    con.execute(STATE_DDL)
    con.execute(STATE_CHANGED_DDL)
    before = con.execute("SELECT changed_run FROM kpi_prelude_state WHERE name = $n",
                         {"n": name}).fetchone() if same else None
    con.execute("DELETE FROM kpi_prelude_state WHERE name = $n", {"n": name})
    if stmt is not None and top is not None:
        con.execute("INSERT INTO kpi_prelude_state (name, sql_hash, run_id, built_at, changed_run) "
                    "VALUES ($n, $h, $r, $at, $c)",
                    {"n": name, "h": _hash(stmt), "r": top, "at": datetime.now().replace(microsecond=0),
                     "c": (before[0] if before else None) if same else top})


def _build(con: duckdb.DuckDBPyConnection, name: str, stmt: str, full: bool) -> None:
    """Build an on-demand table whole (or empty) and record what it holds, in one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        if full:
            _full(con, name, stmt, _top_run(con))
        else:
            con.execute(stmt)
            _record(con, name, None, None)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _full(con: duckdb.DuckDBPyConnection, name: str, stmt: str, top: int | None) -> str:
    """Build the table whole and record it (the caller's transaction).

    Written uncompressed: a whole build happens at the worker's start and after a reload, and
    at city most of it was compressing 2.4-3.5 M rows of text into the warehouse file
    (k_settle_tg 5.0-5.5 s -> 2.8-3.0 s, k_bill 6.3-6.5 s -> 4.1-4.3 s, reads alike; the two take
    460 MB of the file instead of 94 MB). Rows a later refresh inserts are compressed as usual.
    force_compression is a setting of the database, not of the statement: reset right after."""
    con.execute("SET force_compression = 'uncompressed'")
    try:
        con.execute(stmt)
    finally:
        con.execute("RESET force_compression")
    _record(con, name, stmt, top)
    return "full"


def _gated(con: duckdb.DuckDBPyConnection, name: str, stmt: str,
           state: tuple[str, int] | None, deltas: Mapping[str, int] | None = None,
           versions: dict[tuple[str, int, int], bool] | None = None) -> str:
    """A GATED table: rebuilt whole when no build state is known for this SQL, or when an ETL run
    after its build changed a column it reads; else kept (the caller's transaction). Its state
    counts runs as kpis/changes.py does (etl_run and etl_dirty). An OVER_KEPT table whose kept
    table's rows changed is brought up to date by difference when this pass's refresh of it
    started from this table's run (`deltas`), else rebuilt."""
    from kpis.dependencies import prelude_columns  # noqa: PLC0415  (dependencies imports this module)
    top = changes.top_run(con)
    if top is None or state is None or state[0] != _hash(stmt):
        return _full(con, name, stmt, top)
    if top != state[1] and name in OVER_IMAGED:
        how = _over_images(con, name, stmt, OVER_IMAGED[name], state[1], top,
                           {} if versions is None else versions)
        if how is None:
            return _full(con, name, stmt, top)
        _record(con, name, stmt, top, same=how == "unchanged")
        return how
    if top != state[1]:
        over_kept = OVER_KEPT.get(name)
        over = _states(con).get(over_kept.kept) if over_kept else None
        if over is not None and over[1] == _top_run(con) and over[2] is not None:
            # the kept table it reads is up to date: its rows changed after this table's build
            # reach it by difference; a column read beside it changed rebuilds it
            reads = prelude_columns(name, beside=over_kept.kept)
            reads = {t: c for t, c in reads.items() if t != over_kept.stamp_table}
            if changes.Changes(con, state[1], reads).last_touch(reads) is not None or not _stamp_kept(
                    con, name, over_kept, state[1], top):
                return _full(con, name, stmt, top)
            if over[2] > state[1]:
                if (deltas or {}).get(over_kept.kept) != state[1] or not _over_delta(
                        con, name, stmt, over_kept):
                    return _full(con, name, stmt, top)
                _record(con, name, stmt, top)
                return "delta"
            _record(con, name, stmt, top, same=True)
            return "unchanged"
        reads = prelude_columns(name)
        if changes.Changes(con, state[1], reads).last_touch(reads) is not None:
            return _full(con, name, stmt, top)
        _record(con, name, stmt, top, same=True)
    return "unchanged"


def _over_images(con: duckdb.DuckDBPyConnection, name: str, stmt: str, o: OverKept, since: int,
                 top: int, taken: dict[tuple[str, int, int], bool]) -> str | None:
    """An OVER_IMAGED table after the runs in (since, top]: 'unchanged' when none changed a
    column it reads, 'delta' when only o.kept did and the groups were brought up to date by
    difference from its row images (_over_delta), None when it must be rebuilt whole."""
    from kpis import images  # noqa: PLC0415  (images reads etl tables only; kept out of import time)
    from kpis.dependencies import prelude_columns  # noqa: PLC0415  (dependencies imports this module)
    reads = prelude_columns(name)
    beside = {t: c for t, c in reads.items() if t != o.kept}
    if changes.Changes(con, since, beside).last_touch(beside) is not None:
        return None
    own = {o.kept: reads.get(o.kept)}
    if changes.Changes(con, since, own).last_touch(own) is None:
        return "unchanged"
    if (o.kept, since, top) not in taken:   # `taken`: the versions this refresh already took
        taken[o.kept, since, top] = images.versions(con, o.kept, since, top, f"_kd_new_{o.kept}",
                                                    f"_kd_before_{o.kept}")
    if not taken[o.kept, since, top] or (
            con.execute(f"SELECT COUNT(*) FROM _kd_new_{o.kept}").fetchone()[0] > AFFECTED_MAX):
        return None
    versions = (f"_kd_new_{o.kept}", f"_kd_before_{o.kept}")    # the stamp's table's too
    if not _stamp_kept(con, name, o, since, top, versions) or not _over_delta(con, name, stmt, o):
        return None
    return "delta"


def _stamp_kept(con: duckdb.DuckDBPyConnection, name: str, o: OverKept, since: int, top: int,
                versions: tuple[str, str] | None = None) -> bool:
    """Whether the groups' one stamp is still what o.stamp_sql gives after the runs in
    (since, top]. cust_floor_day() is the first day of the month 13 months before the customers'
    newest build month: it can move only when a changed customer's version, before or after the
    runs, has its build date in that month or later (from the row images; without them, or for
    such a customer, the floor is computed: a scan of the customers, ~0.15 s at city).
    `versions`: the temp tables (after, before) already holding the stamp table's versions."""
    from kpis import images  # noqa: PLC0415
    if o.stamp_table is None:
        return True
    stamp, stamps = con.execute(f"SELECT MIN({o.stamp}), COUNT(DISTINCT {o.stamp}) FROM {name}").fetchone()
    if stamps != 1:
        return False
    table = {o.stamp_table: None}
    if versions is None:
        if changes.Changes(con, since, table).last_touch(table) is None:
            return True
        versions = ("_st_after", "_st_before")
        if not images.versions(con, o.stamp_table, since, top, *versions):
            versions = None
    if versions is not None and not con.execute(
            f"""SELECT EXISTS (SELECT 1 FROM (SELECT is_deleted, build_date, created_at FROM {versions[0]}
                                              UNION ALL
                                              SELECT is_deleted, build_date, created_at FROM {versions[1]}) c
                              WHERE c.is_deleted = 0 AND COALESCE(c.build_date, CAST(c.created_at AS DATE))
                                                         >= CAST($f AS DATE) + INTERVAL 13 MONTH)""",
            {"f": stamp}).fetchone()[0]:
        return True
    return bool(con.execute(f"SELECT {o.stamp_sql} = $f", {"f": stamp}).fetchone()[0])


def _over_delta(con: duckdb.DuckDBPyConnection, name: str, stmt: str, o: OverKept) -> bool:
    """Replace the groups of OVER_KEPT table `name` by their sums plus the statement over the
    kept table's re-derived rows minus the statement over the rows they replaced (exact: integer
    sums of the same rows). The caller checked that no column read beside the kept table changed
    since the groups were built, so their stamp is the statement's now: the statement reads it
    from them (cust_floor_day() scans the 3.5 M customers, ~0.15 s at city, twice). False when
    the groups hold no single stamp or a group's count would go below zero: the caller then
    rebuilds the table whole, replacing whatever this changed."""
    body = re.sub(r"^\s*AS\s", "", stmt[_CREATE.match(stmt).end():]).rstrip().rstrip(";")
    if o.stamp is not None:
        if o.stamp_sql not in body or con.execute(
                f"SELECT COUNT(DISTINCT {o.stamp}) <> 1 FROM {name}").fetchone()[0]:
            return False
        body = body.replace(o.stamp_sql, f"(SELECT MIN({o.stamp}) FROM main.{name})")
    with_body = re.match(r"WITH\s+(?!RECURSIVE)", body)

    def over(rows: str) -> str:
        # the statement with the kept table's name bound to `rows` (a CTE shadows the table,
        # in the macros it calls too)
        cte = f"{o.kept} AS (SELECT * FROM {rows})"
        return (f"WITH {cte}, {body[with_body.end():]}" if with_body else f"WITH {cte} {body}")

    keys, sums = ", ".join(o.keys), ", ".join(o.sums)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _g_delta AS
                    SELECT {keys}, {sums} FROM ({over(f"_kd_new_{o.kept}")})
                    UNION ALL
                    SELECT {keys}, {", ".join(f"-{c} AS {c}" for c in o.sums)}
                    FROM ({over(f"_kd_before_{o.kept}")})""")
    # only the groups the difference touches are rewritten (k_settle_grp holds ~185 k groups at
    # city, org, grid, status and two dates: rewriting them all took 0.4 s), and the table is
    # scanned once: their rows are those the DELETE returns. Should the check below fail, the
    # caller's whole build replaces the table anyway.
    same = " AND ".join(f"g.{k} IS NOT DISTINCT FROM d.{k}" for k in o.keys)
    cols = (*o.keys, *o.sums)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _g_keys AS SELECT DISTINCT {keys} FROM _g_delta")
    old = con.execute(f"DELETE FROM {name} g USING _g_keys d WHERE {same} "
                      f"RETURNING {', '.join(f'g.{c}' for c in cols)}").to_arrow_table()
    con.register("_g_old_rows", old)
    try:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _g_all AS
                        SELECT {keys}, {", ".join(f"SUM({c}) AS {c}" for c in o.sums)}
                        FROM (SELECT {", ".join(cols)} FROM _g_old_rows
                              UNION ALL SELECT * FROM _g_delta)
                        GROUP BY ALL""")
    finally:
        con.unregister("_g_old_rows")
    # a group counted below zero, or emptied with something left in its other sums: the rows
    # replaced were not those the groups were built from
    n, rest = o.sums[0], " OR ".join(f"{c} <> 0" for c in o.sums[1:]) or "FALSE"
    if con.execute(f"SELECT COUNT(*) FROM _g_all WHERE {n} < 0 OR ({n} = 0 AND ({rest}))"
                   ).fetchone()[0]:
        return False
    con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM _g_all WHERE {n} <> 0")
    return True


def _changes(con: duckdb.DuckDBPyConnection, tables: frozenset[str], since: int,
             top: int) -> dict[str, datetime | None]:
    """Tables among `tables` that ETL runs after `since` merged rows into: the lowest window low
    (None: a load without a window, i.e. a full load or a reconciliation)."""
    rows = con.execute("""SELECT table_name, MIN(window_low), BOOL_OR(window_low IS NULL)
                          FROM etl_run WHERE run_id > $since AND run_id <= $top AND rows_merged > 0
                            AND list_contains($tables, table_name)
                          GROUP BY table_name""",
                       {"since": since, "top": top, "tables": sorted(tables)}).fetchall()
    return {t: (None if whole else low) for t, low, whole in rows}


def _keyed(con: duckdb.DuckDBPyConnection, tables: Collection[str], since: int, top: int,
           reads: Mapping[str, frozenset[str] | None] | None = None) -> dict[str, str]:
    """Of `tables`, those whose changed keys every run after `since` recorded, with their key
    column: every run that merged rows into them recorded its keys (etl_keys), or, where a batch
    was too large for that, changed no column the kept table `reads` and recorded the keys it
    added (etl_added_keys): the ~90 k terminal heartbeats of a city minute with a new terminal."""
    keys = {t: k for t, k in _KEYS.items() if t in tables}
    if not keys:
        return {}
    try:
        rows = con.execute("""
            WITH r AS (SELECT DISTINCT run_id, table_name FROM etl_run
                       WHERE run_id > $since AND run_id <= $top AND rows_merged > 0
                         AND list_contains($tables, table_name)),
            k AS (SELECT run_id, table_name, bool_or(key IS NULL) AS over, bool_or(key IS NOT NULL) AS some
                  FROM etl_keys WHERE run_id > $since AND run_id <= $top GROUP BY ALL),
            c AS (SELECT run_id, table_name, list(column_name) AS marks
                  FROM etl_changed WHERE run_id > $since AND run_id <= $top GROUP BY ALL),
            a AS (SELECT run_id, table_name, bool_or(key IS NULL) AS unknown
                  FROM etl_added_keys WHERE run_id > $since AND run_id <= $top GROUP BY ALL)
            SELECT r.table_name, COALESCE(k.over, FALSE), COALESCE(k.some, FALSE), c.marks, a.unknown
            FROM r LEFT JOIN k USING (run_id, table_name) LEFT JOIN c USING (run_id, table_name)
                   LEFT JOIN a USING (run_id, table_name)""",
            {"since": since, "top": top, "tables": sorted(keys)}).fetchall()
    except duckdb.CatalogException:    # a warehouse from before etl_keys or etl_added_keys
        return {}
    reads = reads or {}

    def recorded(table: str, over: bool, some: bool, marks: list[str] | None,
                 unknown: bool | None) -> bool:
        if not over:
            return some
        read = reads.get(table)
        if marks is None or TRACKED not in marks or read is None or (set(marks) - {TRACKED, ADDED}) & read:
            return False
        return ADDED not in marks or unknown is False

    missing = {t for t, *run in rows if not recorded(t, *run)}
    return {t: k for t, k in keys.items() if t not in missing}


def _read_changed(con: duckdb.DuckDBPyConnection, name: str,
                  changed: dict[str, datetime | None], since: int) -> dict[str, datetime | None]:
    """`changed` without the tables whose runs after `since` changed no column the statement
    reads (kpis/changes.py): the terminals' heartbeat stamps last_online_time of every terminal
    each minute, which k_settle_mp does not read."""
    from kpis.dependencies import prelude_columns  # noqa: PLC0415  (dependencies imports this module)
    reads = prelude_columns(name)
    record = changes.Changes(con, since, changed.keys())
    return {t: low for t, low in changed.items()
            if record.last_touch({t: reads.get(t)}) is not None}


def _moved(con: duckdb.DuckDBPyConnection, r: Reverse, since: int) -> bool:
    """Whether a run after `since` changed a `moved_by` column of r.table, or merged its rows
    without comparing their versions (no '' marker: a table without business dates or an older
    ETL). A '*' marker of a run whose keys were recorded means new rows only: a batch too large
    to compare (etl/load.py TRACK_MAX_ROWS) is above KEYS_MAX_ROWS too."""
    rows = con.execute("""
        SELECT r.run_id, list(c.column_name) FILTER (WHERE c.column_name IS NOT NULL)
        FROM (SELECT DISTINCT run_id FROM etl_run
              WHERE run_id > $since AND rows_merged > 0 AND table_name = $t) r
        LEFT JOIN etl_changed c ON c.run_id = r.run_id AND c.table_name = $t
        GROUP BY r.run_id""", {"since": since, "t": r.table}).fetchall()
    return any(TRACKED not in (marks or ()) or set(marks) & set(r.moved_by) for _, marks in rows)


def _in_affected(col: str, nullable: bool) -> str:
    # a NULL key is a key too where it can be one (k_settle_tg groups the points without a customer)
    if not nullable:
        return f"{col} IN (SELECT k FROM _k_aff)"
    return f"({col} IN (SELECT k FROM _k_aff) OR ({col} IS NULL AND (SELECT bool_or(k IS NULL) FROM _k_aff)))"


def _refresh(con: duckdb.DuckDBPyConnection, name: str, stmt: str, since: int, top: int,
             deltas: dict[str, int] | None = None) -> str:
    """Re-derive the keys of `name` whose inputs changed after run `since` (Follow), in the
    caller's transaction. A table an OVER_KEPT one groups keeps the rows it replaced and those
    it re-derived for it (`deltas[name] = since`) when they differ."""
    f = FOLLOW[name]
    changed = _changes(con, f.tables(), since, top)
    if changed:
        changed = _read_changed(con, name, changed, since)
    if not changed:
        if top != since:
            _record(con, name, stmt, top, same=True)
        return "unchanged"
    if any(low is None for low in changed.values()) or changed.keys() & f.whole:
        return _full(con, name, stmt, top)
    from kpis.dependencies import prelude_columns  # noqa: PLC0415  (dependencies imports this module)
    since_of = {t: low - SLACK for t, low in changed.items()}
    keyed = _keyed(con, changed.keys(), since, top, prelude_columns(name))
    if any(r.table in changed and r.moved_by and (r.table not in keyed or _moved(con, r, since))
           for r in f.reverse):
        return _full(con, name, stmt, top)
    params: dict[str, object] = {}

    def recent(table: str, column: str) -> str:
        """`column` of the rows of `table` that the runs merged: by the keys the ETL recorded,
        else by updated_at, a day wide (SLACK), which re-derived ~30 % of k_bill each minute."""
        if table in keyed:
            key = keyed[table]
            params.update(since=since, top=top)
            runs = f"table_name = '{table}' AND run_id > $since AND run_id <= $top AND key IS NOT NULL"
            return (f"SELECT {column} FROM {table} WHERE CAST({key} AS VARCHAR) IN ("
                    f"SELECT key FROM etl_keys WHERE {runs} "
                    f"UNION ALL SELECT key FROM etl_added_keys WHERE {runs})")
        params[table] = since_of[table]
        return f"SELECT {column} FROM {table} WHERE updated_at >= ${table} OR updated_at IS NULL"

    parts = []
    if f.base in changed:
        parts.append(recent(f.base, f.base_to_key))
        if (f.base_to_key, f.kept_base_key) != (f.base_key, f.key):
            parts.append(f"SELECT {f.key} FROM {name} WHERE {f.kept_base_key} IN ("
                         f"{recent(f.base, f.base_key)})")
    for table, key, column in f.links:
        if table in changed:
            parts.append(f"SELECT {f.base_to_key} FROM {f.base} WHERE {column} IN ({recent(table, key)})")
    for r in f.reverse:
        if r.table in changed:
            parts.append(r.to_base.format(keys=recent(r.table, r.key)))
    body = re.sub(r"^\s*AS\s", "", stmt[_CREATE.match(stmt).end():])
    nullable = f.base_to_key != f.base_key      # a primary key is never NULL
    con.execute("CREATE OR REPLACE TEMP TABLE _k_aff AS SELECT DISTINCT k FROM ("
                + " UNION ALL ".join(parts) + ") a(k)", params)
    if con.execute("SELECT COUNT(*) FROM _k_aff").fetchone()[0] > AFFECTED_MAX:
        return _full(con, name, stmt, top)
    narrowed = ", ".join([f"{f.base} AS (SELECT * FROM main.{f.base} "
                          f"WHERE {_in_affected(f.base_to_key, nullable)})",
                          *(f"{t} AS (SELECT * FROM main.{t} WHERE {cond})" for t, cond in f.narrow)])
    # the statement's own CTEs follow the narrowed tables' (one WITH)
    with_body = re.match(r"WITH\s+(?!RECURSIVE)", body)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _k_new AS WITH {narrowed}, {body[with_body.end():]}"
                if with_body else f"CREATE OR REPLACE TEMP TABLE _k_new AS WITH {narrowed} {body}")
    watched = name in {o.kept for o in OVER_KEPT.values()}
    if watched:    # the rows before, to tell whether the refresh changed any
        con.execute(f"CREATE OR REPLACE TEMP TABLE _k_before AS SELECT * FROM {name} "
                    f"WHERE {_in_affected(f.key, nullable)}")
    con.execute(f"DELETE FROM {name} WHERE {_in_affected(f.key, nullable)}")
    con.execute(f"INSERT INTO {name} SELECT * FROM _k_new")
    if f.row_per_base and f.key == f.base_key == f.base_to_key and con.execute(
            f"SELECT (SELECT COUNT(*) FROM {name}) <> (SELECT COUNT(*) FROM {f.base})").fetchone()[0]:
        # one row per base row is what the joins on keys give: a key that vanished from the
        # base (never by the ETL) or a duplicated join key breaks it; rebuild whole
        return _full(con, name, stmt, top)
    same = watched and not con.execute(
        "SELECT EXISTS (SELECT * FROM _k_before EXCEPT ALL SELECT * FROM _k_new) "
        "OR EXISTS (SELECT * FROM _k_new EXCEPT ALL SELECT * FROM _k_before)").fetchone()[0]
    if watched and not same and deltas is not None:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _kd_before_{name} AS SELECT * FROM _k_before")
        con.execute(f"CREATE OR REPLACE TEMP TABLE _kd_new_{name} AS SELECT * FROM _k_new")
        deltas[name] = since
    _record(con, name, stmt, top, same=same)
    return "delta"


def _marked(con: duckdb.DuckDBPyConnection, name: str, stmt: str,
            state: tuple[str, int] | None, top: int | None) -> str:
    """Bring a MARKED table up to date with the base rows merged after its build (the caller's
    transaction); rebuilt whole without a known state, after a load without a window (a full
    load, a reconciliation) or another statement. The refresh reads the columns and conditions of
    its Marked, which tests/kpis/test_dependencies.py holds equal to the statement."""
    m = MARKED[name]
    if top is None or state is None or state[0] != _hash(stmt):
        return _full(con, name, stmt, top)
    changed = _changes(con, frozenset({m.base}), state[1], top)
    if not changed:
        if top != state[1]:
            _record(con, name, stmt, top, same=True)
        return "unchanged"
    low = changed[m.base]
    if low is None:
        return _full(con, name, stmt, top)
    cols = ", ".join(m.columns)
    # The merged rows: from the ETL's row images of the runs since the build when every batch
    # kept them (kpis/images.py merged_rows: a minute's tens of retried readings), else the
    # rows updated since a day before the lowest window (after the night's collection 3.5 M
    # readings, 0.23 s of a city minute).
    from kpis.images import merged_rows  # noqa: PLC0415
    if merged_rows(con, m.base, state[1], top, "_marked_src"):
        source, window, params = "_marked_src", "TRUE", {}
    else:
        source, params = f"main.{m.base}", {"low": low - SLACK}
        window = "(updated_at >= $low OR updated_at IS NULL)"
    # Of those, the rows of kept keys, and the marked ones of any key; `known`: the key was
    # kept. One hash join to the kept keys (two IN subqueries, one for the filter and one for
    # `known`, took 0.12-0.33 s at city for the 3.5 M rows of a night's slack window; 0.14 s).
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _marked_chg AS
        WITH kk AS (SELECT DISTINCT {m.key} AS kept_key FROM main.{name})
        SELECT {cols}, ({m.keep}) AS keep_row, ({m.keep} AND {m.mark}) IS TRUE AS mark_row,
               kept_key IS NOT NULL AS known
        FROM {source} LEFT JOIN kk ON kept_key = {m.key}
        WHERE {window}
          AND (kept_key IS NOT NULL OR ({m.keep} AND {m.mark}))""", params)
    match = " AND ".join(f"k.{c} = c.{c}" for c in m.row_key)
    con.execute(f"DELETE FROM main.{name} k USING _marked_chg c WHERE c.known AND {match}")
    con.execute(f"INSERT INTO main.{name} SELECT {cols} FROM _marked_chg WHERE known AND keep_row")
    con.execute(f"""DELETE FROM main.{name} WHERE {m.key} IN (SELECT {m.key} FROM _marked_chg WHERE known)
                    AND {m.key} NOT IN (SELECT {m.key} FROM main.{name} WHERE {m.mark})""")
    if con.execute("SELECT bool_or(NOT known AND mark_row) FROM _marked_chg").fetchone()[0]:
        con.execute(f"""INSERT INTO main.{name} SELECT {cols} FROM main.{m.base}
                        WHERE {m.keep} AND {m.key} IN (SELECT {m.key} FROM _marked_chg
                                                       WHERE NOT known AND mark_row)""")
    _record(con, name, stmt, top)
    return "delta"
