"""The on-demand prelude tables kept between passes (kpis.prelude.refresh_on_demand).

Property: after random source changes and ETL passes, the kept k_wo, k_task, k_settle_tg, k_bill,
k_payment, k_settle_mp and k_clock_off (MARKED: the off-tolerance meters' clock checks) equal a
fresh build from the warehouse row for row, and the refresh took the delta path (else the
property would hold trivially); the GATED tables are rebuilt whole when a column they read
changed. The changes reach every input: work orders (another customer or 台区, merges,
status, deletes), customers (another grid, deleted), 台区 (another grid, urban class, deleted),
repair tasks, metering points (another customer or 台区, retired, a new point with a smaller
mp_no), meters, collection objects and terminals (status, type, a new meter, another terminal or
台区), bills and payments (another customer, deleted, another amount; their customer to another
grid or use code), disconnection events (another customer, deleted, settled; their customer to
another grid), rows stamped inside the ETL overlap behind the watermark, and a hard delete
at the source (the warehouse keeps the row). A change of the org tree rebuilds k_wo whole.
Hand-checked: a customer moved to another grid moves its work orders' attr_grid and its bills'
cust_grid_no.
"""
from __future__ import annotations

import random
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from etl.pipeline import run_pass
from etl.settings import SOURCE_NAMES, load_settings
from etl.warehouse import Warehouse
from kpis import prelude
from kpis.prelude import FOLLOW, GATED, ON_DEMAND, OVER_IMAGED, apply_prelude, refresh_on_demand, statements
from tests.kpis.harness import simulated_small

START = date(2026, 5, 1)
DAYS = 8
END = datetime.combine(START + timedelta(days=DAYS), datetime.min.time())


# Written out by hand for the kept customer groups' tests (not the prelude's macros): ACTIVE's
# dates clamped to [lo - 1, hi + 1] (cancel [lo, hi + 1]), the customers not deleted with their
# build day, and TG(c) (the 台区 of the customer's settlement point with the smallest mp_no).
CLAMPED = """CASE WHEN bd < $lo THEN $lo - 1 WHEN bd > $hi THEN $hi + 1 ELSE bd END AS b,
               CASE WHEN cancel_date > $hi THEN $hi + 1 WHEN cancel_date < $lo THEN $lo
                    ELSE cancel_date END AS cd"""
CUSTOMERS = """(SELECT *, COALESCE(build_date, CAST(created_at AS DATE)) AS bd FROM mis_customer
              WHERE is_deleted = 0) c"""
TG_OF = """(SELECT cons_no, arg_min(tg_no, mp_no) AS tg_no FROM mis_metering_point
              WHERE is_deleted = 0 AND mp_attr_code = '01' AND status_code IN ('01', '02')
              GROUP BY cons_no) s"""


@dataclass
class Sim:
    root: Path
    settings: object
    wh: Warehouse
    con: duckdb.DuckDBPyConnection


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """Sources and a loaded warehouse, built once and copied for each test."""
    pytest.importorskip("simulator")
    root = tmp_path_factory.mktemp("follow")
    settings = simulated_small(root, START, DAYS)
    with Warehouse(settings.warehouse_path, threads=2, memory_limit="2GB") as wh:
        assert run_pass(settings, wh).ok
    return root


@pytest.fixture()
def sim(template, tmp_path) -> Iterator[Sim]:
    root = tmp_path / "sim"
    shutil.copytree(template, root)
    env = {"DATA_DIR": str(root / "data"), "WAREHOUSE_PATH": str(root / "data" / "warehouse.duckdb"),
           "ETL_SAFETY_LAG_S": "0",
           **{f"SOURCE_{s.upper()}_URL": f"sqlite:///{root / f'source_{s}.db'}" for s in SOURCE_NAMES}}
    settings = load_settings(env)
    with Warehouse(settings.warehouse_path, threads=2, memory_limit="2GB") as wh:
        con = wh.cursor()
        apply_prelude(con, needed=())
        assert refresh_on_demand(con, ON_DEMAND) == {n: "full" for n in ON_DEMAND}
        yield Sim(root, settings, wh, con)
        con.close()


def _source(sim: Sim | Path, system: str) -> sqlite3.Connection:
    root = sim.root if isinstance(sim, Sim) else sim
    return closing(sqlite3.connect(root / f"source_{system}.db", isolation_level=None))


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S")


def _keys(db: sqlite3.Connection, table: str, key: str, rng: random.Random, n: int,
          where: str = "1 = 1") -> list[str]:
    keys = [r[0] for r in db.execute(f"SELECT {key} FROM {table} WHERE {where} ORDER BY {key}")]
    return rng.sample(keys, min(n, len(keys)))


def _set(db: sqlite3.Connection, table: str, key: str, value: str, at: datetime, **cols: object) -> None:
    sets = ", ".join(f"{c} = ?" for c in cols)
    db.execute(f"UPDATE {table} SET {sets}, updated_at = ? WHERE {key} = ?",
               [*cols.values(), _stamp(at), value])


