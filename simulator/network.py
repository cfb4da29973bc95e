"""OMS activity: fault and planned outages with their 台区 scope, repair-call bursts and notices."""
from __future__ import annotations

import random

from simulator.clock import DAY, ts
from simulator.gen import count, minutes, rng_for
from simulator.life import Life
from simulator.service import Ids, call, repair_task
from simulator.territory import Territory

STORM_DAYS = 1 / 80        # days of severe weather (typhoon, ice, thunderstorms): major event days
STORM_FACTOR = 12          # fault count on such a day
MOMENTARY_PER_FEEDER = 0.01   # auto-reclosed transient faults per feeder and day (a few a year)
METER_POWER_LOSS = 0.0006     # customer-level power losses raised from metering events, per customer and day
PROACTIVE = 0.35           # faults whose repair is raised by automation before a customer calls


def day(ter: Territory, seed: int, d: int) -> list[Life]:
    """One day of outages: faults (with call bursts and merged orders) and planned outages published."""
    rng = rng_for(seed, "network", d)
    ids = Ids(d, "N")
    pub = [k for k, tg in enumerate(ter.tgs) if tg["pub_priv_flag"] == "01"]
    by_feeder: dict[str, list[int]] = {}
    for k in pub:
        by_feeder.setdefault(ter.tgs[k]["feeder_no"], []).append(k)
    out: list[Life] = []
    storm = rng_for(seed, "weather", d).random() < STORM_DAYS
    for _ in range(count(rng, max(0.7, len(pub) * 0.0015) * (STORM_FACTOR if storm else 1))):
        out += fault(ter, rng, ids, d, by_feeder, storm)
    for _ in range(count(rng, len(ter.feeders) * MOMENTARY_PER_FEEDER)):
        out += momentary(ter, rng, ids, d, by_feeder)
    for _ in range(count(rng, max(0.3, len(ter.feeders) * 0.01))):
        out += planned(ter, rng, ids, d, by_feeder)
    # a customer's supply lost behind its meter box or service line: the smart meter's power-loss
    # event reaches the metering system and a repair is raised before (or instead of) a call
    for _ in range(count(rng, ter.n * METER_POWER_LOSS)):
        i = rng.randrange(ter.n)
        tg = ter.tgs[ter.cons_tg[i]]
        out.append(repair_task(ter, rng, ids, d * DAY + rng.randrange(DAY), ter.cons_org[i], tg, tg["urban_rural"],
                               "0102", None, None, source="03"))
    return out


def momentary(ter: Territory, rng: random.Random, ids: Ids, d: int, by_feeder: dict[str, list[int]]) -> list[Life]:
    """A transient fault cleared by the feeder's auto-reclosing: the whole feeder is off for seconds
    to a few minutes, nobody is sent, and the information is released as already restored."""
    feeder = rng.choice(sorted(by_feeder))
    hit = by_feeder[feeder]
    start = d * DAY + rng.randrange(DAY)
    end = start + rng.choice((rng.randint(1, 30), rng.randint(30, 290)))
    seen = end + rng.randint(30, 180)
    o = Life("dist_outage", seen, dict(
        outage_id=ids("OU"), outage_type="03", scope_level="01", feeder_no=feeder, device_name=f"{feeder}重合闸",
        org_no=ter.tgs[hit[0]]["org_no"], info_source="01", status_code="04", actual_start_time=ts(start),
        actual_end_time=ts(end), cause_code=rng.choice(("01", "02", "03", "99")), tg_count=len(hit),
        cust_count=sum(len(ter.tgs[k]["cons"]) for k in hit), important_cust_count=0, fault_confirm_time=ts(seen)))
    o.set(seen + rng.randint(60, 240), publish_time=ts(seen + 60))
    return [o] + [Life("dist_outage_tg", seen, dict(outage_id=o.row["outage_id"], tg_no=ter.tgs[k]["tg_no"],
                                                    cust_count=len(ter.tgs[k]["cons"]), restore_time=ts(end)))
                  for k in hit]


