"""kpis/carry.py: a collection day stored before it settled, brought forward by difference.

Hand-worked with metering.daily_collect_success_rate (a reading of day D counts when collected
successfully before 09:00 of D+1 and by as_of; per org and grid; P is the root, S1 and S2 its
供电所 under K1, grids G1 of S1 and G2 of S2). Day D = 2024-07-01. Each step edits readings as
an ETL run would merge them: the table, its row images (the version before and after), the
dirty date with the changed columns, the run log. Then kpis.evaluate.evaluate_incremental runs
as the worker does, and the test checks both which days were brought forward and the values.

Readings of D at the start (every meter in collection scope, 台区 TG1 -> S1/G1, TG2 -> S2/G2):
  E1 S1 success 01:00          E7 S2 failed (02)
  E2 S1 failed (02)            E8 S2 success 00:50
  E3 S1 success 01:51:30 (stamped after the first pass's as_of: a replayed source)
"""
from __future__ import annotations

from datetime import date, datetime

import duckdb
import pytest

from etl.warehouse import BOOKKEEPING
from kpis import carry
from kpis.evaluate import evaluate_incremental
from kpis.registry import Registry, load_registry
from tests.kpis.harness import load_inputs

KPI = "metering.daily_collect_success_rate"
D = date(2024, 7, 1)
TABLE = "meter_collection_daily"


def reading(meter: str, org: str, tg: str, status: str, success: str | None = None) -> dict:
    return {"meter_asset_no": meter, "data_date": str(D), "org_no": org, "tg_no": tg,
            "coll_status": status, "terminal_id": "T1", "success_time": success}


@pytest.fixture()
def con():
    c = duckdb.connect()
    scope = [{"meter_asset_no": m, "org_no": o, "tg_no": t, "status_code": "01", "coll_flag": 1,
              "terminal_id": "T1"}
             for m, o, t in (("E1", "S1", "TG1"), ("E2", "S1", "TG1"), ("E3", "S1", "TG1"),
                             ("E7", "S2", "TG2"), ("E8", "S2", "TG2"), ("E9", "S1", "TG1"))]
    load_inputs(c, {"calendar": "2024-06-01..2024-07-31", "inputs": {
        "dist_tg": [{"tg_no": t, "tg_name": t, "feeder_no": "F1", "pub_priv_flag": "01",
                     "org_no": o, "grid_no": g, "urban_rural": "01", "run_status": "01",
                     "rel_area_code": "01"} for t, o, g in (("TG1", "S1", "G1"), ("TG2", "S2", "G2"))],
        "meter_terminal": [{"terminal_id": "T1", "terminal_type": "01", "org_no": "S1",
                            "run_status": "01"}],
        "meter_coll_obj": scope,
        TABLE: [reading("E1", "S1", "TG1", "01", "2024-07-02 01:00:00"),
                reading("E2", "S1", "TG1", "02"),
                reading("E3", "S1", "TG1", "01", "2024-07-02 01:51:30"),
                reading("E7", "S2", "TG2", "02"),
                reading("E8", "S2", "TG2", "01", "2024-07-02 00:50:00")]}})
    for stmt in BOOKKEEPING:
        c.execute(stmt)
    c.execute(f"CREATE TABLE etl_image__{TABLE} AS SELECT CAST(NULL AS BIGINT) AS _run_id, "
              f"CAST(NULL AS BOOLEAN) AS _after, * FROM {TABLE} LIMIT 0")
    # run 1: the first load of every table (no images: a first load keeps none)
    for t in ("dist_tg", "meter_terminal", "meter_coll_obj", TABLE, "mis_org", "mis_grid"):
        c.execute("INSERT INTO etl_run (run_id, source, table_name, rows_merged) VALUES (1, 'x', ?, 5)", [t])
    c.execute("INSERT INTO etl_dirty VALUES (1, 'meter', ?, ?, NULL)", [TABLE, D])
    yield c
    c.close()


@pytest.fixture(scope="module")
def registry() -> Registry:
    full = load_registry()
    return Registry(kpis={KPI: full.get(KPI)}, where={KPI: full.where[KPI]})