def change_sources(sim: Sim | Path, rng: random.Random, at: datetime, joined: bool = True) -> None:
    """Random changes to every input of the kept tables, stamped `at` or a few minutes behind
    it (late rows the ETL overlap still reads). joined=False: work orders and repair tasks only
    (rows whose own business dates the ETL marks dirty)."""
    def when() -> datetime:
        return at - timedelta(seconds=rng.choice((0, 0, 30, 240)))

    with _source(sim, "mis") as mis, _source(sim, "cs") as cs, _source(sim, "dist") as dist:
        grids = [r[0] for r in mis.execute("SELECT grid_no FROM mis_grid ORDER BY grid_no")]
        custs = [r[0] for r in mis.execute("SELECT cons_no FROM mis_customer ORDER BY cons_no")]
        tgs = [r[0] for r in dist.execute("SELECT tg_no FROM dist_tg ORDER BY tg_no")]
        wos = [r[0] for r in cs.execute("SELECT wo_no FROM cs_work_order ORDER BY wo_no")]
        with_orders = [r[0] for r in cs.execute(
            "SELECT DISTINCT cons_no FROM cs_work_order WHERE cons_no IS NOT NULL ORDER BY 1")]
        for c in rng.sample(with_orders, 3) if joined else ():
            _set(mis, "mis_customer", "cons_no", c, when(), grid_no=rng.choice(grids))
        for c in rng.sample(with_orders, 2) if joined else ():
            # flipped, so that every step moves a customer on or off the books (k_unit_book_n)
            flag = mis.execute("SELECT is_deleted FROM mis_customer WHERE cons_no = ?", [c]).fetchone()[0]
            _set(mis, "mis_customer", "cons_no", c, when(), is_deleted=1 - flag)
        for w in rng.sample(wos, 6):
            change = rng.choice(("cons", "tg", "merge", "cancel", "delete"))
            if change == "cons":
                _set(cs, "cs_work_order", "wo_no", w, when(), cons_no=rng.choice(custs))
            elif change == "tg":
                _set(cs, "cs_work_order", "wo_no", w, when(), tg_no=rng.choice(tgs))
            elif change == "merge":
                _set(cs, "cs_work_order", "wo_no", w, when(), merged_into_wo_no=rng.choice(wos),
                     status_code="08")
            elif change == "cancel":
                _set(cs, "cs_work_order", "wo_no", w, when(), status_code="09")
            else:
                _set(cs, "cs_work_order", "wo_no", w, when(), is_deleted=1)
        # a hard delete at the source: the ETL does not see it, the warehouse keeps the row
        cs.execute("DELETE FROM cs_work_order WHERE wo_no = ?", [rng.choice(wos)])
        for t in _keys(dist, "dist_repair_task", "task_id", rng, 3):
            _set(dist, "dist_repair_task", "task_id", t, when(), wo_no=rng.choice(wos),
                 tg_no=rng.choice(tgs))
        if not joined:
            return
        used_tgs = [r[0] for r in cs.execute(
            "SELECT DISTINCT tg_no FROM cs_work_order WHERE tg_no IS NOT NULL ORDER BY 1")]
        for t in rng.sample(used_tgs, 2):
            _set(dist, "dist_tg", "tg_no", t, when(), grid_no=rng.choice(grids),
                 urban_rural=rng.choice(("01", "02", "03")))
        _set(dist, "dist_tg", "tg_no", rng.choice(used_tgs), when(), is_deleted=rng.choice((0, 1)))
        # bills and payments to another customer, deleted or re-amounted; billed and paying
        # customers to another grid (k_bill and k_payment carry it) or use code (k_bill)
        for table, key, amount in (("mis_bill", "bill_id", "rcvbl_amt"),
                                   ("mis_payment", "charge_id", "rcv_amt")):
            for row in _keys(mis, table, key, rng, 3):
                change = rng.choice(("cons", "delete", "amount"))
                if change == "cons":
                    _set(mis, table, key, row, when(), cons_no=rng.choice(custs))
                elif change == "delete":
                    _set(mis, table, key, row, when(), is_deleted=1)
                else:
                    _set(mis, table, key, row, when(), **{amount: rng.randrange(1, 900)})
        # disconnection events to another customer, deleted or settled; their customers too
        for row in _keys(mis, "mis_rc_event", "rc_id", rng, 3):
            change = rng.choice(("cons", "delete", "settle"))
            if change == "cons":
                _set(mis, "mis_rc_event", "rc_id", row, when(), cons_no=rng.choice(custs))
            elif change == "delete":
                _set(mis, "mis_rc_event", "rc_id", row, when(), is_deleted=1)
            else:
                _set(mis, "mis_rc_event", "rc_id", row, when(), settle_time=_stamp(when()))
        cut = [r[0] for r in mis.execute(
            "SELECT DISTINCT cons_no FROM mis_rc_event WHERE cons_no IS NOT NULL ORDER BY 1")]
        for c in rng.sample(cut, min(2, len(cut))):
            _set(mis, "mis_customer", "cons_no", c, when(), grid_no=rng.choice(grids))
        paying = [r[0] for r in mis.execute(
            "SELECT DISTINCT cons_no FROM mis_payment WHERE cons_no IS NOT NULL ORDER BY 1")]
        for c in rng.sample(paying, 2):
            _set(mis, "mis_customer", "cons_no", c, when(), grid_no=rng.choice(grids))
        codes = [r[0] for r in mis.execute("SELECT DISTINCT elec_type_code FROM mis_customer "
                                           "WHERE elec_type_code IS NOT NULL ORDER BY 1")]
        billed = [r[0] for r in mis.execute(
            "SELECT DISTINCT cons_no FROM mis_bill WHERE cons_no IS NOT NULL ORDER BY 1")]
        for c in rng.sample(billed, 2):
            _set(mis, "mis_customer", "cons_no", c, when(), grid_no=rng.choice(grids),
                 elec_type_code=rng.choice(codes))
        for m in _keys(mis, "mis_metering_point", "mp_no", rng, 3, "mp_attr_code = '01'"):
            change = rng.choice(("cons", "tg", "retire"))
            if change == "cons":
                _set(mis, "mis_metering_point", "mp_no", m, when(), cons_no=rng.choice(custs))
            elif change == "tg":
                _set(mis, "mis_metering_point", "mp_no", m, when(), tg_no=rng.choice(tgs))
            else:
                _set(mis, "mis_metering_point", "mp_no", m, when(), status_code="03")
        # a new settlement point sorting before the customer's current one takes over TG(c)
        cols = [r[1] for r in mis.execute("PRAGMA table_info(mis_metering_point)")]
        src = mis.execute("SELECT * FROM mis_metering_point WHERE mp_attr_code = '01' "
                          "AND status_code IN ('01', '02') ORDER BY mp_no LIMIT 1 OFFSET ?",
                          [rng.randrange(50)]).fetchone()
        row = dict(zip(cols, src))
        row.update(mp_no="0" + row["mp_no"][1:], tg_no=rng.choice(tgs),
                   created_at=_stamp(at), updated_at=_stamp(when()))
        mis.execute(f"INSERT OR REPLACE INTO mis_metering_point ({', '.join(row)}) "
                    f"VALUES ({', '.join('?' * len(row))})", list(row.values()))
    change_meters(sim, rng, at, when)
    change_clock_checks(sim, rng, at, when)


def _copy_row(db: sqlite3.Connection, table: str, where: str, params: list, **changes: object) -> None:
    cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
    row = dict(zip(cols, db.execute(f"SELECT * FROM {table} WHERE {where} LIMIT 1", params).fetchone()))
    row.update(changes)
    db.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
               list(row.values()))


def change_meters(sim: Sim | Path, rng: random.Random, at: datetime, when) -> None:
    """The inputs k_settle_mp reaches over more than one key (kpis/prelude.py Reverse), none
    moving a meter to another point: a meter failed, set running again or of another type, a
    new meter on a point, collection objects out of or into collection or to another terminal,
    terminals stopped or moved to another 台区; and the heartbeat of a few terminals (a column
    no kept table reads)."""
    with _source(sim, "mis") as mis, _source(sim, "meter") as meter:
        for m in _keys(mis, "mis_meter", "meter_asset_no", rng, 2, "is_deleted = 0 AND mp_no IS NOT NULL"):
            change = rng.choice(("status", "type"))
            if change == "status":
                status = mis.execute("SELECT status_code FROM mis_meter WHERE meter_asset_no = ?", [m]).fetchone()[0]
                _set(mis, "mis_meter", "meter_asset_no", m, when(), status_code="04" if status == "01" else "01")
            else:
                _set(mis, "mis_meter", "meter_asset_no", m, when(), meter_type=rng.choice(("26", "11")))
        # a second running meter on a point that had one (run_meter, smart)
        mp = rng.choice(_keys(mis, "mis_meter", "mp_no", rng, 20, "is_deleted = 0 AND status_code = '01' "
                                                                  "AND mp_no IS NOT NULL"))
        _copy_row(mis, "mis_meter", "mp_no = ?", [mp], meter_asset_no=f"N{at:%H%M%S}{rng.randrange(10 ** 6):06d}",
                  meter_type="28", status_code="01", is_deleted=0, created_at=_stamp(at), updated_at=_stamp(when()))
        terms = [r[0] for r in meter.execute("SELECT terminal_id FROM meter_terminal ORDER BY 1")]
        for o in _keys(meter, "meter_coll_obj", "meter_asset_no", rng, 3, "is_deleted = 0"):
            change = rng.choice(("flag", "status", "terminal"))
            if change == "flag":
                flag = meter.execute("SELECT coll_flag FROM meter_coll_obj WHERE meter_asset_no = ?", [o]).fetchone()[0]
                _set(meter, "meter_coll_obj", "meter_asset_no", o, when(), coll_flag=1 - flag)
            elif change == "status":
                _set(meter, "meter_coll_obj", "meter_asset_no", o, when(), status_code=rng.choice(("01", "02")))
            else:
                _set(meter, "meter_coll_obj", "meter_asset_no", o, when(), terminal_id=rng.choice(terms))
        tgs = [r[0] for r in meter.execute("SELECT DISTINCT tg_no FROM meter_terminal WHERE tg_no IS NOT NULL ORDER BY 1")]
        for t in rng.sample(terms, 2):
            if rng.random() < 0.5:
                run = meter.execute("SELECT run_status FROM meter_terminal WHERE terminal_id = ?", [t]).fetchone()[0]
                _set(meter, "meter_terminal", "terminal_id", t, when(), run_status="02" if run == "01" else "01")
            else:
                _set(meter, "meter_terminal", "terminal_id", t, when(), tg_no=rng.choice(tgs))
        for t in rng.sample(terms, 3):
            _set(meter, "meter_terminal", "terminal_id", t, when(), last_online_time=_stamp(when()))


