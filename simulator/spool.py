"""One generator-day's row versions held compactly for live mode: time-ordered, compressed blocks.

A city day holds millions of lives (1.2 M bills with their payments, 3.6 M collection rows), and a
day stays open for its generator's horizon (bills: 110 days). As Python objects (a Life with a
dict and a list of versions) that is gigabytes per day; live mode only ever asks "which rows
have their latest version in (lo, hi]", so each version is kept as one event (write time, life,
creation time, table, full row), sorted by write time, in marshal+zlib blocks. Blocks the clock
has passed are dropped; only the block being read is kept decoded."""
from __future__ import annotations

import marshal
import zlib
from bisect import bisect_right
from collections.abc import Mapping

import numpy as np

from simulator.engine import bad_line, row_at
from simulator.life import Life

BLOCK = 8192          # events per compressed block: a second's step decodes one, a few ms


class DaySpool:
    """The versions of one (generator, day), read window by window."""

    def __init__(self, lives: list[Life], after: int) -> None:
        """Keep the versions written after `after` (no source's clock is earlier: the rest is done)."""
        when: list[int] = []
        who: list[int] = []
        which: list[int] = []
        for j, life in enumerate(lives):
            vs = life.versions
            if vs[-1][0] <= after:
                continue
            if len(vs) == 1:                  # most rows (collection, flow steps, snapshots)
                when.append(vs[0][0])
                who.append(j)
                which.append(0)
                continue
            for k, (t, _) in enumerate(vs):
                if t > after:
                    when.append(t)
                    who.append(j)
                    which.append(k)
        # stable: a life's versions written in the same second keep their order (the last wins)
        order = np.argsort(np.array(when, dtype=np.int64), kind="stable")
        self.times = np.array(when, dtype=np.int64)[order]
        who = np.array(who, dtype=np.int64)[order].tolist()
        which = np.array(which, dtype=np.int64)[order].tolist()
        self.blocks: list[bytes] = []
        for b in range(0, len(who), BLOCK):
            events = []
            for j, k in zip(who[b:b + BLOCK], which[b:b + BLOCK]):
                life = lives[j]
                events.append((j, life.versions[0][0], life.table, row_at(life, k)))
            self.blocks.append(zlib.compress(marshal.dumps(events), 1))
        self.base = 0                # events dropped from the front (a multiple of BLOCK)
        self._decoded: tuple[int, list] | None = None
        # the few bad rows, as the side-file line written when the clock passes bad_at
        bad = sorted((x for x in lives if x.bad and x.bad_at > after), key=lambda x: x.bad_at)
        self.bad = [(x.bad_at, x.table.split("_", 1)[0], bad_line(x)) for x in bad]
        # repair tasks (a few thousand a day at city) stay whole: crew states follow them
        tasks = [x for x in lives if x.table == "dist_repair_task" and x.versions[-1][0] > after]
        tasks.sort(key=lambda x: x.versions[-1][0])
        self.tasks = tasks
        self.task_lasts = [x.versions[-1][0] for x in tasks]

    def nbytes(self) -> int:
        return self.times.nbytes + sum(map(len, self.blocks))

    def _block(self, b: int) -> list:
        if self._decoded is None or self._decoded[0] != b:
            self._decoded = (b, marshal.loads(zlib.decompress(self.blocks[b - self.base // BLOCK])))
        return self._decoded[1]

    def window(self, lo: Mapping[str, int], hi: int) -> dict[int, tuple[int, str, tuple]]:
        """Per life: (creation time, table, row) of its latest version in (lo[system], hi]."""
        low = min(lo.values())
        i0 = int(np.searchsorted(self.times, low, side="right")) + self.base
        i1 = int(np.searchsorted(self.times, hi, side="right")) + self.base
        out: dict[int, tuple[int, str, tuple]] = {}
        i = i0
        while i < i1:
            b = i // BLOCK
            events = self._block(b)
            stop = min(i1, (b + 1) * BLOCK)
            times = self.times[i - self.base:stop - self.base].tolist()
            for t, (j, created, table, row) in zip(times, events[i - b * BLOCK:stop - b * BLOCK]):
                s_lo = lo.get(table.split("_", 1)[0])
                if s_lo is not None and t > s_lo:
                    out[j] = (created, table, row)
            i = stop
        return out

    def bad_lines(self, lo: Mapping[str, int], hi: int) -> list[tuple]:
        return [line for t, system, line in self.bad if system in lo and lo[system] < t <= hi]

    def tasks_after(self, lo: int) -> list[Life]:
        """Repair tasks with a version after lo (the others no longer move a crew)."""
        return self.tasks[bisect_right(self.task_lasts, lo):]

    def drop(self, floor: int) -> None:
        """Forget the blocks wholly written at or before floor (no source's clock goes back)."""
        done = int(np.searchsorted(self.times, floor, side="right"))
        whole = done // BLOCK * BLOCK
        if whole and whole >= len(self.times) // 4:
            # in a few large cuts, not a copy every step
            self.blocks = self.blocks[whole // BLOCK:]
            self.times = self.times[whole:].copy()
            self.base += whole
            self._decoded = None
