"""Terminal heartbeats: the master station stamps `meter_terminal.last_online_time` every minute
for each terminal it hears, and stops when a terminal drops off the network for a while.

Everything is a function of (seed, terminal, time), so the row a build writes at its end is the
row that live steps reach at the same clock, whatever their size."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from simulator.clock import DAY

OFFLINE_PER_DAY = 0.004          # chance that a terminal drops off on a given day
OFFLINE_SECONDS = (3600, 40 * 3600)   # how long it stays away (under two days)
BEAT = 60


def phases(n: int) -> np.ndarray:
    """Second within each minute at which terminal k is heard (spread, so a live step of one
    second writes a sixtieth of the terminals rather than all of them at the full minute)."""
    return (np.arange(n, dtype=np.int64) * 7919) % BEAT


@lru_cache(maxsize=16)
def _offline(seed: int, d: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dropped, start, end) of the outages beginning on day d, per terminal."""
    g = np.random.default_rng([seed, 23, d])
    dropped = g.random(n) < OFFLINE_PER_DAY
    start = d * DAY + g.integers(0, DAY, n)
    end = start + g.integers(*OFFLINE_SECONDS, n)
    return dropped, start, end


def offline_at(seed: int, n: int, t: int) -> np.ndarray:
    """Terminals off the network at second t."""
    out = np.zeros(n, dtype=bool)
    for d in range(t // DAY - 2, t // DAY + 1):
        dropped, start, end = _offline(seed, d, n)
        out |= dropped & (start <= t) & (t < end)
    return out


def last_beats(seed: int, n: int, t: int) -> np.ndarray:
    """Second of each terminal's last heartbeat at or before t."""
    ph = phases(n)
    beat = t - ((t - ph) % BEAT)
    days = {d: _offline(seed, d, n) for d in range(t // DAY - 5, t // DAY + 1)}
    for _ in range(4):                   # an outage may start just after an earlier one ended
        moved = False
        for dropped, start, end in days.values():
            inside = dropped & (start <= beat) & (beat < end)
            if inside.any():
                back = start[inside] - 1
                beat[inside] = back - ((back - ph[inside]) % BEAT)
                moved = True
        if not moved:
            break
    return beat


def beats_in(seed: int, n: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(terminal indexes, last heartbeat) of the terminals heard in (lo, hi]."""
    beat = last_beats(seed, n, hi)
    k = np.nonzero(beat > lo)[0]
    return k, beat[k]