def change_clock_checks(sim: Sim | Path, rng: random.Random, at: datetime, when) -> None:
    """The inputs of k_clock_off (MARKED): a meter's first check over tolerance (all its rows
    join), every off check of a meter set right (the meter leaves), an off meter's check deleted,
    moved to another 台区 or set within tolerance, and a new day's check of an off meter."""
    with _source(sim, "meter") as meter:
        off = [r[0] for r in meter.execute(
            "SELECT DISTINCT meter_asset_no FROM meter_collection_daily WHERE is_deleted = 0 "
            "AND ABS(clock_dev_s) > 300 ORDER BY 1")]
        assert len(off) >= 3, "the simulated meters need clocks out of tolerance"
        row = "meter_asset_no = ? AND data_date = ?"

        def a_check(m: str) -> str:
            return rng.choice([r[0] for r in meter.execute(
                "SELECT data_date FROM meter_collection_daily WHERE meter_asset_no = ? "
                "AND clock_dev_s IS NOT NULL ORDER BY 1", [m])])

        fresh = meter.execute("SELECT meter_asset_no FROM meter_collection_daily WHERE is_deleted = 0 "
                              "AND ABS(clock_dev_s) <= 300 ORDER BY meter_asset_no LIMIT 1 OFFSET ?",
                              [rng.randrange(500)]).fetchone()[0]
        m = fresh
        meter.execute(f"UPDATE meter_collection_daily SET clock_dev_s = ?, updated_at = ? WHERE {row}",
                      [rng.choice((-420, 360, 900)), _stamp(when()), m, a_check(m)])
        fixed, gone, moved, new_day = rng.sample(off, 4)
        meter.execute("UPDATE meter_collection_daily SET clock_dev_s = 12, updated_at = ? "
                      "WHERE meter_asset_no = ? AND ABS(clock_dev_s) > 300", [_stamp(when()), fixed])
        meter.execute(f"UPDATE meter_collection_daily SET is_deleted = 1, updated_at = ? WHERE {row}",
                      [_stamp(when()), gone, a_check(gone)])
        tg = meter.execute("SELECT MIN(tg_no) FROM meter_collection_daily WHERE tg_no IS NOT NULL").fetchone()[0]
        meter.execute(f"UPDATE meter_collection_daily SET tg_no = ?, clock_dev_s = ?, updated_at = ? "
                      f"WHERE {row}", [tg, rng.choice((3, 700)), _stamp(when()), moved, a_check(moved)])
        cols = [r[1] for r in meter.execute("PRAGMA table_info(meter_collection_daily)")]
        last = meter.execute("SELECT * FROM meter_collection_daily WHERE meter_asset_no = ? "
                             "ORDER BY data_date DESC LIMIT 1", [new_day]).fetchone()
        new = dict(zip(cols, last))
        new.update(data_date=str(date.fromisoformat(str(new["data_date"])[:10]) + timedelta(days=1)),
                   clock_dev_s=rng.choice((5, 640)), is_deleted=0, created_at=_stamp(at),
                   updated_at=_stamp(when()))
        meter.execute(f"INSERT OR REPLACE INTO meter_collection_daily ({', '.join(new)}) "
                      f"VALUES ({', '.join('?' * len(new))})", list(new.values()))


def _fresh_differs(con: duckdb.DuckDBPyConnection, name: str) -> int:
    """Rows of the kept table and of a fresh build that the other one lacks (multisets)."""
    stmt = next(s for s in statements() if s.startswith(f"CREATE OR REPLACE TABLE {name} "))
    con.execute(stmt.replace(f"CREATE OR REPLACE TABLE {name} ", "CREATE OR REPLACE TEMP TABLE _fresh ", 1))
    return con.execute(f"""SELECT (SELECT COUNT(*) FROM (SELECT * FROM main.{name} EXCEPT ALL SELECT * FROM _fresh))
                                + (SELECT COUNT(*) FROM (SELECT * FROM _fresh EXCEPT ALL SELECT * FROM main.{name}))""",
                       ).fetchone()[0]


def _pass(sim: Sim, keys_lost: bool = False) -> dict[str, str]:
    assert run_pass(sim.settings, sim.wh).ok
    if keys_lost:   # as after an ETL that recorded no keys nor row images (older, or a batch
        sim.con.execute("DELETE FROM etl_keys")      # too large)
        sim.con.execute("DELETE FROM etl_image_run")
    apply_prelude(sim.con, needed=())
    return refresh_on_demand(sim.con, ON_DEMAND)


@pytest.mark.parametrize("seed, keys", [(1, "recorded"), (2, "recorded"), (3, "recorded"),
                                        (4, "lost")])
def test_kept_tables_equal_a_fresh_build_after_random_changes(sim, seed, keys) -> None:
    """With the keys each ETL run merged (etl_keys) and its row images (k_clock_off from the
    readings' images, kpis/images.py merged_rows) and, where they are lost, by the rows'
    updated_at a day wide."""
    rng = random.Random(seed)
    for step in range(1, 4):
        at = END + timedelta(minutes=step)
        change_sources(sim, rng, at)
        how = _pass(sim, keys_lost=keys == "lost")
        # every step changes settlement points (customer, 台区, status), which the GATED
        # k_settle_grp reads through k_settle_mp; without the meters' keys a new meter cannot
        # be told from one moved to another point (Reverse.moved_by): k_settle_mp is rebuilt.
        # With the runs' keys and row images, the groups of k_settle_mp and those of the
        # customers alone follow by difference (OVER_KEPT, OVER_IMAGED); the customer groups
        # by 台区 read the points too, which changed: rebuilt, as is k_cust_check (the points
        # are among its `whole` tables) and with it k_cust_check_grp; the book events follow
        # the customers, their running sum is rebuilt over them
        rebuilt = set(GATED) | {"k_cust_check"} | ({"k_settle_mp"} if keys == "lost" else set())
        rebuilt -= ({"k_cust_grp", "k_cust_stock_grp", "k_settle_grp", "k_unit_book_ev"}
                    if keys == "recorded" else set())
        assert how == {n: "full" if n in rebuilt else "delta" for n in ON_DEMAND}, (step, how)
        # the clock checks' changes reached the kept table (else equality would hold trivially)
        assert sim.con.execute("SELECT COUNT(*) FROM k_clock_off").fetchone()[0] > 0
        for name in sorted(ON_DEMAND):
            assert _fresh_differs(sim.con, name) == 0, (step, name)
    # nothing merged since: nothing to do, and still equal
    assert _pass(sim) == {n: "unchanged" for n in ON_DEMAND}
    for name in sorted(ON_DEMAND):
        assert _fresh_differs(sim.con, name) == 0


@pytest.mark.parametrize("table, grid_col", [("k_wo", "attr_grid"), ("k_bill", "cust_grid_no"),
                                             ("k_payment", "cust_grid_no"), ("k_rc_event", "cust_grid_no")])