def merge(con: duckdb.DuckDBPyConnection, run: int, edits: dict[str, str | dict]) -> None:
    """One ETL run merging readings of D: meter -> the SET clause of its change, or a new row.
    Writes what etl/load.py writes for a batch that keeps its images."""
    stamp = "TIMESTAMP '2024-07-02 12:00:00'"
    changed = {"updated_at"}
    for meter, edit in edits.items():
        con.execute(f"INSERT INTO etl_image__{TABLE} SELECT ?, FALSE, * FROM {TABLE} "
                    "WHERE meter_asset_no = ? AND data_date = ?", [run, meter, D])
        if isinstance(edit, dict):
            load_inputs_row(con, edit)
            changed.add("*")
        else:
            con.execute(f"UPDATE {TABLE} SET {edit}, updated_at = {stamp} "
                        "WHERE meter_asset_no = ? AND data_date = ?", [meter, D])
            changed |= {part.split("=")[0].strip() for part in edit.split(",")}
        con.execute(f"INSERT INTO etl_image__{TABLE} SELECT ?, TRUE, * FROM {TABLE} "
                    "WHERE meter_asset_no = ? AND data_date = ?", [run, meter, D])
    cols = sorted(changed - {"*"})
    con.execute("INSERT INTO etl_run (run_id, source, table_name, rows_merged) VALUES (?, 'meter', ?, ?)",
                [run, TABLE, len(edits)])
    con.execute("INSERT INTO etl_dirty VALUES (?, 'meter', ?, ?, ?)",
                [run, TABLE, D, None if "*" in changed else cols])
    for col in ["", *(["*"] if "*" in changed else []), *cols]:
        con.execute("INSERT INTO etl_changed VALUES (?, 'meter', ?, ?)", [run, TABLE, col])
    con.execute("INSERT INTO etl_image_run VALUES (?, 'meter', ?, TRUE)", [run, TABLE])


def load_inputs_row(con: duckdb.DuckDBPyConnection, row: dict) -> None:
    """A new reading, typed as the harness types its inputs."""
    from etl.contract import load_contract
    table = load_contract().tables[TABLE]
    values = [row.get(c, table.column(c).default.strip("'") if table.column(c).default else None)
              for c in table.column_names]
    values = [("2024-07-02 12:00:00" if c in ("created_at", "updated_at") and v is None else v)
              for c, v in zip(table.column_names, values)]
    con.execute(f"INSERT INTO {TABLE} VALUES ("
                + ", ".join(f"CAST(? AS {table.column(c).duckdb_type})" for c in table.column_names)
                + ")", [None if v is None else str(v) for v in values])


def rows(con: duckdb.DuckDBPyConnection, grain: str = "daily", start: str = "2024-07-01"
         ) -> dict[str, tuple[float, float] | None]:
    """org -> (numerator, denominator) of D (None: no value) for P, S1, S2, G1, G2."""
    got = dict(((org, (num, den) if value is not None else None)
                for org, num, den, value in con.execute(
                    "SELECT org_no, numerator, denominator, value FROM kpi_value WHERE kpi_id = ? "
                    "AND grain = ? AND period_start = CAST(? AS TIMESTAMP) "
                    "QUALIFY row_number() OVER (PARTITION BY org_no ORDER BY computed_at DESC) = 1",
                    [KPI, grain, start]).fetchall()))
    return {org: got.get(org) for org in ("P", "S1", "S2", "G1", "G2")}


