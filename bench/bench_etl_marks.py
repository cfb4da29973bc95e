"""What the ETL's change records cost a merge: the dirty dates with their changed columns and
the run's changed columns (etl/load.py _flags_sql, _dirty_flagged_sql, _changed_sql), against
the records before session 22 (dates without columns, and the markers from their own join);
and the row images a batch of up to IMAGE_MAX_ROWS rows keeps (etl/load.py _keep_images,
session 23), each round a run of its own into the same image table.

Usage: python bench/bench_etl_marks.py --data-dir DIR
DIR holds a warehouse.duckdb (read only). For each case, the first N rows of a table are taken
as the stored versions (_old) and, with updated_at moved on a minute (and, where named, one
more column), as the merged rows (_chg), as a merge of a minute finds them; 3 of them are given
new keys (new rows). Each figure is the fastest of 7 runs of the statements in an in-memory
DuckDB with 2 threads. A city minute merges ~100 k meter_terminal heartbeats and tens of rows
of a dozen other tables.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from etl import load  # noqa: E402
from etl.contract import load_contract  # noqa: E402
from etl.rules import table_rules  # noqa: E402

CASES = (("meter_terminal", 100_000, "last_online_time"), ("cs_work_order", 2_000, "close_time"),
         ("cs_work_order", 20, "close_time"), ("dist_repair_task", 20, "arrive_time"),
         ("meter_collection_daily", 20, "success_time"))


def before(rules: load.TableRules, table: load.Table) -> list[str]:
    """The records as etl/load.py wrote them before session 22."""
    dates = "[" + ", ".join(rules.business_dates) + "]"
    cols = [c.name for c in table.columns if c.name not in table.key]
    found = f"o.{load.q(table.key[0])} IS NOT NULL"
    flags = "".join(f", bool_or(o.{load.q(c)} IS DISTINCT FROM c.{load.q(c)}) FILTER (WHERE {found}) AS f{i}"
                    for i, c in enumerate(cols))
    marks = ", ".join(["''", "CASE WHEN n > 0 THEN '*' END"]
                      + [f"CASE WHEN f{i} THEN '{c}' END" for i, c in enumerate(cols)])
    return [f"SELECT DISTINCT d FROM (SELECT unnest({dates}) AS d FROM _chg UNION ALL "
            f"SELECT unnest({dates}) FROM _old) WHERE d IS NOT NULL",
            f"SELECT unnest(list_filter([{marks}], x -> x IS NOT NULL)) FROM (SELECT count(*) "
            f"FILTER (WHERE NOT {found}) AS n{flags} FROM _chg c LEFT JOIN _old o "
            f"ON {load._key_join(table, 'o', 'c')})"]


def now(rules: load.TableRules, table: load.Table) -> list[str]:
    return [f"CREATE OR REPLACE TEMP TABLE _dflags AS {load._flags_sql(rules, table)}",
            load._dirty_flagged_sql(table), load._changed_sql(table).replace("?, ?, ?,", "")]


def images(con: duckdb.DuckDBPyConnection, table: load.Table) -> float:
    """The fastest of 7 batches' images, each the first batch of a new run."""
    con.execute(f"CREATE OR REPLACE TABLE {table.name} AS SELECT * FROM w.{table.name} LIMIT 0")
    con.execute(f"DROP TABLE IF EXISTS {load.IMAGE_PREFIX}{table.name}")
    con.execute("CREATE OR REPLACE TABLE etl_image_run (run_id BIGINT, source VARCHAR, "
                "table_name VARCHAR, kept BOOLEAN)")
    times = []
    for run in range(7):
        t = time.perf_counter()
        load._keep_images(con, table, run, "x", again=False)
        times.append(time.perf_counter() - t)
    return min(times)


def fastest(con: duckdb.DuckDBPyConnection, statements: list[str]) -> float:
    times = []
    for _ in range(7):
        t = time.perf_counter()
        for s in statements:
            con.execute(s).fetchall()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    args = ap.parse_args()
    contract = load_contract()
    con = duckdb.connect(config={"threads": 2})
    con.execute(f"ATTACH '{args.data_dir / 'warehouse.duckdb'}' AS w (READ_ONLY)")
    for name, n, col in CASES:
        table = contract.tables[name]
        rules = table_rules(table, contract)
        key = load.q(table.key[0])
        con.execute(f"CREATE OR REPLACE TEMP TABLE _old AS SELECT * FROM w.{name} LIMIT {n}")
        con.execute(f"CREATE OR REPLACE TEMP TABLE _chg AS SELECT * REPLACE (COALESCE({col}, "
                    "TIMESTAMP '2026-01-01') + INTERVAL 1 MINUTE AS "
                    f"{col}, updated_at + INTERVAL 1 MINUTE AS updated_at) FROM _old")
        con.execute(f"INSERT INTO _chg SELECT * REPLACE ('NEW' || {key} AS {key}) FROM _old LIMIT 3")
        b, a = fastest(con, before(rules, table)), fastest(con, now(rules, table))
        kept = (f"row images {images(con, table) * 1000:.1f} ms" if n <= load.IMAGE_MAX_ROWS
                else "no row images (over IMAGE_MAX_ROWS)")
        print(f"{name}, {n} rows ({col} moved): before {b * 1000:.1f} ms, with columns per date "
              f"{a * 1000:.1f} ms; {kept}")
    print(f"reproduce: python bench/bench_etl_marks.py --data-dir {args.data_dir}")


if __name__ == "__main__":
    main()
