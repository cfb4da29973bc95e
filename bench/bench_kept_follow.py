"""What keeping k_settle_mp per key costs a pass (kpis/prelude.py FOLLOW with Reverse links,
session 24) against rebuilding it whole (GATED, sessions 10-23), when an ETL run changed a few
meters and terminals: a meter failed or set running again (mis_meter.status_code), a terminal
stopped or started (meter_terminal.run_status), the columns `run_meter` and `covered` read.

Usage: python bench/bench_kept_follow.py --data-dir DIR [--meters 20] [--terminals 2] [--rounds 3]
DIR holds a warehouse.duckdb as the worker leaves it (read only: the bench works on a copy in
DIR, removed at the end). Each round changes the rows in the copy and writes the ETL's record of
a run that merged them (etl_run, etl_keys, etl_changed: what etl/load.py writes), then times
refresh_on_demand for k_settle_mp (the per-key refresh) with k_settle_grp (its groups by
difference, session 25) against whole builds of the two tables; both refreshed tables are checked
equal to their whole builds (multiset) every round. Last, a
minute's heartbeats of every terminal with a new terminal among them, as a city minute merges
them now and then: the refresh of k_settle_mp and k_settle_grp against their two whole builds.
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kpis import prelude  # noqa: E402


def record_run(con: duckdb.DuckDBPyConnection, run: int, source: str, table: str, keys: list[str],
               column: str, at: datetime) -> None:
    con.execute("INSERT INTO etl_run (run_id, source, table_name, window_low, window_high, rows_read, "
                "rows_merged, rows_rejected, status, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 'ok', ?)",
                [run, source, table, at - timedelta(minutes=1), at, len(keys), len(keys), at])
    con.execute("INSERT INTO etl_keys SELECT ?, ?, ?, unnest(?)", [run, source, table, keys])
    con.execute("INSERT INTO etl_changed SELECT ?, ?, ?, unnest(['', ?])", [run, source, table, column])


def heartbeats(con: duckdb.DuckDBPyConnection, stmt: str) -> None:
    """A minute's heartbeats of every terminal with a new terminal among them (over etl_keys'
    limit: one NULL key, and the added key in etl_added_keys), as the ETL records them: the
    refresh of k_settle_mp and k_settle_grp against the whole builds that the GATED rule did."""
    run = con.execute("SELECT MAX(run_id) + 1 FROM etl_run").fetchone()[0]
    at = datetime(2030, 1, 2)
    con.execute("BEGIN")
    n = con.execute("UPDATE meter_terminal SET last_online_time = ?, updated_at = ?", [at, at]).fetchone()[0]
    con.execute("INSERT INTO meter_terminal SELECT * REPLACE ('TNEWBENCH' AS terminal_id, ? AS created_at, "
                "? AS updated_at) FROM meter_terminal ORDER BY terminal_id LIMIT 1", [at, at])
    con.execute("INSERT INTO etl_run (run_id, source, table_name, window_low, window_high, rows_read, "
                "rows_merged, rows_rejected, status, started_at) VALUES (?, 'meter', 'meter_terminal', ?, ?, "
                "?, ?, 0, 'ok', ?)", [run, at - timedelta(minutes=1), at, n + 1, n + 1, at])
    con.execute("INSERT INTO etl_keys VALUES (?, 'meter', 'meter_terminal', NULL)", [run])
    con.execute("INSERT INTO etl_added_keys VALUES (?, 'meter', 'meter_terminal', 'TNEWBENCH')", [run])
    con.execute("INSERT INTO etl_changed SELECT ?, 'meter', 'meter_terminal', unnest(['', '*', "
                "'last_online_time', 'updated_at'])", [run])
    con.execute("COMMIT")
    t = time.perf_counter()
    how = prelude.refresh_on_demand(con, ["k_settle_mp", "k_settle_grp"])
    refresh = time.perf_counter() - t
    grp = next(s for s in prelude.statements() if s.startswith("CREATE OR REPLACE TABLE k_settle_grp "))
    con.execute("BEGIN")
    t = time.perf_counter()
    con.execute("SET force_compression = 'uncompressed'")
    con.execute(stmt)
    con.execute(grp)
    con.execute("RESET force_compression")
    whole = time.perf_counter() - t
    con.execute("ROLLBACK")
    print(f"{n} terminals' heartbeats with a new terminal: refresh of k_settle_mp ({how['k_settle_mp']}) and "
          f"k_settle_grp ({how['k_settle_grp']}) {refresh:.3f} s; the two whole builds (the GATED rule) "
          f"{whole:.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--meters", type=int, default=20)
    ap.add_argument("--terminals", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    copy = args.data_dir / "warehouse.bench_kept_follow.duckdb"
    shutil.copy(args.data_dir / "warehouse.duckdb", copy)
    wal = args.data_dir / "warehouse.duckdb.wal"
    if wal.exists():
        shutil.copy(wal, copy.with_name(copy.name + ".wal"))
    rng = random.Random(1)
    try:
        con = duckdb.connect(str(copy), config={"threads": 2, "memory_limit": "4GB"})
        prelude.apply_prelude(con, needed=())
        t = time.perf_counter()
        how = prelude.refresh_on_demand(con, ["k_settle_mp"])
        print(f"k_settle_mp brought up to date first: {how['k_settle_mp']} in {time.perf_counter() - t:.2f} s "
              f"({con.execute('SELECT COUNT(*) FROM k_settle_mp').fetchone()[0]} points)")
        stmt = next(s for s in prelude.statements() if s.startswith("CREATE OR REPLACE TABLE k_settle_mp "))
        grp = next(s for s in prelude.statements() if s.startswith("CREATE OR REPLACE TABLE k_settle_grp "))
        prelude.refresh_on_demand(con, ["k_settle_mp", "k_settle_grp"])
        grp_delta: list[float] = []
        over_delta = prelude._over_delta

        def timed_delta(*a: object) -> bool:
            t = time.perf_counter()
            try:
                return over_delta(*a)
            finally:
                grp_delta.append(time.perf_counter() - t)
        prelude._over_delta = timed_delta
        for r in range(args.rounds):
            run = con.execute("SELECT MAX(run_id) + 1 FROM etl_run").fetchone()[0]
            at = datetime(2030, 1, 1) + timedelta(minutes=r)
            meters = [m for (m,) in con.execute(
                "SELECT meter_asset_no FROM mis_meter WHERE is_deleted = 0 AND mp_no LIKE 'MP%' "
                f"AND status_code IN ('01', '04') USING SAMPLE reservoir(200 ROWS) REPEATABLE ({r + 1})"
            ).fetchall()][:args.meters]
            terms = [t for (t,) in con.execute("SELECT terminal_id FROM meter_terminal ORDER BY 1").fetchall()]
            terms = rng.sample(terms, args.terminals)
            con.execute("BEGIN")
            con.execute("UPDATE mis_meter SET status_code = CASE status_code WHEN '01' THEN '04' ELSE '01' END, "
                        "updated_at = ? WHERE list_contains(?, meter_asset_no)", [at, meters])
            con.execute("UPDATE meter_terminal SET run_status = CASE run_status WHEN '01' THEN '02' ELSE '01' END, "
                        "updated_at = ? WHERE list_contains(?, terminal_id)", [at, terms])
            record_run(con, run, "mis", "mis_meter", meters, "status_code", at)
            record_run(con, run, "meter", "meter_terminal", terms, "run_status", at)
            con.execute("COMMIT")
            affected = con.execute(
                "SELECT COUNT(DISTINCT mp_no) FROM mis_meter WHERE list_contains(?, meter_asset_no) OR "
                "meter_asset_no IN (SELECT meter_asset_no FROM meter_coll_obj WHERE list_contains(?, terminal_id))",
                [meters, terms]).fetchone()[0]
            # as a pass that reads both does: the point groups follow the points' rows
            grp_delta.clear()
            t = time.perf_counter()
            how = prelude.refresh_on_demand(con, ["k_settle_mp", "k_settle_grp"])
            refresh = time.perf_counter() - t
            con.execute("BEGIN")
            t = time.perf_counter()
            con.execute("SET force_compression = 'uncompressed'")     # as kpis/prelude.py _full
            con.execute(stmt.replace("CREATE OR REPLACE TABLE k_settle_mp ",
                                     "CREATE OR REPLACE TABLE _whole ", 1))
            con.execute("RESET force_compression")
            whole = time.perf_counter() - t
            t = time.perf_counter()
            con.execute(grp.replace("CREATE OR REPLACE TABLE k_settle_grp ",
                                    "CREATE OR REPLACE TABLE _whole_grp ", 1))
            whole_grp = time.perf_counter() - t
            differ = [con.execute(f"SELECT (SELECT COUNT(*) FROM (SELECT * FROM {a} EXCEPT ALL "
                                  f"SELECT * FROM {b})) + (SELECT COUNT(*) FROM (SELECT * FROM {b} "
                                  f"EXCEPT ALL SELECT * FROM {a}))").fetchone()[0]
                      for a, b in (("k_settle_mp", "_whole"), ("k_settle_grp", "_whole_grp"))]
            con.execute("ROLLBACK")
            print(f"round {r + 1}: {len(meters)} meters, {len(terms)} terminals changed ({affected} points): "
                  f"refresh of k_settle_mp ({how['k_settle_mp']}) and k_settle_grp ({how['k_settle_grp']}) "
                  f"{refresh:.3f} s, of which the groups' difference {sum(grp_delta):.3f} s; whole builds "
                  f"{whole:.3f} s and {whole_grp:.3f} s; rows that differ: {differ[0]} and {differ[1]}")
        heartbeats(con, stmt)
        con.close()
    finally:
        copy.unlink(missing_ok=True)
        copy.with_name(copy.name + ".wal").unlink(missing_ok=True)
    print(f"reproduce: python bench/bench_kept_follow.py --data-dir {args.data_dir} --meters {args.meters} "
          f"--terminals {args.terminals} --rounds {args.rounds}")


if __name__ == "__main__":
    main()