def test_an_unsettled_collection_day_is_brought_forward_by_its_changed_readings(con, registry,
                                                                               monkeypatch):
    """Per step: the readings changed, whether D was brought forward, and D's (num, den) by hand.

    01:50 first pass (read): E1, E8 count; E3's success 01:51:30 has not happened.
          S1 1/3, S2 1/2, P 2/5. D is stored with its rows although it settles at 09:00.
    01:53 run 2: E2 retried, success 01:52. Brought forward: stored + after - before over E2
          (0 -> 1), and E3, unchanged, which as_of_moves names (01:51:30 in (01:50, 01:53]):
          0 at 01:50, 1 at 01:53. S1 3/3, S2 1/2, P 4/5.
    01:56 run 3: E7 retried, success 01:55 (S2 +1); E1 corrected to a failure (S1 -1).
          S1 2/3, S2 2/2, P 4/5, brought forward again from 01:53's rows.
    01:59 run 4: E7 and E8 deleted at the source. S2/G2's sums come out 0/0: it may have lost its
          last reading or keep readings that sum to nothing; the store cannot tell, so D is read.
          S1 2/3, S2 no value (no reading), P 2/3.
    02:00:30 a new hour: a sweep reads D (nothing changed).
    02:03 run 5: a new reading E9 (S1, success 02:01): an after image and no before.
          S1 3/4, P 3/4, brought forward from the sweep's rows.
    The month to date (July) sums D with 07-02 (no readings): the same numbers as D."""
    calls: list[dict[int, list[date]]] = []
    real = carry.bring_forward

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(carry, "bring_forward", spy)

    def step(at: str) -> bool:
        """One pass; whether it brought D forward."""
        calls.clear()
        assert not evaluate_incremental(con, registry, datetime.fromisoformat(at)).errors
        return any(D in days for out in calls for days in out.values())

    assert not step("2024-07-02 01:50:00")
    assert rows(con) == {"P": (2, 5), "S1": (1, 3), "S2": (1, 2), "G1": (1, 3), "G2": (1, 2)}
    held = con.execute("SELECT pending, unsettled_rows FROM kpi_day WHERE kpi_id = ? AND day = ?",
                       [KPI, D]).fetchone()
    assert held == (True, True)

    merge(con, 2, {"E2": "coll_status = '01', success_time = TIMESTAMP '2024-07-02 01:52:00'"})
    assert step("2024-07-02 01:53:00")
    assert rows(con) == {"P": (4, 5), "S1": (3, 3), "S2": (1, 2), "G1": (3, 3), "G2": (1, 2)}
    assert rows(con, "monthly") == rows(con)

    merge(con, 3, {"E7": "coll_status = '01', success_time = TIMESTAMP '2024-07-02 01:55:00'",
                   "E1": "coll_status = '02', success_time = NULL"})
    assert step("2024-07-02 01:56:00")
    assert rows(con) == {"P": (4, 5), "S1": (2, 3), "S2": (2, 2), "G1": (2, 3), "G2": (2, 2)}

    merge(con, 4, {"E7": "is_deleted = 1", "E8": "is_deleted = 1"})
    assert not step("2024-07-02 01:59:00")
    assert rows(con) == {"P": (2, 3), "S1": (2, 3), "S2": None, "G1": (2, 3), "G2": None}

    assert not step("2024-07-02 02:00:30")       # the sweep of a new hour reads
    merge(con, 5, {"E9": reading("E9", "S1", "TG1", "01", "2024-07-02 02:01:00")})
    assert step("2024-07-02 02:03:00")
    assert rows(con) == {"P": (3, 4), "S1": (3, 4), "S2": None, "G1": (3, 4), "G2": None}
    assert rows(con, "monthly") == rows(con)


def test_a_change_of_another_table_it_reads_makes_the_day_read(con, registry, monkeypatch):
    """E3's collection object leaves collection scope (coll_flag 0) in run 2 beside E2's retry:
    the stored rows counted E3, and the difference over the readings cannot see it, so D is
    read. S1: E1 (01:00) and E2 (01:52) of E1, E2 -> 2/2; S2 1/2; P 3/4."""
    assert not evaluate_incremental(con, registry, datetime(2024, 7, 2, 1, 50)).errors
    merge(con, 2, {"E2": "coll_status = '01', success_time = TIMESTAMP '2024-07-02 01:52:00'"})
    con.execute("UPDATE meter_coll_obj SET coll_flag = 0 WHERE meter_asset_no = 'E3'")
    con.execute("INSERT INTO etl_run (run_id, source, table_name, rows_merged) "
                "VALUES (2, 'meter', 'meter_coll_obj', 1)")
    con.execute("INSERT INTO etl_changed VALUES (2, 'meter', 'meter_coll_obj', ''), "
                "(2, 'meter', 'meter_coll_obj', 'coll_flag')")
    calls = []
    real = carry.bring_forward
    monkeypatch.setattr(carry, "bring_forward", lambda *a, **kw: calls.append(real(*a, **kw)) or calls[-1])
    assert not evaluate_incremental(con, registry, datetime(2024, 7, 2, 1, 53)).errors
    assert calls and not any(calls[-1].values())
    assert rows(con) == {"P": (3, 4), "S1": (2, 2), "S2": (1, 2), "G1": (2, 2), "G2": (1, 2)}