def fault(ter: Territory, rng: random.Random, ids: Ids, d: int, by_feeder: dict[str, list[int]],
          storm: bool = False) -> list[Life]:
    feeder = rng.choice(sorted(by_feeder))
    tgs = by_feeder[feeder]
    whole = rng.random() < 0.3
    hit = tgs if whole else rng.sample(tgs, 1)
    org = ter.tgs[hit[0]]["org_no"]
    start = d * DAY + rng.randrange(DAY)
    created = start + minutes(rng, 2, 5)
    n_cust = sum(len(ter.tgs[k]["cons"]) for k in hit)
    o = Life("dist_outage", created, dict(
        outage_id=ids("OU"), outage_type="03", scope_level="01" if whole else "03", feeder_no=feeder,
        device_name=f"{feeder}开关", org_no=org, info_source=rng.choice(("01", "02", "03")), status_code="02",
        actual_start_time=ts(start), cause_code=rng.choice(("01", "02", "03", "04", "08", "99")),
        tg_count=len(hit), cust_count=n_cust, important_cust_count=0, fault_confirm_time=ts(created)))
    oid = o.row["outage_id"]
    scope = [Life("dist_outage_tg", created, dict(outage_id=oid, tg_no=ter.tgs[k]["tg_no"],
                                                  cust_count=len(ter.tgs[k]["cons"]))) for k in hit]
    out: list[Life] = [o] + scope
    end = start
    # outage information released to 95598 within 5 minutes of confirmation, a few late
    publish = created + (rng.randint(30, 280) if rng.random() < 0.96 else rng.randint(320, 1800))
    o.set(publish, publish_time=ts(publish))
    for s in scope:
        restore = start + minutes(rng, 40, 240) * (rng.randint(2, 5) if storm else 1)
        end = max(end, restore)
        s.set(restore, restore_time=ts(restore))
        o.set(restore, status_code="03")
    o.set(end + minutes(rng, 1, 30), status_code="04", actual_end_time=ts(end))
    # found by distribution automation (feeder faults) or metering power-loss events (台区) before
    # anyone calls: the proactive task leads, the callers' orders follow it
    task = None
    if rng.random() < PROACTIVE:
        task = repair_task(ter, rng, ids, created + rng.randint(30, 300), org, ter.tgs[hit[0]],
                           ter.tgs[hit[0]]["urban_rural"], "0101" if whole else "0102", None, oid,
                           source="02" if whole else "03")
        out.append(task)
    main: Life | None = None
    calls: list[tuple[int, int]] = []
    for k in hit:
        cons = ter.tgs[k]["cons"]
        for _ in range(min(len(cons), count(rng, 1 + len(cons) / 25))):
            calls.append((created + minutes(rng, 1, 50), rng.choice(cons)))
    for t, i in sorted(calls):
        lives = call(ter, rng, ids, t, i, "01", "0101" if whole else "0102", main, oid, task)
        if main is None:
            main = next((x for x in lives if x.table == "cs_work_order"), None)
        out += lives
    if main is None and task is None:                      # found by automation, nobody called
        out.append(repair_task(ter, rng, ids, created, org, ter.tgs[hit[0]], ter.tgs[hit[0]]["urban_rural"],
                               "0101", None, oid, source=rng.choice(("02", "03"))))
    return out


def planned(ter: Territory, rng: random.Random, ids: Ids, d: int, by_feeder: dict[str, list[int]]) -> list[Life]:
    feeder = rng.choice(sorted(by_feeder))
    hit = by_feeder[feeder][: rng.randint(1, 4)]
    org = ter.tgs[hit[0]]["org_no"]
    publish = d * DAY + rng.randint(9 * 3600, 17 * 3600)
    kind = rng.choice(("01", "01", "02"))
    # planned work is announced 7 days ahead or more (a few late); temporary outages 1-3 days ahead
    ahead = (rng.randint(8, 12) if rng.random() < 0.97 else rng.randint(3, 7)) if kind == "01" else rng.randint(1, 3)
    plan_start = (d + ahead) * DAY + rng.randint(8 * 3600, 9 * 3600)
    plan_end = plan_start + rng.randint(4, 8) * 3600
    o = Life("dist_outage", publish, dict(
        outage_id=ids("OU"), outage_type=kind, scope_level="02", feeder_no=feeder,
        device_name=f"{feeder}分支", org_no=org, info_source="04", status_code="01", plan_start_time=ts(plan_start),
        plan_end_time=ts(plan_end), publish_time=ts(publish), cause_code="06", tg_count=len(hit),
        cust_count=sum(len(ter.tgs[k]["cons"]) for k in hit), important_cust_count=0))
    oid = o.row["outage_id"]
    out: list[Life] = [o]
    notices = []
    for k in hit:
        for i in ter.tgs[k]["cons"][:60]:
            send = publish + rng.randint(600, 7200)
            n = Life("dist_outage_notice", send, dict(
                notice_id=f"{oid}-{len(notices) + 1:04d}", outage_id=oid, cons_no=ter.cons[i],
                notice_channel=rng.choice(("01", "01", "03", "04")), mobile_no=f"139****{i % 10000:04d}",
                send_time=ts(send), deliver_status="03"))
            st = rng.choices(("01", "02", "03"), (90, 7, 3))[0]
            if st != "03":
                n.set(send + rng.randint(10, 600), deliver_status=st, deliver_time=ts(send + 30) if st == "01" else None)
            notices.append(n)
    if rng.random() < 0.05:
        o.set(plan_start - 3600 * rng.randint(2, 24), status_code="05", remark="天气原因取消")
        return out + notices
    start = plan_start + rng.randint(0, 900)
    end = plan_end + rng.randint(-1800, 1800)
    o.set(start, status_code="02", actual_start_time=ts(start))
    scope = [Life("dist_outage_tg", start, dict(outage_id=oid, tg_no=ter.tgs[k]["tg_no"],
                                                cust_count=len(ter.tgs[k]["cons"]))) for k in hit]
    for s in scope:
        s.set(end, restore_time=ts(end))
    o.set(end + rng.randint(60, 1800), status_code="04", actual_end_time=ts(end))
    return out + notices + scope
