"""Where the time of one KPI pass goes, operator by operator: DuckDB's JSON profile of each
statement of one ordinary pass (or sweep) after a warm-up, the slowest statements with their
slowest operators. The tool behind the "profile" notes of bench/RESULTS.md and docs/decisions.md.

Usage: python bench/bench_kpi_profile.py --data-dir DIR [--sweep] [--top 8] [--operators 10]
                                          [--per-kpi]
DIR as for bench_kpi_minute.py (a copy: the run writes into it). The pass is that of
bench_kpi_minute.py (the county minute template, as_of 90 minutes before the simulator's clock).
Profiling adds its own cost: compare operators within a run, and time passes with
bench_kpi_minute.py.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_kpi_minute import COUNTY_MINUTE, mark, open_at  # noqa: E402
from bench_kpis import sim_clock  # noqa: E402
from kpis import batch, wake  # noqa: E402
from kpis.evaluate import SWEEP_EVERY, evaluate_incremental  # noqa: E402
from kpis.registry import load_registry  # noqa: E402

_KPI = re.compile(r"-- (\S+) \(named")
_QUIET = ("BEGIN", "COMMIT", "ROLLBACK", "SET", "RESET")


class Profiled:
    """The engine's connection; while `on`, each statement writes its profile to its own file."""

    def __init__(self, con: duckdb.DuckDBPyConnection, folder: Path) -> None:
        self._con, self.folder, self.on = con, folder, False
        self.statements: list[tuple[float, Path, str]] = []

    def execute(self, sql: str, *args: object) -> duckdb.DuckDBPyConnection:
        if not self.on or sql.lstrip().upper().startswith(_QUIET):
            return self._con.execute(sql, *args)
        out = self.folder / f"s{len(self.statements):05d}.json"
        self._con.execute(f"SET profiling_output = '{out}'")
        t = time.perf_counter()
        try:
            return self._con.execute(sql, *args)
        finally:
            self.statements.append((time.perf_counter() - t, out, sql))

    def __getattr__(self, name: str) -> object:
        return getattr(self._con, name)


def operators(node: dict, depth: int = 0) -> list[tuple[float, int, str, object, str]]:
    """(seconds, depth, operator, rows, details) of a profile tree."""
    name = node.get("operator_name") or node.get("operator_type") or "?"
    extra = json.dumps(node.get("extra_info", {}), ensure_ascii=False)[:160]
    out = [(node.get("operator_timing") or 0.0, depth, name, node.get("operator_cardinality"), extra)]
    for child in node.get("children", []):
        out.extend(operators(child, depth + 1))
    return out


def print_profiles(prof: Profiled, top: int, ops: int) -> None:
    """The `top` slowest statements profiled, each with its `ops` slowest operators."""
    for seconds, path, sql in sorted(prof.statements, key=lambda x: -x[0])[:top]:
        names = _KPI.findall(sql)
        print(f"\n=== {seconds:.3f} s  {' '.join(sql.split())[:120]}"
              + (f"\n    KPIs: {', '.join(names[:8])}{' +%d' % (len(names) - 8) if len(names) > 8 else ''}"
                 if names else ""))
        try:
            tree = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            print("    (no profile)")
            continue
        for t_op, depth, name, rows, extra in sorted(operators(tree), key=lambda x: -x[0])[:ops]:
            print(f"    {t_op:.3f} {'  ' * min(depth, 6)}{name} rows={rows} {extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--sweep", action="store_true", help="profile a sweep instead of an ordinary pass")
    ap.add_argument("--top", type=int, default=8, help="statements shown, slowest first")
    ap.add_argument("--operators", type=int, default=10, help="operators shown per statement")
    ap.add_argument("--per-kpi", action="store_true", help="facts KPI by KPI (kpis.batch.CHUNK = 1)")
    args = ap.parse_args()
    if args.per_kpi:
        batch.CHUNK = 1
    wake.FP_MAX_ROWS = -1       # as bench_kpi_minute.py: the data does not change
    registry = load_registry()
    as_of = sim_clock(args.data_dir) - timedelta(minutes=90)
    con, run = open_at(args.data_dir, as_of)
    with tempfile.TemporaryDirectory(prefix="kpi-profile-") as folder:
        prof = Profiled(con, Path(folder))
        for i in range(2):
            run += 1
            mark(con, run, COUNTY_MINUTE, as_of.date())
            if i == 1:
                if args.sweep:
                    con.execute("UPDATE kpi_eval_state SET last_sweep_at = $a", {"a": as_of - SWEEP_EVERY})
                con.execute("SET enable_profiling = 'json'")
                prof.on = True
            t = time.perf_counter()
            evaluate_incremental(prof, registry, as_of)
            print(f"{'warm-up' if i == 0 else 'profiled ' + ('sweep' if args.sweep else 'pass')} "
                  f"as_of {as_of:%H:%M}: {time.perf_counter() - t:.2f} s wall")
            as_of += timedelta(seconds=60)
        prof.on = False
        con.execute("SET enable_profiling = 'no_output'")
        print_profiles(prof, args.top, args.operators)
    print(f"\nreproduce: python bench/bench_kpi_profile.py --data-dir {args.data_dir}"
          + (" --sweep" if args.sweep else "") + (" --per-kpi" if args.per_kpi else ""))


if __name__ == "__main__":
    main()