def test_a_customer_moved_to_another_grid_moves_its_orders_and_bills(sim, table, grid_col) -> None:
    con = sim.con
    only_kept = ("JOIN mis_customer c ON c.cons_no = w.cons_no AND c.is_deleted = 0"
                 if table == "k_wo" else "")
    cons, grid, n = con.execute(f"""SELECT w.cons_no, MIN(w.{grid_col}), COUNT(*) FROM {table} w
                                    {only_kept}
                                    WHERE w.{grid_col} IS NOT NULL GROUP BY 1 ORDER BY 3 DESC, 1
                                    LIMIT 1""").fetchone()
    other = con.execute("SELECT MIN(grid_no) FROM mis_grid WHERE grid_no <> $g AND is_deleted = 0",
                        {"g": grid}).fetchone()[0]
    with _source(sim, "mis") as mis:
        _set(mis, "mis_customer", "cons_no", cons, END + timedelta(minutes=1), grid_no=other)
    assert _pass(sim)[table] == "delta"
    assert con.execute(f"SELECT list(DISTINCT {grid_col}), COUNT(*) FROM {table} WHERE cons_no = $c",
                       {"c": cons}).fetchone() == ([other], n)


def test_an_org_tree_change_rebuilds_whole(sim) -> None:
    with _source(sim, "mis") as mis:
        g = mis.execute("SELECT MIN(grid_no) FROM mis_grid").fetchone()[0]
        _set(mis, "mis_grid", "grid_no", g, END + timedelta(minutes=1), is_deleted=1)
    how = _pass(sim)
    assert how["k_wo"] == "full"          # attr_grid of every order may change
    assert _fresh_differs(sim.con, "k_wo") == 0


