"""Call-centre ACD logs: agent state intervals and 30-second queue snapshots."""
from __future__ import annotations

import math

from simulator.clock import DAY, ts
from simulator.gen import CALL_RHYTHM, rng_for
from simulator.life import Life, layout
from simulator.territory import CITY, Territory

SKILLS = ("01", "02", "03", "04", "05", "09")
STATES = (("01", 30), ("02", 40), ("04", 12), ("03", 4), ("05", 8), ("06", 6))


def day(ter: Territory, seed: int, d: int) -> list[Life]:
    """Agent shifts split into state intervals (written when each ends) and queue snapshots."""
    rng = rng_for(seed, "acd", d)
    out: list[Life] = []
    for k, agent in enumerate(ter.agents):
        t = d * DAY + (8 if k % 3 else 16) * 3600 + rng.randrange(600)
        stop = t + 8 * 3600
        n = 0
        while t < stop:
            code = rng.choices([s[0] for s in STATES], [s[1] for s in STATES])[0]
            end = t + rng.randint(120, 2400)
            n += 1
            out.append(Life("cs_agent_state", end, dict(
                state_id=f"{agent}-{d}-{n:03d}", agent_id=agent, org_no=CITY, skill_group=SKILLS[k % 5],
                state_code=code, start_time=ts(t), end_time=ts(end))))
            t = end
    cols, defaults, pos = layout("cs_queue_snapshot")
    peak = max(CALL_RHYTHM)
    # mean calls waiting per skill at the peak hour: the centre is sized for its territory, so
    # a queue forms now and then even for a small one
    scale = max(0.6, ter.n / 20000)
    for s in range(0, DAY, 30):
        t = d * DAY + s
        load = CALL_RHYTHM[s // 3600] / peak
        for sk in SKILLS:
            waiting = _poisson(rng, load * scale * (2 if sk == "01" else 1))
            row = (ts(t), sk, CITY, waiting, rng.randint(5, 90) if waiting else 0,
                   max(0, int(len(ter.agents) / 6 * (1 - load)) + rng.randint(0, 2)), None, None, 0)
            out.append(Life("cs_queue_snapshot", t + 1, versions=[(t + 1, row)]))
    return out


def _poisson(rng, mean: float) -> int:
    """A Poisson draw (Knuth; the means here are small)."""
    if mean > 30:
        return max(0, int(rng.gauss(mean, mean ** 0.5)))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
