"""Chosen statements of ordinary passes, each re-run a few times: their time to the millisecond.

Usage: python bench/bench_kpi_statements.py --data-dir DIR [--minutes 3] [--reps 5]
                                            [--statement 'INSERT INTO _result WITH' ...]
DIR holds warehouse.duckdb and simulator_state.json as bench_kpi_minute.py wants them; the run
works on a copy made in a temporary folder (DIR is left as it was).

A whole pass at city scale moves by ±0.1 s between runs on this machine, more than a change to
one statement saves. Here the passes run as in bench_kpi_minute.py (the county template marks
each synthetic minute); every statement of the passes that starts with one of the chosen texts
(whitespace folded) and is an INSERT has its SELECT run --reps times into a throwaway TEMP
table, then runs for real. Prints the minimum and the median per statement: compare two trees by
running this script from each, back to back, on the same DIR.
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_kpi_minute import COUNTY_MINUTE, mark, open_at  # noqa: E402
from bench_kpis import Timed, load, sim_clock  # noqa: E402
from kpis import wake  # noqa: E402
from kpis.evaluate import evaluate_incremental  # noqa: E402
from kpis.registry import load_registry  # noqa: E402

DEFAULT = {"INSERT INTO _result WITH": "roll-up", "INSERT INTO _fg": "attribution",
           "INSERT INTO kpi_value": "kpi_value insert (into a TEMP table here)"}
_INTO = re.compile(r"^\s*INSERT\s+INTO\s+\w+\s", re.IGNORECASE)


class Repeat(Timed):
    """Runs the SELECT of each chosen INSERT `reps` times before the statement itself."""

    def __init__(self, con, chosen: dict[str, str], reps: int, times: dict[str, list[float]]) -> None:
        super().__init__(con)
        self.chosen, self.reps, self.times = chosen, reps, times

    def execute(self, sql: str, *args: object):
        folded = " ".join(sql.split())
        for prefix, name in self.chosen.items():
            if folded.startswith(prefix) and _INTO.match(sql):
                body = _INTO.sub("", sql, count=1)
                for _ in range(self.reps):
                    t = time.perf_counter()
                    self._con.execute("CREATE OR REPLACE TEMP TABLE _bench_rep AS " + body, *args)
                    self.times.setdefault(name, []).append(time.perf_counter() - t)
        return super().execute(sql, *args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--minutes", type=int, default=3, help="measured passes (after the warm one)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--statement", action="append", default=None,
                    help="the start of a statement to time (repeatable); default: the roll-up, "
                         "the attribution and the kpi_value insert")
    args = ap.parse_args()
    chosen = {s: s for s in args.statement} if args.statement else DEFAULT
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("warehouse.duckdb", "simulator_state.json"):
            shutil.copy(args.data_dir / name, work / name)
        as_of = sim_clock(work) - timedelta(minutes=90)     # as bench_kpi_minute.py
        wake.FP_MAX_ROWS = -1       # the data does not change (bench_kpi_minute.py)
        con, run = open_at(work, as_of)
        registry = load_registry()
        print(f"{datetime.now():%Y-%m-%d %H:%M} warm-up pass at {as_of:%H:%M}; {load()}")
        evaluate_incremental(con, registry, as_of)
        times: dict[str, list[float]] = {}
        for m in range(1, args.minutes + 1):
            run += 1
            mark(con, run, COUNTY_MINUTE, as_of.date())
            evaluate_incremental(Repeat(con, chosen, args.reps, times), registry,
                                 as_of + timedelta(minutes=m))
        con.close()
    for name, ts in sorted(times.items()):
        print(f"  {name}: min {min(ts):.4f} s, median {statistics.median(ts):.4f} s ({len(ts)} runs)")
    print(f"{load()} at the end")
    flags = "".join(f" --statement '{s}'" for s in args.statement or ())
    print(f"reproduce: python bench/bench_kpi_statements.py --data-dir DIR --minutes {args.minutes} "
          f"--reps {args.reps}{flags}")


if __name__ == "__main__":
    main()