def _org_tree(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute("SELECT unit_no, parent_no, unit_level FROM k_org ORDER BY 1").fetchall()


def test_the_org_tree_and_calendar_are_rebuilt_only_when_the_etl_changed_them(sim) -> None:
    """The prelude's always-built tables (k_org, k_org_ancestor, k_calendar, ...) are kept by an
    apply of the worker (needed=()) while no ETL run changed mis_org, mis_grid or the calendar:
    a marker row put into k_org by hand survives a pass that changed work orders only, and goes
    with the rebuild after a grid's change, which the new tree shows; a changed prelude text
    rebuilds too."""
    con = sim.con
    marker = "INSERT INTO k_org VALUES ('MARK', 'marker', NULL, 'grid', '01')"
    has_marker = "SELECT COUNT(*) FROM k_org WHERE unit_no = 'MARK'"
    con.execute(marker)
    with _source(sim, "cs") as cs:
        w = cs.execute("SELECT MIN(wo_no) FROM cs_work_order").fetchone()[0]
        _set(cs, "cs_work_order", "wo_no", w, END + timedelta(minutes=1), status_code="09")
    _pass(sim)
    assert con.execute(has_marker).fetchone()[0] == 1      # kept: nothing it reads changed
    with _source(sim, "mis") as mis:
        g, org = mis.execute("SELECT grid_no, org_no FROM mis_grid ORDER BY grid_no LIMIT 1").fetchone()
        other = mis.execute("SELECT MIN(org_no) FROM mis_org WHERE org_type = '05' AND org_no <> ?",
                            [org]).fetchone()[0]
        _set(mis, "mis_grid", "grid_no", g, END + timedelta(minutes=2), org_no=other)
    _pass(sim)
    assert con.execute(has_marker).fetchone()[0] == 0      # rebuilt from the sources
    assert (g, other, "grid") in _org_tree(con)
    assert con.execute("SELECT COUNT(*) FROM k_org_ancestor WHERE unit_no = $g AND ancestor_no = $o",
                       {"g": g, "o": other}).fetchone()[0] == 1
    con.execute(marker)
    con.execute("UPDATE kpi_prelude_state SET sql_hash = 'other' WHERE name = '(prelude)'")
    apply_prelude(con, needed=())
    assert con.execute(has_marker).fetchone()[0] == 0      # another prelude text: applied again


def test_a_changed_definition_or_a_lost_state_rebuilds(sim) -> None:
    con = sim.con
    con.execute("UPDATE kpi_prelude_state SET sql_hash = 'other' WHERE name = 'k_task'")
    con.execute("DELETE FROM kpi_prelude_state WHERE name = 'k_settle_tg'")
    with _source(sim, "cs") as cs:
        w = cs.execute("SELECT MIN(wo_no) FROM cs_work_order").fetchone()[0]
        _set(cs, "cs_work_order", "wo_no", w, END + timedelta(minutes=1), status_code="09")
    assert _pass(sim) == {"k_wo": "delta", "k_task": "full", "k_settle_tg": "full",
                          "k_bill": "unchanged", "k_payment": "unchanged", "k_rc_event": "unchanged",
                          "k_settle_mp": "unchanged", "k_cust_grp": "unchanged",
                          "k_cust_stock_grp": "unchanged", "k_cust_check": "unchanged",
                          "k_cust_area_grp": "unchanged", "k_tg_cust_grp": "unchanged",
                          "k_settle_grp": "unchanged", "k_unit_book_ev": "unchanged",
                          "k_unit_book_n": "unchanged", "k_cust_check_grp": "unchanged", "k_clock_off": "unchanged",
                          "k_cust_sensitive": "unchanged", "k_cust_important": "unchanged"}
    con.execute("UPDATE kpi_prelude_state SET sql_hash = 'other' WHERE name = 'k_settle_mp'")
    assert _pass(sim)["k_settle_mp"] == "full"


def test_a_kept_table_dropped_behind_its_state_is_rebuilt(sim) -> None:
    """The dropped table is rebuilt whole; each table is refreshed in its own transaction, so
    the others are brought up to date as usual (nothing they read changed)."""
    sim.con.execute("DROP TABLE k_task")
    with _source(sim, "dist") as dist:
        t = dist.execute("SELECT MIN(task_id) FROM dist_repair_task").fetchone()[0]
        _set(dist, "dist_repair_task", "task_id", t, END + timedelta(minutes=1), status_code="09")
    assert run_pass(sim.settings, sim.wh).ok
    assert refresh_on_demand(sim.con, ON_DEMAND) == {
        n: "full" if n == "k_task" else "unchanged" for n in ON_DEMAND}
    for name in sorted(ON_DEMAND):
        assert _fresh_differs(sim.con, name) == 0


def test_follow_names_every_table_the_statement_reads() -> None:
    """A join added to a kept table's SQL without its FOLLOW link would go stale: refused."""
    from kpis.dependencies import prelude_tables
    for name, f in FOLLOW.items():
        assert prelude_tables(name) == f.tables(), name


def test_k_settle_mp_follows_only_the_columns_it_reads(sim) -> None:
    """The terminals' heartbeat (last_online_time, every terminal, every minute) leaves
    k_settle_mp and its GATED groups as they are; a terminal that stops running (run_status,
    which `covered` reads) re-derives its points (and rebuilds the groups), and the kept table
    equals a fresh build either way."""
    with _source(sim, "meter") as meter:
        terms = [r[0] for r in meter.execute(
            "SELECT terminal_id FROM meter_terminal WHERE is_deleted = 0 AND run_status = '01' "
            "ORDER BY terminal_id LIMIT 5")]
        for t in terms:
            _set(meter, "meter_terminal", "terminal_id", t, END + timedelta(minutes=1),
                 last_online_time=_stamp(END + timedelta(minutes=1)))
    how = _pass(sim)
    assert how["k_settle_mp"] == how["k_settle_grp"] == "unchanged", how
    assert _fresh_differs(sim.con, "k_settle_mp") == 0
    covered = sim.con.execute("SELECT COUNT(*) FILTER (WHERE covered) FROM k_settle_mp").fetchone()[0]
    with _source(sim, "meter") as meter:
        for t in terms:
            _set(meter, "meter_terminal", "terminal_id", t, END + timedelta(minutes=2), run_status="02")
    how = _pass(sim)
    # the groups by difference: the points re-derived, minus the points they replaced
    assert (how["k_settle_mp"], how["k_settle_grp"]) == ("delta", "delta"), how
    assert _fresh_differs(sim.con, "k_settle_mp") == 0
    assert _fresh_differs(sim.con, "k_settle_grp") == 0
    # the change reached the table: points collected through those terminals are no longer covered
    assert sim.con.execute("SELECT COUNT(*) FILTER (WHERE covered) FROM k_settle_mp").fetchone()[0] < covered


def test_a_terminal_added_among_heartbeats_too_many_for_their_keys(sim, monkeypatch) -> None:
    """A batch of terminals over etl_keys' limit (the ~90 k heartbeats of a city minute) with a
    new terminal among them: the ETL records the key it added (etl_added_keys), and k_settle_mp,
    which reads none of the other columns the batch changed, re-derives the one point that
    terminal reaches, not every point of the terminals the batch touched (by updated_at) nor
    the whole table. The point's collection object named the terminal before it existed: not
    covered (no terminal joins), then covered. A new terminal that no collection object names
    re-derives no point, and leaves the point groups as they are."""
    from etl import load
    con = sim.con
    mp, meter = con.execute(
        "SELECT m.mp_no, MIN(m.meter_asset_no) FROM mis_meter m JOIN k_settle_mp s ON s.mp_no = m.mp_no "
        "JOIN meter_coll_obj o ON o.meter_asset_no = m.meter_asset_no AND o.coll_flag = 1 "
        "AND o.status_code = '01' AND o.is_deleted = 0 "
        "WHERE s.covered AND m.is_deleted = 0 AND m.status_code = '01' GROUP BY m.mp_no "
        "HAVING COUNT(*) = 1 ORDER BY 1 LIMIT 1").fetchone()
    with _source(sim, "meter") as db:
        _set(db, "meter_coll_obj", "meter_asset_no", meter, END + timedelta(minutes=1), terminal_id="TNEW0001")
    assert _pass(sim)["k_settle_mp"] == "delta"
    covered = "SELECT covered FROM k_settle_mp WHERE mp_no = $p"
    assert con.execute(covered, {"p": mp}).fetchone()[0] is False
    monkeypatch.setattr(load, "KEYS_MAX_ROWS", 2)
    for step, terminal in enumerate(("TNEW0000", "TNEW0001"), start=2):
        at = END + timedelta(minutes=step)
        with _source(sim, "meter") as db:
            beats = [r[0] for r in db.execute("SELECT terminal_id FROM meter_terminal ORDER BY 1 LIMIT 4")]
            for t in beats:
                _set(db, "meter_terminal", "terminal_id", t, at, last_online_time=_stamp(at))
            _copy_row(db, "meter_terminal", "terminal_id = ?", [beats[0]], terminal_id=terminal,
                      run_status="01", is_deleted=0, created_at=_stamp(at), updated_at=_stamp(at))
        how = _pass(sim)
        if terminal == "TNEW0000":
            # a terminal no collection object names: no point re-derived, and the point groups
            # (GATED over k_settle_mp, OVER_KEPT) stay as they are, its rows being the same
            assert (how["k_settle_mp"], how["k_settle_grp"]) == ("delta", "unchanged"), how
            assert con.execute("SELECT COUNT(*) FROM _k_aff").fetchone()[0] == 0
    assert (how["k_settle_mp"], how["k_settle_grp"]) == ("delta", "delta"), how
    assert _fresh_differs(con, "k_settle_grp") == 0
    assert con.execute("SELECT key FROM etl_keys WHERE table_name = 'meter_terminal' AND run_id = "
                       "(SELECT MAX(run_id) FROM etl_run)").fetchall() == [(None,)]
    assert con.execute("SELECT key FROM etl_added_keys WHERE table_name = 'meter_terminal' "
                       "ORDER BY run_id").fetchall() == [("TNEW0000",), ("TNEW0001",)]
    assert con.execute("SELECT k FROM _k_aff").fetchall() == [(mp,)]
    assert con.execute(covered, {"p": mp}).fetchone()[0] is True
    assert _fresh_differs(con, "k_settle_mp") == 0


def _change_points(sim: Sim, rng: random.Random, at: datetime) -> None:
    """Meters, collection objects, terminals and settlement points (another customer or 台区,
    retired), none of the customers' own columns: what k_settle_grp reads beside k_settle_mp
    stays as it is."""
    def when() -> datetime:
        return at - timedelta(seconds=rng.choice((0, 0, 30, 240)))
    with _source(sim, "mis") as mis, _source(sim, "dist") as dist:
        custs = [r[0] for r in mis.execute("SELECT cons_no FROM mis_customer ORDER BY cons_no")]
        tgs = [r[0] for r in dist.execute("SELECT tg_no FROM dist_tg ORDER BY tg_no")]
        for m in _keys(mis, "mis_metering_point", "mp_no", rng, 3, "mp_attr_code = '01'"):
            change = rng.choice(("cons", "tg", "retire"))
            cols = ({"cons_no": rng.choice(custs)} if change == "cons" else
                    {"tg_no": rng.choice(tgs)} if change == "tg" else {"status_code": "03"})
            _set(mis, "mis_metering_point", "mp_no", m, when(), **cols)
    change_meters(sim, rng, at, when)


@pytest.mark.parametrize("seed", [5, 6])
def test_point_groups_follow_the_points_by_difference(sim, seed) -> None:
    """k_settle_grp (OVER_KEPT over k_settle_mp) brought up to date by the groups of the points
    re-derived minus those of the points they replaced: equal to a fresh build after each step."""
    rng = random.Random(seed)
    for step in range(1, 4):
        _change_points(sim, rng, END + timedelta(minutes=step))
        how = _pass(sim)
        assert (how["k_settle_mp"], how["k_settle_grp"]) == ("delta", "delta"), (step, how)
        assert _fresh_differs(sim.con, "k_settle_mp") == 0, step
        assert _fresh_differs(sim.con, "k_settle_grp") == 0, step


def test_point_groups_are_rebuilt_when_the_points_difference_is_not_at_hand(sim) -> None:
    """A pass that refreshed k_settle_mp but not k_settle_grp (no KPI reading it was woken):
    the rows it replaced are gone with that pass, so the next refresh rebuilds the groups whole.
    Groups that do not match the points (a count that would go below zero) are rebuilt too."""
    rng = random.Random(7)
    _change_points(sim, rng, END + timedelta(minutes=1))
    assert run_pass(sim.settings, sim.wh).ok
    apply_prelude(sim.con, needed=())
    assert refresh_on_demand(sim.con, {"k_settle_mp"}) == {"k_settle_mp": "delta"}
    _change_points(sim, rng, END + timedelta(minutes=2))
    how = _pass(sim)
    assert (how["k_settle_mp"], how["k_settle_grp"]) == ("delta", "full"), how
    assert _fresh_differs(sim.con, "k_settle_grp") == 0
    # a group lost behind the kept state; the point counted in it retired
    con = sim.con
    mp, org, grid, status = con.execute(
        "SELECT mp_no, org_no, grid_no, status_code FROM k_settle_mp WHERE status_code = '01' "
        "ORDER BY mp_no LIMIT 1").fetchone()
    con.execute("DELETE FROM k_settle_grp WHERE org_no = $o AND grid_no IS NOT DISTINCT FROM $g "
                "AND status_code = $s", {"o": org, "g": grid, "s": status})
    with _source(sim, "mis") as mis:
        _set(mis, "mis_metering_point", "mp_no", mp, END + timedelta(minutes=3), status_code="03")
    how = _pass(sim)
    assert (how["k_settle_mp"], how["k_settle_grp"]) == ("delta", "full"), how
    assert _fresh_differs(con, "k_settle_grp") == 0


def test_a_meter_moved_to_another_point_rebuilds_k_settle_mp(sim) -> None:
    """A meter's mp_no changed (Reverse.moved_by): the point it left is stale, so the kept table
    is rebuilt whole: the point it left (its only running meter) has none any more, the one it
    joined has one."""
    con = sim.con
    with _source(sim, "mis") as mis:
        meter, left = mis.execute(
            "SELECT meter_asset_no, mp_no FROM mis_meter m WHERE is_deleted = 0 AND status_code = '01' "
            "AND mp_no IN (SELECT mp_no FROM mis_metering_point WHERE mp_attr_code = '01' AND is_deleted = 0 "
            "AND status_code IN ('01', '02')) AND (SELECT COUNT(*) FROM mis_meter o WHERE o.mp_no = m.mp_no "
            "AND o.is_deleted = 0 AND o.status_code = '01') = 1 ORDER BY 1 LIMIT 1").fetchone()
        joined = mis.execute(
            "SELECT MAX(mp_no) FROM mis_metering_point WHERE mp_attr_code = '01' AND is_deleted = 0 "
            "AND status_code IN ('01', '02') AND mp_no <> ?", [left]).fetchone()[0]
        _set(mis, "mis_meter", "meter_asset_no", meter, END + timedelta(minutes=1), mp_no=joined)
    running = "SELECT run_meter FROM k_settle_mp WHERE mp_no = $p"
    assert con.execute(running, {"p": left}).fetchone()[0] is True
    assert _pass(sim)["k_settle_mp"] == "full"
    assert _fresh_differs(con, "k_settle_mp") == 0
    assert [con.execute(running, {"p": p}).fetchone()[0] for p in (left, joined)] == [False, True]


def test_more_keys_than_affected_max_rebuild_whole(sim, monkeypatch) -> None:
    """Past AFFECTED_MAX keys to re-derive a rebuild is cheaper than the refresh: taken, and
    the kept tables still equal a fresh build."""
    monkeypatch.setattr(prelude, "AFFECTED_MAX", 0)
    change_sources(sim, random.Random(5), END + timedelta(minutes=1))
    how = _pass(sim)
    assert {n for n, h in how.items() if h != "full"} == {"k_clock_off"}, how   # MARKED: its own path
    for name in sorted(FOLLOW):
        assert _fresh_differs(sim.con, name) == 0, name


CUSTOMER_KEPT = ("k_cust_grp", "k_cust_stock_grp", "k_cust_check", "k_cust_check_grp", "k_unit_book_ev",
                 "k_unit_book_n")


def test_kept_customer_tables_are_rebuilt_only_when_a_column_they_read_changed(sim) -> None:
    """A customer column none of them reads (sensitive_flag) leaves k_cust_grp,
    k_cust_stock_grp, k_cust_check, k_cust_check_grp and the book (k_unit_book_ev, _n) as they are (and
    re-derives the customer in k_cust_sensitive and k_cust_important, which now hold it; a code they do not read
    leaves it); a cancellation brings them up to date, by difference but for the book's running
    sum, the counts move to the cancelled groups and the customer leaves the books; a deleted
    code rebuilds those that read mis_code (the class look-up of k_cust_stock_grp, the voltage
    check of k_cust_check and its groups), not k_cust_grp nor the book."""
    con = sim.con
    cons = con.execute("SELECT MIN(cons_no) FROM mis_customer WHERE is_deleted = 0 "
                       "AND cancel_date IS NULL AND status_code <> '04'").fetchone()[0]
    cancelled = """SELECT (SELECT COALESCE(SUM(n), 0) FROM k_cust_grp WHERE cancel_date IS NOT NULL),
                          (SELECT COALESCE(SUM(n), 0) FROM k_cust_stock_grp WHERE cancel_date IS NOT NULL),
                          (SELECT COUNT(*) FROM k_cust_check WHERE cancel_date IS NOT NULL),
                          (SELECT COALESCE(SUM(n), 0) FROM k_cust_check_grp WHERE cancel_date IS NOT NULL)"""
    before = con.execute(cancelled).fetchone()
    on_books = ("SELECT arg_max(n, d) FROM k_unit_book_n "
                "WHERE unit_no = (SELECT unit_no FROM k_root) AND d <= CAST($end AS DATE)")
    books_before = con.execute(on_books, {"end": END}).fetchone()[0]
    with _source(sim, "mis") as mis:
        _set(mis, "mis_customer", "cons_no", cons, END + timedelta(minutes=1), sensitive_flag=1)
    how = _pass(sim)
    assert all(how[n] == "unchanged" for n in CUSTOMER_KEPT), how
    # the flag is what k_cust_sensitive and k_cust_important keep: the customer re-derived
    # (FOLLOW), now in both
    for name in ("k_cust_sensitive", "k_cust_important"):
        assert how[name] == "delta", how
        assert con.execute(f"SELECT COUNT(*) FROM {name} WHERE cons_no = $c",
                           {"c": cons}).fetchone()[0] == 1, name
        assert _fresh_differs(sim.con, name) == 0, name
    with _source(sim, "mis") as mis:
        _set(mis, "mis_customer", "cons_no", cons, END + timedelta(minutes=2),
             cancel_date=str(END.date()), status_code="04")
    how = _pass(sim)
    # the customer groups follow by difference from the customer's row images (OVER_IMAGED),
    # the customer's check is re-derived alone (FOLLOW) and its groups and the point groups by
    # difference from the refreshes (OVER_KEPT); the book's events by difference too, their
    # running sum rebuilt over them
    assert {n: how[n] for n in (*CUSTOMER_KEPT, *OVER_IMAGED, "k_settle_grp", "k_cust_sensitive",
                                "k_cust_important")} == {
        "k_cust_grp": "delta", "k_cust_stock_grp": "delta", "k_cust_area_grp": "delta",
        "k_tg_cust_grp": "delta", "k_settle_grp": "delta", "k_cust_check": "delta",
        "k_cust_check_grp": "delta", "k_unit_book_ev": "delta", "k_unit_book_n": "full",
        "k_cust_sensitive": "delta", "k_cust_important": "delta"}, how
    for name in (*CUSTOMER_KEPT, *OVER_IMAGED, "k_settle_grp", "k_cust_important"):
        assert _fresh_differs(sim.con, name) == 0, name
    assert con.execute(cancelled).fetchone() == tuple(n + 1 for n in before)
    # cancelled on END's day: off the books at the end of that day
    assert con.execute(on_books, {"end": END}).fetchone()[0] == books_before - 1
    with _source(sim, "mis") as mis:
        code = mis.execute("SELECT code_type, code_value FROM mis_code WHERE code_type = 'VOLT' "
                           "ORDER BY code_value LIMIT 1").fetchone()
        mis.execute("UPDATE mis_code SET is_deleted = 1, updated_at = ? WHERE code_type = ? "
                    "AND code_value = ?", [_stamp(END + timedelta(minutes=3)), *code])
    how = _pass(sim)
    assert {n: how[n] for n in (*CUSTOMER_KEPT, "k_cust_sensitive", "k_cust_important")} == {
        "k_cust_grp": "unchanged", "k_cust_stock_grp": "full", "k_cust_check": "full",
        "k_cust_check_grp": "full", "k_unit_book_ev": "unchanged", "k_unit_book_n": "unchanged",
        "k_cust_sensitive": "unchanged", "k_cust_important": "unchanged"}, how
    for name in CUSTOMER_KEPT:
        assert _fresh_differs(sim.con, name) == 0, name


def test_customer_groups_follow_new_customers_until_the_floor_day_moves(sim) -> None:
    """OVER_IMAGED: a customer added with a build date in the newest build month leaves the floor
    day where it is, and the customer groups take it by difference; one built in a later month
    moves the floor day a month on (the first day of the month 13 months before the newest build
    month), and every group of the customers, and of the points, is rebuilt on the new floor."""
    con = sim.con
    floor = con.execute("SELECT MIN(floor_day), MAX(floor_day) FROM k_cust_grp").fetchone()
    assert floor[0] == floor[1]
    newest = con.execute("SELECT MAX(COALESCE(build_date, CAST(created_at AS DATE))) FROM mis_customer "
                         "WHERE is_deleted = 0").fetchone()[0]
    grouped = list(OVER_IMAGED) + ["k_settle_grp"]

    def add(cons_no: str, built: date, at: datetime) -> None:
        with _source(sim, "mis") as mis:
            cols = [r[1] for r in mis.execute("PRAGMA table_info(mis_customer)")]
            row = dict(zip(cols, mis.execute("SELECT * FROM mis_customer WHERE is_deleted = 0 "
                                             "AND cancel_date IS NULL ORDER BY cons_no LIMIT 1").fetchone()))
            row.update(cons_no=cons_no, build_date=str(built), ps_date=str(built), created_at=_stamp(at),
                       updated_at=_stamp(at))
            mis.execute(f"INSERT INTO mis_customer ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        list(row.values()))

    add("9900000000000001", newest.replace(day=1), END + timedelta(minutes=1))
    how = _pass(sim)
    assert {n: how[n] for n in grouped} == {"k_cust_grp": "delta", "k_cust_stock_grp": "delta",
                                            "k_cust_area_grp": "delta", "k_tg_cust_grp": "delta",
                                            "k_unit_book_ev": "delta", "k_settle_grp": "unchanged"}, how
    assert con.execute("SELECT DISTINCT floor_day FROM k_cust_grp").fetchall() == [(floor[0],)]
    for name in grouped:
        assert _fresh_differs(con, name) == 0, name
    later = (newest.replace(day=1) + timedelta(days=40)).replace(day=3)
    add("9900000000000002", later, END + timedelta(minutes=2))
    how = _pass(sim)
    # the book's events clamp no date at the floor: they follow the new customer still
    assert {n: how[n] for n in grouped} == {n: "delta" if n == "k_unit_book_ev" else "full"
                                            for n in grouped}, how
    moved = con.execute("SELECT DISTINCT floor_day FROM k_cust_grp").fetchall()
    assert moved == [((floor[0].replace(day=1) + timedelta(days=40)).replace(day=1),)]
    for name in grouped:
        assert _fresh_differs(con, name) == 0, name


def test_cust_counts_from_the_kept_groups_equal_the_customers_grouped(sim) -> None:
    """cust_counts(lo, hi) reads the kept groups when lo is not below their floor day and the
    customers otherwise: either way it equals the customers grouped with their dates clamped to
    [lo - 1, hi + 1] (cancel [lo, hi + 1]), written out here without the prelude's macros. Spans
    below the floor and across it check the choice of source (the sources have customers built
    and cancelled on either side of the floor)."""
    con = sim.con
    floor = con.execute("SELECT MIN(floor_day), MAX(floor_day) FROM k_cust_grp").fetchone()
    assert floor[0] == floor[1] is not None
    floor = floor[0]
    sides = con.execute("""SELECT COUNT(*) FILTER (WHERE b < $f), COUNT(*) FILTER (WHERE b >= $f)
                           FROM (SELECT COALESCE(build_date, CAST(created_at AS DATE)) AS b
                                 FROM mis_customer WHERE is_deleted = 0)""", {"f": floor}).fetchone()
    assert min(sides) > 0, sides
    by_hand = """
        SELECT org_no, grid_no, status_code,
               CASE WHEN bd < $lo THEN $lo - 1 WHEN bd > $hi THEN $hi + 1 ELSE bd END AS b,
               CASE WHEN cancel_date > $hi THEN $hi + 1 WHEN cancel_date < $lo THEN $lo
                    ELSE cancel_date END AS c,
               COUNT(*) AS n
        FROM (SELECT *, COALESCE(build_date, CAST(created_at AS DATE)) AS bd FROM mis_customer
              WHERE is_deleted = 0)
        GROUP BY ALL ORDER BY ALL"""
    end = END.date()
    spans = [(floor, floor), (floor + timedelta(days=40), floor + timedelta(days=75)),
             (end - timedelta(days=3), end), (floor - timedelta(days=200), floor - timedelta(days=1)),
             (floor - timedelta(days=30), end)]
    for lo, hi in spans:
        got = con.execute("SELECT * FROM cust_counts(CAST($lo AS DATE), CAST($hi AS DATE)) "
                          "ORDER BY ALL", {"lo": lo, "hi": hi}).fetchall()
        assert got == con.execute(by_hand, {"lo": lo, "hi": hi}).fetchall(), (lo, hi)


def test_customer_stock_groups_from_the_kept_groups_equal_the_customers_grouped(sim) -> None:
    """k_cust_groups (the archive stocks' reduced facts) reads the kept groups when the first te
    day is not below their floor day, the customers otherwise: either way some of its counts
    equal the customers grouped by hand with their dates clamped to the te days' span."""
    from kpis import shared
    con = sim.con
    floor = con.execute("SELECT MIN(floor_day) FROM k_cust_stock_grp").fetchone()[0]
    by_hand = f"""
        SELECT c.org_no, c.grid_no, c.status_code,
               {CLAMPED},
               COUNT(*), COUNT(*) FILTER (WHERE e.parent_value = '2'),
               COUNT(*) FILTER (WHERE c.dg_flag = 1),
               SUM(CAST(COALESCE(c.contract_cap, 0) / 1000.0 AS DECIMAL(38, 9)))
        FROM {CUSTOMERS}
        LEFT JOIN mis_code e ON e.code_type = 'ELEC_TYPE' AND e.code_value = c.elec_type_code
                            AND e.is_deleted = 0
        GROUP BY ALL ORDER BY ALL"""
    end = END.date()
    for lo, hi in [(floor, floor + timedelta(days=20)), (end - timedelta(days=2), end),
                   (floor - timedelta(days=60), floor - timedelta(days=1)),
                   (floor - timedelta(days=10), end)]:
        con.execute("CREATE OR REPLACE TEMP TABLE _periods AS SELECT 0 AS pid, "
                    "CAST($lo AS TIMESTAMP) + INTERVAL 1 DAY AS te UNION ALL SELECT 1, "
                    "CAST($hi AS TIMESTAMP) + INTERVAL 1 DAY", {"lo": lo, "hi": hi})
        got = con.execute(f"""SELECT org_no, grid_no, status_code, bd, cancel_date, n,
                                     n_residential, n_dg, cap_mva
                              FROM ({shared.definitions()['k_cust_groups']}) ORDER BY ALL""").fetchall()
        assert got == con.execute(by_hand, {"lo": lo, "hi": hi}).fetchall(), (lo, hi)


def _same_over_spans(con: duckdb.DuckDBPyConnection, got: str, by_hand: str, floor: date) -> None:
    """`got` and `by_hand` (both reading $lo and $hi) give the same rows for a span of days at
    or above the kept groups' floor day, one below it and one across it."""
    end = END.date()
    for lo, hi in [(floor, end), (floor - timedelta(days=45), floor - timedelta(days=2)),
                   (floor - timedelta(days=3), floor + timedelta(days=3))]:
        assert con.execute(got, {"lo": lo, "hi": hi}).fetchall() == \
            con.execute(by_hand, {"lo": lo, "hi": hi}).fetchall(), (lo, hi)


def test_archive_check_groups_equal_the_checked_customers_grouped_by_hand(sim) -> None:
    """check_groups (the reduced facts of customer.archive_completeness_rate): from the kept
    groups at or above their floor day, from k_cust_check below it, equal to the checked
    customers grouped by hand with their complete ones counted."""
    con = sim.con
    floor = con.execute("SELECT MIN(floor_day) FROM k_cust_check_grp").fetchone()[0]
    assert con.execute("SELECT COUNT(*) FILTER (WHERE num = 0), COUNT(*) FILTER (WHERE num = 1) "
                       "FROM k_cust_check").fetchone() > (0, 0)
    by_hand = f"""
        SELECT org_no, grid_no, status_code, {CLAMPED}, SUM(num), COUNT(*)
        FROM (SELECT *, COALESCE(build_date, CAST(created_at AS DATE)) AS bd FROM k_cust_check)
        GROUP BY ALL ORDER BY ALL"""
    got = "SELECT * FROM check_groups(CAST($lo AS DATE), CAST($hi AS DATE)) ORDER BY ALL"
    _same_over_spans(con, got, by_hand, floor)


def test_customer_area_groups_equal_the_customers_joined_to_their_tg_by_hand(sim) -> None:
    """cust_area_groups (the populations of rs1_urban and rs1_rural): from the kept groups at or
    above their floor day, from the customers below it, equal to the customers joined to their
    settlement 台区 and grouped by hand; a 台区 moved to another area rebuilds the kept groups
    (GATED on dist_tg.rel_area_code) and moves its customers' counts."""
    con = sim.con
    floor = con.execute("SELECT MIN(floor_day) FROM k_cust_area_grp").fetchone()[0]
    by_hand = f"""
        SELECT c.org_no, c.grid_no, c.status_code, t.rel_area_code,
               {CLAMPED}, COUNT(*)
        FROM {CUSTOMERS}
        JOIN {TG_OF} ON s.cons_no = c.cons_no
        JOIN dist_tg t ON t.tg_no = s.tg_no AND t.is_deleted = 0
        GROUP BY ALL ORDER BY ALL"""
    got = "SELECT * FROM cust_area_groups(CAST($lo AS DATE), CAST($hi AS DATE)) ORDER BY ALL"
    _same_over_spans(con, got, by_hand, floor)
    tg, area, n = con.execute("""SELECT t.tg_no, t.rel_area_code, COUNT(*) FROM k_settle_tg s
                                 JOIN dist_tg t ON t.tg_no = s.tg_no AND t.is_deleted = 0
                                 JOIN mis_customer c ON c.cons_no = s.cons_no AND c.is_deleted = 0
                                 GROUP BY ALL ORDER BY 3 DESC, 1 LIMIT 1""").fetchone()
    other = "04" if area != "04" else "01"
    in_area = "SELECT SUM(n) FROM k_cust_area_grp WHERE rel_area_code = $a"
    before = con.execute(in_area, {"a": other}).fetchone()[0] or 0
    with _source(sim, "dist") as dist:
        _set(dist, "dist_tg", "tg_no", tg, END + timedelta(minutes=1), rel_area_code=other)
    assert _pass(sim)["k_cust_area_grp"] == "full"
    assert _fresh_differs(con, "k_cust_area_grp") == 0
    assert con.execute(in_area, {"a": other}).fetchone()[0] == before + n


def test_customers_per_tg_from_the_kept_groups_equal_the_customers_counted_by_hand(sim) -> None:
    """tg_cust_groups (NTG of the reliability KPIs) from the kept groups at or above their floor
    day and from the customers below it equals the customers counted per settlement 台区 by
    hand; a customer's point moved to another 台区 rebuilds the kept groups and moves the count."""
    con = sim.con
    floor = con.execute("SELECT MIN(floor_day) FROM k_tg_cust_grp").fetchone()[0]
    by_hand = f"""
        SELECT s.tg_no, c.status_code,
               {CLAMPED}, COUNT(*)
        FROM {CUSTOMERS}
        JOIN {TG_OF} ON s.cons_no = c.cons_no
        GROUP BY ALL ORDER BY ALL"""
    got = "SELECT * FROM tg_cust_groups(CAST($lo AS DATE), CAST($hi AS DATE)) ORDER BY ALL"
    _same_over_spans(con, got, by_hand, floor)
    mp, cons, tg = con.execute("""SELECT m.mp_no, m.cons_no, s.tg_no FROM mis_metering_point m
                                  JOIN k_settle_tg s ON s.mp_no = m.mp_no
                                  JOIN mis_customer c ON c.cons_no = m.cons_no AND c.is_deleted = 0
                                  ORDER BY m.mp_no LIMIT 1""").fetchone()
    other = con.execute("SELECT MIN(tg_no) FROM dist_tg WHERE tg_no <> $t", {"t": tg}).fetchone()[0]
    at_tg = "SELECT COALESCE(SUM(n), 0) FROM k_tg_cust_grp WHERE tg_no = $t"
    before = con.execute(at_tg, {"t": other}).fetchone()[0]
    with _source(sim, "mis") as mis:
        _set(mis, "mis_metering_point", "mp_no", mp, END + timedelta(minutes=1), tg_no=other)
    assert _pass(sim)["k_tg_cust_grp"] == "full"
    assert _fresh_differs(con, "k_tg_cust_grp") == 0
    assert con.execute(at_tg, {"t": other}).fetchone()[0] == before + 1


def test_point_stock_groups_from_the_kept_groups_equal_the_points_grouped(sim) -> None:
    """k_settle_groups (the point stocks' reduced facts) from the kept groups (k_settle_grp) at
    or above their floor day and from the points below it: some of its counts equal the points
    of k_settle_mp grouped by hand with their customer's dates clamped to the te days' span."""
    from kpis import shared
    con = sim.con
    floor = con.execute("SELECT MIN(floor_day) FROM k_settle_grp").fetchone()[0]
    by_hand = f"""
        SELECT org_no, grid_no, status_code, {CLAMPED}, COUNT(*),
               COUNT(*) FILTER (WHERE run_meter AND covered),
               COALESCE(SUM(rel_same) FILTER (WHERE rel_n > 0 AND cons_sort_code IN ('02', '03')), 0)
        FROM (SELECT *, COALESCE(build_date, CAST(created_at AS DATE)) AS bd FROM k_settle_mp)
        GROUP BY ALL ORDER BY ALL"""
    got = f"""WITH _periods AS (SELECT CAST($lo AS TIMESTAMP) + INTERVAL 1 DAY AS te
                                UNION ALL SELECT CAST($hi AS TIMESTAMP) + INTERVAL 1 DAY)
              SELECT org_no, grid_no, status_code, bd, cancel_date, n, n_run_meter_covered,
                     lv_rel_same
              FROM ({shared.definitions()['k_settle_groups']}) ORDER BY ALL"""
    _same_over_spans(con, got, by_hand, floor)
