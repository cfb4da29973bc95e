"""Runs a hand-computed KPI case: input rows -> a fresh warehouse -> the engine -> expected rows.

A case file (tests/kpis/cases/<anything>.yaml) keeps the inputs, the working by hand and the
expected values side by side. Inputs name contract tables; omitted columns get NULL, except
created_at/updated_at ('2024-01-01 00:00:00') and is_deleted (0). Unless the case says
`org_tree: none`, the standard tree below is loaded first:

    P (province, root) -> C1 (city) -> K1, K2 (counties)
    K1 -> S1, S2 (stations); K2 -> S3;  grids G1 (S1), G2 (S2), G3 (S3)

`calendar: 2024-06-01..2024-08-31` fills mis_work_calendar with Mon-Fri working days
(a case may add `holidays: [...]` and `workdays: [...]` to adjust).
Expected values may be written as arithmetic, e.g. `100*2/3`.
"""
from __future__ import annotations

import ast
import operator
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import yaml

from etl.contract import load_contract
from etl.schema import ods_statements
from kpis.evaluate import evaluate_and_store, periods_for
from kpis.periods import parse_period
from kpis.registry import Registry

CASES_DIR = Path(__file__).resolve().parent / "cases"
DEFAULT_TS = "2024-01-01 00:00:00"

STANDARD_TREE = {
    "mis_org": [
        {"org_no": "P", "org_name": "省公司", "parent_org_no": None, "org_type": "02", "status_code": "01"},
        {"org_no": "C1", "org_name": "地市一", "parent_org_no": "P", "org_type": "03", "status_code": "01"},
        {"org_no": "K1", "org_name": "县一", "parent_org_no": "C1", "org_type": "04", "status_code": "01"},
        {"org_no": "K2", "org_name": "县二", "parent_org_no": "C1", "org_type": "04", "status_code": "01"},
        {"org_no": "S1", "org_name": "所一", "parent_org_no": "K1", "org_type": "05", "status_code": "01"},
        {"org_no": "S2", "org_name": "所二", "parent_org_no": "K1", "org_type": "05", "status_code": "01"},
        {"org_no": "S3", "org_name": "所三", "parent_org_no": "K2", "org_type": "05", "status_code": "01"},
    ],
    "mis_grid": [
        {"grid_no": "G1", "grid_name": "网格一", "org_no": "S1", "status_code": "01"},
        {"grid_no": "G2", "grid_name": "网格二", "org_no": "S2", "status_code": "01"},
        {"grid_no": "G3", "grid_name": "网格三", "org_no": "S3", "status_code": "01"},
    ],
}

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.USub: operator.neg}


def arith(expr: Any) -> float | None:
    """A number, or +-*/ arithmetic on numbers written in the case file."""
    if expr is None or isinstance(expr, (int, float)):
        return expr
    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"not arithmetic: {expr!r}")
    return float(ev(ast.parse(str(expr), mode="eval").body))


def calendar_rows(spec: str, holidays: list[str], workdays: list[str]) -> list[dict]:
    a, b = (date.fromisoformat(x.strip()) for x in spec.split(".."))
    rows, d = [], a
    while d <= b:
        work = d.weekday() < 5
        if d.isoformat() in holidays:
            work = False
        if d.isoformat() in workdays:
            work = True
        rows.append({"cal_date": d.isoformat(), "work_flag": int(work),
                     "day_type": "01" if work else "02"})
        d += timedelta(days=1)
    return rows


