"""Two revisions side by side on copies of one warehouse, in ABBA order, values compared.

Usage: python bench/bench_ab.py --data-dir DIR --a REV --b REV [--rounds 4] [--minutes 4] [--full]
                                [--dates today|rows|rows-any] [--this-script]
DIR holds warehouse.duckdb (and simulator_state.json) as `app.py worker --once` or `python -m
etl run --once` leave them; it is only read: each run gets a fresh copy, synced to disk before
the run starts (writing back a 2 GB copy during a run cost it up to a second here).

The machines this project is measured on move by ±25 % within minutes, so a figure means
something only beside the code it replaces, taken in the same minutes. Each round runs A, B, B,
A (the next round B, A, A, B): `bench_kpi_minute.py --minutes N` (ordinary passes), or with
--full `bench_kpis.py --skip-pandas --skip-incremental --again 2 --day-store` (the full
evaluation again, with its floor). It prints every run, the medians of wall and CPU time, and
whether the last copies of A and B hold the same kpi_value rows (EXCEPT ALL both ways; the runs
must have evaluated the same passes: same --minutes, same data). Each revision is checked out
in a worktree of its own and run with this interpreter. --this-script runs this checkout's
bench_kpi_minute.py in both trees (copied in): an older revision's script cannot mark a minute
in a warehouse whose etl_dirty has the changed_columns of session 22, and both sides then mark
their minutes alike.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
_MINUTE = re.compile(r"ordinary passes: \d+, median ([\d.]+) s wall \(([\d.]+) s CPU\)")
_AGAIN = re.compile(r"^\(a[23]\) .*?: ([\d.]+) s wall, ([\d.]+) s CPU", re.MULTILINE)
_FLOOR = re.compile(r"floor ([\d.]+) s wall")
_COLUMNS = ("kpi_id, org_no, grain, period_start, period_end, value, numerator, denominator, "
            "status")


def worktree(rev: str, into: Path) -> Path:
    path = into / re.sub(r"[^\w.-]", "_", rev)
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(path), rev],
                   check=True, capture_output=True)
    return path


def fresh_copy(data_dir: Path, into: Path) -> Path:
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    for name in ("warehouse.duckdb", "simulator_state.json"):
        if (data_dir / name).exists():
            shutil.copy2(data_dir / name, into / name)
    os.sync()
    return into


def run(tree: Path, copy: Path, args: argparse.Namespace) -> tuple[float, float, str]:
    """(wall, CPU, extra) of one run in the revision's tree."""
    if args.full:
        cmd = [sys.executable, str(tree / "bench" / "bench_kpis.py"), "--data-dir", str(copy),
               "--skip-pandas", "--skip-incremental", "--again", "2", "--day-store"]
    else:
        if args.this_script:
            shutil.copy2(REPO / "bench" / "bench_kpi_minute.py", tree / "bench" / "bench_kpi_minute.py")
        cmd = [sys.executable, str(tree / "bench" / "bench_kpi_minute.py"), "--data-dir", str(copy),
               "--minutes", str(args.minutes), "--top", "1"]
        if args.dates != "today":      # revisions from c90ae05 on (bench_kpi_minute.py --dates)
            cmd += ["--dates", args.dates]
    out = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, check=True).stdout
    if args.full:
        again = [(float(w), float(c)) for w, c in _AGAIN.findall(out)]
        floor = _FLOOR.search(out)
        if not again:
            raise SystemExit(f"no full evaluation again in the output of {' '.join(cmd)}:\n{out}")
        wall = statistics.median(w for w, _ in again)
        return wall, statistics.median(c for _, c in again), (
            f"floor {floor.group(1)} s, {wall / float(floor.group(1)):.2f}x" if floor else "")
    m = _MINUTE.search(out)
    if not m:
        raise SystemExit(f"no 'ordinary passes' line in the output of {' '.join(cmd)}:\n{out}")
    return float(m.group(1)), float(m.group(2)), ""


def differing_rows(a: Path, b: Path) -> tuple[int, int, int]:
    """(rows of A not in B, rows of B not in A, rows of A) of kpi_value."""
    con = duckdb.connect()
    con.execute(f"ATTACH '{a / 'warehouse.duckdb'}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{b / 'warehouse.duckdb'}' AS b (READ_ONLY)")
    only = [con.execute(f"SELECT COUNT(*) FROM (SELECT {_COLUMNS} FROM {x}.kpi_value EXCEPT ALL "
                        f"SELECT {_COLUMNS} FROM {y}.kpi_value)").fetchone()[0]
            for x, y in (("a", "b"), ("b", "a"))]
    return only[0], only[1], con.execute("SELECT COUNT(*) FROM a.kpi_value").fetchone()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="read only: each run gets a copy")
    ap.add_argument("--a", required=True, help="a revision (the code before)")
    ap.add_argument("--b", required=True, help="a revision (the code measured)")
    ap.add_argument("--rounds", type=int, default=4, help="ABBA rounds (2 runs of each a round)")
    ap.add_argument("--minutes", type=int, default=4, help="measured passes of each minute run")
    ap.add_argument("--full", action="store_true", help="the full evaluation again instead")
    ap.add_argument("--dates", choices=("today", "rows", "rows-any"), default="today",
                    help="bench_kpi_minute.py --dates: also the dirty dates of the minute's rows")
    ap.add_argument("--this-script", action="store_true",
                    help="run this checkout's bench_kpi_minute.py in both revisions' trees")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_ab_"))
    trees = {}
    try:
        trees = {"A": worktree(args.a, work / "trees"), "B": worktree(args.b, work / "trees")}
        results: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
        order = [x for r in range(args.rounds) for x in (("A", "B", "B", "A") if r % 2 == 0
                                                         else ("B", "A", "A", "B"))]
        for side in order:
            copy = fresh_copy(args.data_dir, work / f"copy_{side}")
            wall, cpu, extra = run(trees[side], copy, args)
            results[side].append((wall, cpu))
            rev = args.a if side == "A" else args.b
            print(f"{side} {rev}: {wall:.2f} s wall, {cpu:.2f} s CPU {extra}".rstrip(), flush=True)
        for side, rev in (("A", args.a), ("B", args.b)):
            walls = [w for w, _ in results[side]]
            print(f"{side} {rev}: median {statistics.median(walls):.2f} s wall "
                  f"({statistics.median(c for _, c in results[side]):.2f} s CPU), "
                  f"{min(walls):.2f}-{max(walls):.2f} s over {len(walls)} runs")
        a_only, b_only, rows = differing_rows(work / "copy_A", work / "copy_B")
        print(f"kpi_value of the last runs: {rows} rows, {a_only} only in A, {b_only} only in B")
        print(f"reproduce: python bench/bench_ab.py --data-dir {args.data_dir} --a {args.a} "
              f"--b {args.b} --rounds {args.rounds} --minutes {args.minutes}"
              + (" --full" if args.full else "") + (f" --dates {args.dates}" if args.dates != "today" else "")
              + (" --this-script" if args.this_script else ""))
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
