"""Call-centre ACD logs: agent state intervals and 30-second queue snapshots."""
from __future__ import annotations

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
    scale = max(1.0, ter.n / 20000)
    for s in range(0, DAY, 30):
        t = d * DAY + s
        load = CALL_RHYTHM[s // 3600] / peak
        for sk in SKILLS:
            waiting = int(rng.random() * load * scale * (2 if sk == "01" else 1))
            row = (ts(t), sk, CITY, waiting, rng.randint(5, 90) if waiting else 0,
                   max(0, int(len(ter.agents) / 6 * (1 - load)) + rng.randint(0, 2)), None, None, 0)
            out.append(Life("cs_queue_snapshot", t + 1, versions=[(t + 1, row)]))
    return out
