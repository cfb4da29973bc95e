"""A KPI that fails at run time fails alone: the others of the pass are computed and stored,
and the failing one is named with its error (the worker's pass does not stop for it)."""
from __future__ import annotations

from datetime import datetime

import duckdb

from kpis.evaluate import ensure_schema, evaluate_plan
from kpis.periods import day, month
from kpis.prelude import apply_prelude
from kpis.registry import load_registry
from tests.kpis.harness import load_inputs


def test_a_kpi_failing_in_a_statement_of_its_own_fails_alone() -> None:
    """The broken KPI asks for other periods than the good one, so each is read by a statement
    of its own (one KPI, nothing to retry one by one). Worked by hand: applications accepted in
    July at S1: A3 only -> 1."""
    con = duckdb.connect()
    load_inputs(con, {"inputs": {"mis_app": [
        {"app_no": "A3", "busi_type_code": "101", "org_no": "S1", "grid_no": "G1",
         "status_code": "01", "accept_time": "2024-07-10 08:00:00"}]}})
    ensure_schema(con)
    apply_prelude(con)
    good = load_registry().get("newconn.applications")
    bad = good.model_copy(update={"id": "newconn.broken", "facts": (
        "SELECT p.pid, 'S1' AS org_no, CAST(NULL AS VARCHAR) AS grid_no, 'x' AS item_key, "
        "CAST(error('broken on purpose') AS INTEGER) AS num, 1 AS den FROM _periods p")})
    as_of = datetime(2024, 7, 10, 12, 0)
    summary = evaluate_plan(con, [(bad, [day(as_of.date())]), (good, [month(2024, 7)])],
                            as_of, as_of)
    assert list(summary.errors) == ["newconn.broken"]
    assert "broken on purpose" in summary.errors["newconn.broken"]
    assert con.execute("SELECT value FROM kpi_value WHERE kpi_id = 'newconn.applications' "
                       "AND org_no = 'S1' AND grain = 'monthly'").fetchone() == (1.0,)
    assert con.execute("SELECT COUNT(*) FROM kpi_value WHERE kpi_id = 'newconn.broken'"
                       ).fetchone() == (0,)
