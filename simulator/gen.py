"""Shared helpers for the activity generators: seeded randomness, daily rhythm, org lookups."""
from __future__ import annotations

import random

from simulator.clock import DAY
from simulator.territory import CITY, PROVINCE, Territory

# share of a day's 95598 calls per hour: night low, peaks 9-11 and 14-16
CALL_RHYTHM = (2, 1, 1, 1, 1, 2, 4, 8, 12, 16, 16, 13, 9, 10, 14, 15, 14, 11, 9, 8, 7, 6, 4, 3)
WORK_RHYTHM = (0, 0, 0, 0, 0, 0, 0, 1, 6, 10, 10, 8, 3, 5, 9, 10, 8, 4, 1, 0, 0, 0, 0, 0)
ARRIVAL_LIMIT_MIN = {"01": 45, "02": 90, "03": 120}


def rng_for(seed: int, name: str, day: int) -> random.Random:
    """An independent generator per (seed, generator, day): days can be regenerated alone."""
    return random.Random(f"{seed}:{name}:{day}")


def count(rng: random.Random, mean: float) -> int:
    """A whole number of events around `mean` (±15 %, fractional means kept on average)."""
    x = mean * rng.uniform(0.85, 1.15)
    return int(x) + (1 if rng.random() < x - int(x) else 0)


def at(rng: random.Random, day: int, rhythm: tuple[int, ...] = CALL_RHYTHM) -> int:
    """A second of `day` drawn along an hourly rhythm."""
    hour = rng.choices(range(24), rhythm)[0]
    return day * DAY + hour * 3600 + rng.randrange(3600)


def org_chain(ter: Territory, station: str) -> tuple[str, str, str]:
    """(province, city, county) above a 供电所."""
    return PROVINCE, CITY, ter.station_county[station]


def minutes(rng: random.Random, lo: float, hi: float) -> int:
    return int(rng.uniform(lo, hi) * 60)
