"""Every benchmark of bench/RESULTS.md's summary, one after the other (`make bench`).

Builds the county territory once in a temporary folder (or uses --dir), runs one worker cycle
(ETL, evaluation, publish) there, then gives each benchmark its own copy, since they write into
their data. Each benchmark prints its figures and the command that reproduces them.
Usage: python bench/run_all.py [--scale county] [--days 30] [--dir DIR] [--skip simulator,web]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("\n$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, check=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="county", choices=("small", "county", "city"))
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--skip", default="", help="comma list of: simulator, etl, kpis, web")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    py = sys.executable
    work = args.dir or Path(tempfile.mkdtemp(prefix="kpi-bench-"))
    base = work / "base" / "data"
    try:
        if not (base / "warehouse.duckdb").exists():
            base.mkdir(parents=True, exist_ok=True)
            env = {"DATA_DIR": str(base)}
            run([py, "-m", "simulator", "build", "--scale", args.scale, "--seed", "1",
                 "--days", str(args.days)], env)
            run([py, "app.py", "worker", "--once"], env)

        def copy(name: str) -> Path:
            dst = work / name / "data"
            shutil.rmtree(dst.parent, ignore_errors=True)
            shutil.copytree(base, dst)
            return dst

        if "simulator" not in skip:
            run([py, "bench/bench_simulator.py", "--scale", args.scale, "--days", "90",
                 "--live-hours", "6"])
        if "etl" not in skip:
            d = copy("etl")
            run([py, "bench/bench_etl.py", "--scale", args.scale, "--days", str(args.days),
                 "--dir", str(d), "--minutes", "3"])
        if "kpis" not in skip:
            run([py, "bench/bench_kpis.py", "--data-dir", str(copy("kpis"))])
            # the full evaluation again with the worker's kept tables and stored days
            run([py, "bench/bench_kpis.py", "--data-dir", str(copy("kpis-again")), "--skip-pandas",
                 "--skip-incremental", "--again", "2", "--day-store"])
            run([py, "bench/bench_kpi_minute.py", "--data-dir", str(copy("kpi-minute"))])
            run([py, "bench/bench_kpi_minute.py", "--data-dir", str(copy("kpi-sweep")),
                 "--minutes", "2", "--sweep"])
            # the month bases at the end of a month (the worker's cycle above filled the day store)
            run([py, "bench/bench_month_base.py", "--data-dir", str(base)])
            # the repeat callers' month base: one period, whole per day, yesterday alone (copies base)
            run([py, "bench/bench_distinct_base.py", "--data-dir", str(base)])
            # statements that grow with the history kept (reads base; works on copies beside it)
            run([py, "bench/bench_history.py", "--data-dir", str(base)])
        if "web" not in skip:
            run([py, "bench/bench_web.py", "--data-dir", str(copy("web")), "--users", "50",
                 "--seconds", "150", "--with-worker"])
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
