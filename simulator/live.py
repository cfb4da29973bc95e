"""Live mode: advance the simulated clock and write every row version that falls in each step."""
from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from simulator import state as st
from simulator import territory
from simulator.clock import EPOCH, DAY, ts
from simulator.config import SYSTEMS, side_dir
from simulator.engine import GENERATORS, BadRowLog, day_range, first_day, generate, table_order
from simulator.faults import is_down
from simulator.spool import DaySpool
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
        # per (generator, day) still open: its versions, compact (see simulator/spool.py)
        self.cache: dict[tuple[str, int], DaySpool] = {}
        self.stores: dict[str, SourceStore] = {}
        self._ahead: ThreadPoolExecutor | None = None
        self._pending: dict[tuple[str, int], Future] = {}

    def _days(self, lo: int, hi: int):
        for name, fn, horizon in GENERATORS:
            for d in day_range(first_day(name, self.state.start_day), lo, hi, horizon):
                yield name, fn, d

    def _make(self, name: str, fn, d: int, after: int) -> DaySpool:
        return DaySpool(generate(self.ter, self.state.seed, name, fn, d, self.state.bad_rate(d)), after)

    def _floor(self) -> int:
        """No source's "written up to" ever goes back: versions at or before the oldest are done."""
        return min(self.state.written.get(s, self.state.clock) for s in SYSTEMS)

    def _spool(self, name: str, fn, d: int) -> DaySpool:
        key = (name, d)
        sp = self.cache.get(key)
        if sp is None:
            job = self._pending.pop(key, None)
            sp = self.cache[key] = job.result() if job is not None else self._make(name, fn, d, self._floor())
        return sp

    def prepare(self, seconds: int = 1) -> None:
        """Generate the days the next step reads (at city: minutes), before a run starts its clock."""
        for name, fn, d in self._days(self._floor(), self.state.clock + seconds):
            self._spool(name, fn, d)

    def generate_ahead(self) -> None:
        """From now on, generate the next simulated day in a background thread while this one runs.

        A new day's generators (at city: 3.6 M collection rows, 1.2 M bills on the 1st-3rd) take a
        minute or more; their first versions are hours away (collection from 00:30 the next day,
        bills from 02:00), but calls start at midnight. Generated ahead, the midnight step only
        reads what is ready; the steps meanwhile share the interpreter with the thread."""
        if self._ahead is None:
            self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="simulator-ahead")

    def _queue_ahead(self, hi: int) -> None:
        if self._ahead is None:
            return
        for name, fn, d in self._days(hi, (hi // DAY + 1) * DAY):
            if (name, d) not in self.cache and (name, d) not in self._pending:
                self._pending[(name, d)] = self._ahead.submit(self._make, name, fn, d, self._floor())

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
            low = min(lo.values())
            floor = min(self._floor(), low)
            rows: dict[str, list[tuple[int, tuple]]] = {}
            badlog = BadRowLog(self.side / st.BADROWS_FILE, fresh=False)
            crews = CrewLog(self.ter)
            try:
                for name, fn, d in self._days(low, hi):
                    sp = self._spool(name, fn, d)
                    sp.drop(floor)
                    # keyed by creation time: a referenced row (main order, original payment) is always older
                    for created, table, row in sp.window(lo, hi).values():
                        rows.setdefault(table, []).append((created, row))
                    for line in sp.bad_lines(lo, hi):
                        badlog.add_line(line)
                    # state rows: every task still moving after lo is among these
                    crews.add(sp.tasks_after(low))
            finally:
                badlog.close()
            keep_from = {name: low // DAY - horizon - 1 for name, _, horizon in GENERATORS}
            for key in [k for k in self.cache if k[1] < keep_from[k[0]]]:
                del self.cache[key]
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
        self._queue_ahead(hi)
        return written

    def close(self) -> None:
        if self._ahead is not None:
            for job in self._pending.values():
                job.cancel()
            self._ahead.shutdown(wait=True)
            self._ahead = None
            self._pending.clear()
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
    was_enabled = gc.isenabled()
    # as in the build: millions of short-lived rows and no reference cycles, here also in the
    # thread generating the next day between steps
    gc.disable()
    try:
        if follow_wall_clock:
            catch_up(live)
        began = time.monotonic()
        live.prepare(max(1, int(speed * tick)))
        log.info("open days generated in %.1f s; following wall time x %g", time.monotonic() - began, speed)
        live.generate_ahead()
        _follow(live, speed, seconds, tick)
    finally:
        live.close()
        if was_enabled:
            gc.enable()


def paced(speed: float, seconds: float | None, tick: float) -> Iterator[int]:
    """Whole simulated seconds due at each tick of the wall clock (`speed` simulated seconds per
    wall second; the fraction carried to the next tick), for `seconds` of wall time or forever.
    The caller steps by each value; time it spends stepping counts as elapsed."""
    began = last = time.monotonic()
    carry = 0.0
    while seconds is None or time.monotonic() - began < seconds:
        time.sleep(max(0.0, tick - (time.monotonic() - last)))
        now = time.monotonic()
        carry += (now - last) * speed
        last = now
        whole = int(carry)
        if whole:
            carry -= whole
            yield whole


def _follow(live: Live, speed: float, seconds: float | None, tick: float) -> None:
    logged = time.monotonic()
    rows = 0
    for whole in paced(speed, seconds, tick):
        written = live.step(whole)
        rows += sum(written.values())
        if time.monotonic() - logged >= 60:    # one line a minute, not one a second
            log.info("clock %s: %d rows in the last minute", ts(live.state.clock), rows)
            logged, rows = time.monotonic(), 0