def load_inputs(con: duckdb.DuckDBPyConnection, case: dict) -> None:
    contract = load_contract()
    for stmt in ods_statements(contract):
        con.execute(stmt)
    tables: dict[str, list[dict]] = {}
    if case.get("org_tree", "standard") == "standard":
        for t, rows in STANDARD_TREE.items():
            tables.setdefault(t, []).extend(rows)
    if case.get("calendar"):
        tables.setdefault("mis_work_calendar", []).extend(
            calendar_rows(case["calendar"], [str(h) for h in case.get("holidays", [])],
                          [str(w) for w in case.get("workdays", [])]))
    for t, rows in (case.get("inputs") or {}).items():
        tables.setdefault(t, []).extend(rows or [])
    for name, rows in tables.items():
        table = contract.tables[name]
        cols = table.column_names
        for row in rows:
            unknown = set(row) - set(cols)
            if unknown:
                raise ValueError(f"case input `{name}` has unknown column(s) {sorted(unknown)}")
            values = []
            for c in cols:
                v = row.get(c)
                if v is None and c in ("created_at", "updated_at"):
                    v = DEFAULT_TS
                if v is None and c not in row and table.column(c).default is not None:
                    v = table.column(c).default.strip("'")
                values.append(None if v is None else str(v))
            placeholders = ", ".join(f"CAST(? AS {table.column(c).duckdb_type})" for c in cols)
            con.execute(f"INSERT INTO {name} VALUES ({placeholders})", values)


def run_case(case: dict, registry: Registry) -> list[dict]:
    """Evaluate the case's KPI over its period and return the stored rows."""
    kpi = registry.get(case["kpi"])
    if "min_sample" in case:
        kpi = replace_kpi(kpi, min_sample=case["min_sample"])
    as_of = datetime.fromisoformat(str(case["as_of"]))
    con = duckdb.connect()
    load_inputs(con, case)
    periods = [parse_period(str(p), as_of) for p in (case.get("periods") or [case["period"]])]
    summary = evaluate_and_store(con, registry, periods, as_of, kpis=[kpi],
                                 computed_at=as_of)
    if summary.errors:
        raise AssertionError(f"evaluation failed: {summary.errors}")
    cur = con.execute("SELECT * FROM kpi_value ORDER BY period_start, org_no")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def replace_kpi(kpi, **changes):
    return kpi.model_copy(update=changes)


def check_case(path: Path, registry: Registry) -> None:
    case = yaml.safe_load(path.read_text(encoding="utf-8"))
    rows = run_case(case, registry)
    for exp in case["expected"]:
        org = str(exp["org"])
        cands = [r for r in rows if r["org_no"] == org]
        if "grain" in exp:
            cands = [r for r in cands if r["grain"] == exp["grain"]]
        if "period_start" in exp:
            ps = datetime.fromisoformat(str(exp["period_start"]))
            cands = [r for r in cands if r["period_start"] == ps]
        assert len(cands) == 1, f"{path.name}: expected one row for {exp}, got {len(cands)}: {cands}"
        got = cands[0]
        for key in ("value", "numerator", "denominator", "baseline"):
            if key in exp:
                want = arith(exp[key])
                have = got[key]
                if want is None:
                    assert have is None, f"{path.name} {org}: {key} {have} != NULL"
                else:
                    assert have is not None and abs(have - want) <= 1e-6 * max(1.0, abs(want)), \
                        f"{path.name} {org}: {key} {have} != {want} ({exp[key]})"
        for key in ("status", "is_final", "org_level"):
            if key in exp:
                assert got[key] == exp[key], f"{path.name} {org}: {key} {got[key]!r} != {exp[key]!r}"
    for org in case.get("absent", []) or []:
        assert not [r for r in rows if r["org_no"] == str(org)], f"{path.name}: unexpected row for {org}"


def simulated_small(root: Path, start: date, days: int):
    """Build the simulated `small` sources (seed 42) under root; the ETL settings that read them
    (no safety lag: every written row is in the first pass)."""
    import simulator  # noqa: PLC0415  (tests that use it skip without it)
    from etl.settings import SOURCE_NAMES, load_settings  # noqa: PLC0415

    urls = {s: f"sqlite:///{root / f'source_{s}.db'}" for s in SOURCE_NAMES}
    simulator.build(urls, scale="small", seed=42, days=days, start=start, side=root / "side")
    env = {"DATA_DIR": str(root / "data"), "WAREHOUSE_PATH": str(root / "data" / "warehouse.duckdb"),
           "ETL_SAFETY_LAG_S": "0", **{f"SOURCE_{s.upper()}_URL": u for s, u in urls.items()}}
    return load_settings(env)
