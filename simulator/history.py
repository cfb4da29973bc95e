"""The history build: create the four sources from the contract and fill [start, start + days)."""
from __future__ import annotations

import logging
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from simulator import state as st
from simulator import territory
from simulator.clock import DAY, day_of
from simulator.config import REPO, SYSTEMS, side_dir
from simulator.engine import BADROWS_HEADER, GENERATORS, WRITES, BadRowLog, final_rows, first_day, generate, table_order
from simulator.states import CrewLog
from simulator.store import SourceStore

log = logging.getLogger(__name__)


def default_start(days: int) -> date:
    """Today in Asia/Shanghai minus `days`, so that the history ends at today 00:00."""
    return datetime.now(ZoneInfo("Asia/Shanghai")).date() - timedelta(days=days)


def build(urls: Mapping[str, str], scale: str = "small", seed: int = 42, days: int = 90,
          start: date | None = None, bad_rows: float = 0.0, side: Path | None = None) -> dict[str, int]:
    """Replace the four sources' tables and write the history; return row counts per table.

    The meter system (most of the volume) is written by a second process while this one writes
    mis, cs and dist: the four databases are independent and each day is generated alone."""
    if not 0 <= bad_rows < 1:
        raise ValueError(f"--bad-rows: expected a rate in [0, 1), got {bad_rows}")
    if days < 1:
        raise ValueError(f"--days: expected at least 1, got {days}")
    if scale not in territory.SCALES:
        raise ValueError(f"--scale: expected one of {', '.join(territory.SCALES)}, got {scale!r}")
    start = start or default_start(days)
    side = side or side_dir(urls)
    side.mkdir(parents=True, exist_ok=True)
    start_day = day_of(start)
    began = time.monotonic()
    job = dict(urls=dict(urls), scale=scale, seed=seed, start_day=start_day, days=days, bad_rows=bad_rows,
               side=str(side))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    # a plain child interpreter (not multiprocessing): callers need no `if __name__ == "__main__"` guard
    child = subprocess.Popen([sys.executable, "-c", "import simulator.history as h; h.child()"], cwd=REPO, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child.stdin.write(json.dumps(dict(job, systems=["meter"], part="meter")))
    child.stdin.close()
    try:
        counts = build_part(**dict(job, side=side), systems=("mis", "cs", "dist"), part="main")
    finally:
        out = child.stdout.read()
        if child.wait() != 0:
            raise RuntimeError(f"simulator build of the meter source failed (exit {child.returncode}); see stderr")
    counts.update(json.loads(out))
    with (side / st.BADROWS_FILE).open("w", encoding="utf-8", newline="") as out:
        out.write(",".join(BADROWS_HEADER) + "\r\n")
        for part in ("main", "meter"):
            path = side / f"{st.BADROWS_FILE}.{part}"
            with path.open(encoding="utf-8", newline="") as f:
                next(f)
                out.writelines(f)
            path.unlink()
    end = (start_day + days) * DAY
    st.save(side, st.State(scale=scale, seed=seed, start_day=start_day, days=days, clock=end,
                           written={s: end for s in SYSTEMS}, bad_rates=[[start_day, bad_rows]]))
    log.info("built %s scale, %d days in %.1f s", scale, days, time.monotonic() - began)
    return counts


def child() -> None:
    """Entry point of the second build process: job as JSON on stdin, row counts as JSON on stdout."""
    job = json.loads(sys.stdin.read())
    job["side"] = Path(job["side"])
    job["systems"] = tuple(job["systems"])
    print(json.dumps(build_part(**job)))


def build_part(urls: Mapping[str, str], scale: str, seed: int, start_day: int, days: int, bad_rows: float,
               side: Path, systems: tuple[str, ...], part: str) -> dict[str, int]:
    """Write the history of some systems; bad rows go to a partial side file merged by build()."""
    end = (start_day + days) * DAY
    # millions of short-lived tuples and no reference cycles: the cyclic GC would only rescan them
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _build_part(urls, seed, start_day, days, bad_rows, side, systems, part, end,
                           territory.build(scale, seed, start_day))
    finally:
        if was_enabled:
            gc.enable()


def _build_part(urls: Mapping[str, str], seed: int, start_day: int, days: int, bad_rows: float, side: Path,
                systems: tuple[str, ...], part: str, end: int, ter: territory.Territory) -> dict[str, int]:
    order = table_order()
    gens = [g for g in GENERATORS if WRITES[g[0]] & set(systems)]
    stores = {s: SourceStore(s, urls[s]) for s in systems}
    counts: dict[str, int] = {}
    badlog = BadRowLog(side / f"{st.BADROWS_FILE}.{part}", fresh=True)
    try:
        for s in stores.values():
            s.create_schema(defer_indexes=True)
            s.fast_build(True)
            s.begin()

        def write(table: str, rows: list[tuple]) -> None:
            system = table.split("_", 1)[0]
            if system in stores:
                stores[system].insert(table, rows)
                counts[table] = counts.get(table, 0) + len(rows)

        for table, rows in territory.rows(ter, seed, start_day, start_day + days, set(systems)):
            write(table, rows)
        crews = CrewLog(ter)
        for d in range(min(first_day(g[0], start_day) for g in gens), start_day + days):
            for name, fn, _ in gens:
                if d < first_day(name, start_day):
                    continue
                # days before the start carry no bad rows (as State.bad_rate says to live mode)
                rate = bad_rows if d >= start_day else 0.0
                lives = [x for x in generate(ter, seed, name, fn, d, rate) if x.table.split("_", 1)[0] in stores]
                crews.add(lives)
                batch = final_rows(lives, end, badlog)
                for table in sorted(batch, key=order.__getitem__):
                    write(table, batch[table])
            if d >= start_day and (d - start_day) % 10 == 9:
                log.info("%s: %d of %d days written", part, d - start_day + 1, days)
        if "dist" in stores:                 # crews as their repair tasks left them at the end
            stores["dist"].upsert("dist_crew", crews.rows(end))
        for s in stores.values():
            s.create_indexes()
            s.commit()
            s.fast_build(False)
    finally:
        badlog.close()
        for s in stores.values():
            s.close()
    return counts
