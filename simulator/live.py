"""Live mode: advance the simulated clock and write every row version that falls in each step."""
from __future__ import annotations

import gc
import logging
import time
from bisect import bisect_right
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from simulator import state as st
from simulator import territory
from simulator.clock import EPOCH, DAY, ts
from simulator.config import SYSTEMS, side_dir
from simulator.engine import GENERATORS, BadRowLog, day_range, first_day, generate, table_order, window_rows
from simulator.faults import is_down
from simulator.life import Life
from simulator.states import CrewLog, terminal_rows
from simulator.store import SourceStore

log = logging.getLogger(__name__)


class Live:
    """A live run over the sources described by `urls`, continuing from the state file."""

    def __init__(self, urls: Mapping[str, str], side: Path | None = None, bad_rows: float | None = None) -> None:
        self.urls = dict(urls)
        self.side = side or side_dir(urls)
        self.state = st.load(self.side)
        if bad_rows is not None and bad_rows != self.state.bad_rate(self.state.clock // DAY + 1):
            if not 0 <= bad_rows < 1:
                raise ValueError(f"--bad-rows: expected a rate in [0, 1), got {bad_rows}")
            # the current day's rows were already generated with the old rate: switch at the next midnight
            first = -(-self.state.clock // DAY)
            self.state.bad_rates = [b for b in self.state.bad_rates if b[0] < first] + [[first, bad_rows]]
        self.ter = territory.build(self.state.scale, self.state.seed, self.state.start_day)
        self.order = table_order()
        # per (generator, day): last write times and lives sorted by them, for the lives with one
        # version and for those with several: [lasts, lives, lasts, lives]
        self.cache: dict[tuple[str, int], list[list]] = {}
        self.stores: dict[str, SourceStore] = {}

    def _lives(self, lo: int, hi: int) -> list[list[Life]]:
        """Lives that may still write in (lo, hi], found by binary searches on their last write.

        Lives with one version (collection rows, flow steps, queue snapshots: most rows) write
        exactly when their last write falls in the window; only lives with several versions are
        scanned from lo on. At city scale this keeps a one-second step from walking the millions
        of collection rows that tonight's run has yet to write."""
        floor = min([self.state.written.get(s, self.state.clock) for s in SYSTEMS] + [lo])
        batches = []
        for name, fn, horizon in GENERATORS:
            for d in day_range(first_day(name, self.state.start_day), lo, hi, horizon):
                key = (name, d)
                if key not in self.cache:
                    lives = generate(self.ter, self.state.seed, name, fn, d, self.state.bad_rate(d))
                    lives.sort(key=lambda x: x.versions[-1][0])
                    single = [x for x in lives if len(x.versions) == 1]
                    multi = [x for x in lives if len(x.versions) > 1]
                    self.cache[key] = [[x.versions[-1][0] for x in single], single,
                                       [x.versions[-1][0] for x in multi], multi]
                parts = self.cache[key]
                for k in (0, 2):
                    lasts, lives = parts[k], parts[k + 1]
                    done = bisect_right(lasts, floor)
                    if done > len(lasts) // 4:
                        # no source's "written up to" ever goes back: lives finished before the
                        # oldest one are never written again; dropping them (in a few large cuts,
                        # not a copy every step) keeps a city day from lingering for the horizon
                        parts[k], parts[k + 1] = lasts[done:], lives[done:]
                lasts, single, lasts_m, multi = parts
                batches.append(single[bisect_right(lasts, lo):bisect_right(lasts, hi)])
                batches.append(multi[bisect_right(lasts_m, lo):])
        keep_from = {name: lo // DAY - horizon - 1 for name, _, horizon in GENERATORS}
        for key in [k for k in self.cache if k[1] < keep_from[k[0]]]:
            del self.cache[key]
        return batches

    def _store(self, system: str) -> SourceStore:
        if system not in self.stores:
            self.stores[system] = SourceStore(system, self.urls[system])
        return self.stores[system]

    def step(self, sim_seconds: int) -> dict[str, int]:
        """Advance the clock by `sim_seconds` and write what happened; returns rows written per table."""
        was_enabled = gc.isenabled()
        gc.disable()                 # as in the build: many short-lived rows, no reference cycles
        try:
            return self._step(sim_seconds)
        finally:
            if was_enabled:
                gc.enable()

    def _step(self, sim_seconds: int) -> dict[str, int]:
        hi = self.state.clock + int(sim_seconds)
        lo: dict[str, int] = {}
        for s in SYSTEMS:
            if is_down(self.side, s):
                if s in self.stores:
                    self.stores.pop(s).close()
                continue
            lo[s] = self.state.written.get(s, self.state.clock)
        written: dict[str, int] = {}
        if lo:
            rows: dict[str, list[tuple[int, tuple]]] = {}
            badlog = BadRowLog(self.side / st.BADROWS_FILE, fresh=False)
            crews = CrewLog(self.ter)
            try:
                for lives in self._lives(min(lo.values()), hi):
                    crews.add(lives)
                    for table, part in window_rows(lives, lo, hi, badlog).items():
                        rows.setdefault(table, []).extend(part)
            finally:
                badlog.close()
            # state rows: every task still moving after lo is among the lives above
            if "dist" in lo:
                rows.setdefault("dist_crew", []).extend((0, r) for r in crews.rows(hi, lo["dist"]))
            if "meter" in lo:
                rows.setdefault("meter_terminal", []).extend(
                    (0, r) for r in terminal_rows(self.ter, self.state.seed, lo["meter"], hi))
            for s in lo:
                store = self._store(s)
                store.begin()
                for table in sorted((t for t in rows if t.startswith(s + "_")), key=self.order.__getitem__):
                    part = sorted(rows[table], key=lambda r: r[0])
                    store.upsert(table, [r for _, r in part])
                    written[table] = len(part)
                store.commit()
                self.state.written[s] = hi
        self.state.clock = hi
        st.save(self.side, self.state)
        return written

    def close(self) -> None:
        for s in list(self.stores):
            self.stores.pop(s).close()


def step(urls: Mapping[str, str], sim_seconds: int, side: Path | None = None,
         bad_rows: float | None = None) -> dict[str, int]:
    """Advance the simulated clock deterministically by `sim_seconds` (for tests and scripts)."""
    live = Live(urls, side, bad_rows)
    try:
        return live.step(sim_seconds)
    finally:
        live.close()


def wall_clock() -> int:
    """Now in Asia/Shanghai, as a simulated second."""
    now = datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None)
    return int((now - EPOCH).total_seconds())


def catch_up(live: "Live", chunk: int = 1800) -> int:
    """Advance a clock left behind (history ends at 00:00; a stopped simulator) to the wall
    clock, in chunks, so that the sources read as current when the product starts."""
    gap = wall_clock() - live.state.clock
    done = 0
    while gap > 0:
        step = min(chunk, gap)
        live.step(step)
        done += step
        gap = wall_clock() - live.state.clock
        log.info("catching up with the wall clock: %s (%d s behind)", ts(live.state.clock), max(gap, 0))
    return done


def run(urls: Mapping[str, str], speed: float = 1.0, seconds: float | None = None, side: Path | None = None,
        bad_rows: float | None = None, tick: float = 1.0, follow_wall_clock: bool = False) -> None:
    """Follow wall time × speed until `seconds` wall seconds have passed (forever if None).

    follow_wall_clock: first catch up with the wall clock (Asia/Shanghai) when behind it."""
    live = Live(urls, side, bad_rows)
    if follow_wall_clock:
        catch_up(live)
    began = last = logged = time.monotonic()
    carry = 0.0
    rows = 0
    try:
        while seconds is None or time.monotonic() - began < seconds:
            time.sleep(max(0.0, tick - (time.monotonic() - last)))
            now = time.monotonic()
            carry += (now - last) * speed
            last = now
            whole = int(carry)
            if whole:
                carry -= whole
                written = live.step(whole)
                rows += sum(written.values())
                if time.monotonic() - logged >= 60:    # one line a minute, not one a second
                    log.info("clock %s: %d rows in the last minute", ts(live.state.clock), rows)
                    logged, rows = time.monotonic(), 0
    finally:
        live.close()
