"""95598 activity: calls, work orders with their flow steps, 回访, 催办, and the repair tasks they start."""
from __future__ import annotations

import random

from simulator.clock import DAY, day_str, parse_ts as _sec, ts
from simulator.gen import ARRIVAL_LIMIT_MIN, CALL_RHYTHM, WORK_RHYTHM, at, count, minutes, org_chain, rng_for
from simulator.life import Life
from simulator.territory import Territory

WO_TYPES = (("01", 15), ("06", 45), ("07", 12), ("02", 5), ("03", 2), ("04", 3), ("05", 2))
SUBTYPES = {"01": ("0101", "0102", "0102", "0102", "0103", "0104", "0105", "0106"),
            "02": ("0201", "0202", "0203", "0204", "0205"), "03": ("0301", "0302", "0303", "0309"),
            "06": ("0601", "0602", "0603", "0609"), "07": ("0701", "0702", "0703", "0709")}
SKILL = {"01": "01", "06": "02", "07": "03", "02": "04", "03": "04", "04": "09", "05": "09"}
DUE_HOURS = {"01": 24, "02": 6 * 24, "03": 9 * 24, "04": 9 * 24, "05": 5 * 24, "06": 24, "07": 5 * 24}
WO_SHARE = {"01": 0.95, "02": 1.0, "03": 1.0, "04": 1.0, "05": 1.0, "06": 0.25, "07": 0.9}


class Ids:
    """Day-scoped id sequences: deterministic because each day is generated alone."""

    def __init__(self, day: int, tag: str) -> None:
        self.prefix = day_str(day).replace("-", "") + tag
        self.n: dict[str, int] = {}

    def __call__(self, kind: str) -> str:
        self.n[kind] = self.n.get(kind, 0) + 1
        return f"{kind}{self.prefix}{self.n[kind]:06d}"


# Orders that do not come from a 95598 call: online channels (app, website/chat, WeChat, SMS),
# transfers from the 12398 regulator and 12345 government hotlines, and the hall. Weights per channel,
# then the order types each channel brings (transfers are mostly complaints and requests).
OTHER_CHANNELS = (("02", 50), ("03", 8), ("04", 20), ("05", 2), ("06", 3), ("07", 12), ("08", 5))
OTHER_TYPES = {"online": (("01", 20), ("06", 30), ("07", 40), ("04", 5), ("05", 5)),
               "transfer": (("02", 45), ("06", 20), ("07", 25), ("03", 5), ("04", 5)),
               "hall": (("07", 70), ("06", 20), ("02", 5), ("05", 5))}
# orders from other channels per 95598 call (online intake is about as large as the phone's)
OTHER_PER_CALL = 0.75
# Some customers complain again about the same grievance: one in REPEATER_EVERY customers is
# aggrieved (its complaint class fixed by its number) and makes this share of all complaints.
REPEATER_EVERY = 499
REPEATER_SHARE = 0.12


def day(ter: Territory, seed: int, d: int) -> list[Life]:
    """One day of inbound calls and the orders they create, and orders from the other channels."""
    rng = rng_for(seed, "service", d)
    ids = Ids(d, "C")
    out: list[Life] = []
    calls = count(rng, ter.n * 0.0065)
    for _ in range(calls):
        i = rng.randrange(ter.n) if rng.random() < 0.85 else None
        wtype = rng.choices([w[0] for w in WO_TYPES], [w[1] for w in WO_TYPES])[0]
        sub = rng.choice(SUBTYPES[wtype]) if wtype in SUBTYPES else None
        i, sub = complainant(ter, rng, i, wtype, sub)
        out += call(ter, rng, ids, at(rng, d), i, wtype, sub)
    for _ in range(count(rng, calls * OTHER_PER_CALL)):
        channel = rng.choices([c[0] for c in OTHER_CHANNELS], [c[1] for c in OTHER_CHANNELS])[0]
        kind = "transfer" if channel in ("06", "07") else "hall" if channel == "08" else "online"
        types = OTHER_TYPES[kind]
        wtype = rng.choices([w[0] for w in types], [w[1] for w in types])[0]
        sub = rng.choice(SUBTYPES[wtype]) if wtype in SUBTYPES else None
        i = rng.randrange(ter.n) if kind != "transfer" or rng.random() < 0.7 else None
        i, sub = complainant(ter, rng, i, wtype, sub)
        org = ter.cons_org[i] if i is not None else rng.choice(ter.stations)
        accept = at(rng, d, WORK_RHYTHM if kind != "online" else CALL_RHYTHM)
        out += order(ter, rng, ids, accept, i, org, wtype, sub, channel,
                     caller=f"137****{rng.randrange(10000):04d}" if i is None else None)
    return out


def complainant(ter: Territory, rng: random.Random, i: int | None, wtype: str,
                sub: str | None) -> tuple[int | None, str | None]:
    """For a complaint, sometimes one of the aggrieved customers with its standing grievance."""
    if wtype != "02" or rng.random() >= REPEATER_SHARE:
        return i, sub
    k = rng.randrange(max(1, ter.n // REPEATER_EVERY)) * REPEATER_EVERY
    return k, SUBTYPES["02"][k // REPEATER_EVERY % len(SUBTYPES["02"])]


def call(ter: Territory, rng: random.Random, ids: Ids, arrive: int, i: int | None, wtype: str,
         sub: str | None, main: Life | None = None, outage_id: str | None = None,
         task: Life | None = None) -> list[Life]:
    """One inbound call; if answered it may open a work order (merged into `main` if given)."""
    r = rng.random()
    result = "01" if r < 0.80 else "02" if r < 0.88 else "03" if r < 0.96 else "04" if r < 0.99 else "05"
    queue = None if result in ("02", "05") else arrive + rng.randint(15, 60)
    answer = end = None
    talk = 0
    if result == "01":
        answer = queue + int(rng.expovariate(1 / 25))
        talk = 60 + int(rng.expovariate(1 / 200))
        end = answer + talk
    elif result in ("03", "04"):
        end = queue + rng.randint(5, 120)
    else:
        end = arrive + rng.randint(20, 180)
    org = ter.cons_org[i] if i is not None else rng.choice(ter.stations)
    row = dict(call_id=ids("CL"), call_direction="01", caller_no=f"138****{rng.randrange(10000):04d}",
               skill_group=SKILL[wtype], arrive_time=ts(arrive), queue_start_time=ts(queue) if queue else None,
               answer_time=ts(answer) if answer else None, end_time=ts(end), call_result=result,
               agent_id=rng.choice(ter.agents) if answer else None, org_no=org,
               cons_no=ter.cons[i] if i is not None else None, busi_type_code=wtype, sub_type_code=sub,
               talk_seconds=talk if answer else None, hold_seconds=rng.choice((0, 0, 0, 15, 40)) if answer else None,
               acw_seconds=rng.randint(10, 90) if answer else None,
               resolved_flag=(int(rng.random() < 0.7) if answer else None))
    c = Life("cs_call", end + rng.randint(0, 5), row)
    out = [c]
    if answer and rng.random() < WO_SHARE[wtype]:
        accept = answer + talk // 2
        lives = order(ter, rng, ids, accept, i, org, wtype, sub, "01", main, outage_id, task=task,
                      caller=row["caller_no"])
        out = lives + out
        c.set(max(end + rng.randint(30, 300), lives[0].start), wo_no=lives[0].row["wo_no"],
              ivr_satisfaction=rng.choice(("01", "01", "01", "02", "03", None)))
    if answer and rng.random() < 0.03:
        c.set(end + rng.randint(DAY, 3 * DAY), qa_score=round(rng.uniform(80, 100), 1),
              qa_time=ts(end + 2 * DAY))
    return out


def order(ter: Territory, rng: random.Random, ids: Ids, accept: int, i: int | None, org: str, wtype: str,
          sub: str | None, channel: str, main: Life | None = None, outage_id: str | None = None,
          task: Life | None = None, caller: str | None = None, app_no: str | None = None) -> list[Life]:
    """A work order's whole life with its steps, 回访, 催办 and (for 报修) the repair task.

    task: a repair task already raised for the fault (proactive repair): the order follows it
    instead of starting its own."""
    if main is not None:                                    # a duplicate is always accepted after its main order
        accept = max(accept, main.start + 1)
    prov, city, county = org_chain(ter, org)
    tg = ter.tgs[ter.cons_tg[i]] if i is not None else None
    ur = tg["urban_rural"] if tg else ter.station_ur[org]
    wo_no = ids("WO")
    o = Life("cs_work_order", accept, dict(
        wo_no=wo_no, sg_wo_no="SG" + wo_no[2:], busi_type_code=wtype, sub_type_code=sub, accept_channel=channel,
        urgency="02" if wtype == "01" else "03", accept_time=ts(accept), due_time=ts(accept + DUE_HOURS[wtype] * 3600),
        status_code="01", prov_org_no=prov, city_org_no=city, org_no=org, cons_no=ter.cons[i] if i is not None else None,
        tg_no=tg["tg_no"] if tg else None, elec_type_code=ter.cons_elec[i] if i is not None else None, urban_rural=ur,
        important_flag=(ter.cons_flag[i] & 1) if i is not None else 0,
        sensitive_flag=((ter.cons_flag[i] >> 1) & 1) if i is not None else 0, call_count=1,
        accept_content=f"客户{'来电' if channel == '01' else ''}反映{sub or wtype}类诉求", caller_no=caller, app_no=app_no,
        escalate_level=escalation(rng, wtype, channel)))
    steps: list[Life] = []

    def step(t: int, code: str, who: str | None = None, remark: str | None = None) -> None:
        steps.append(Life("cs_wo_step", t, dict(step_id=f"{wo_no}-{len(steps) + 1:02d}", wo_no=wo_no,
                                                step_seq=len(steps) + 1, step_code=code, step_time=ts(t),
                                                org_no=who or org, handler_no=f"E{rng.randrange(9999):04d}",
                                                remark=remark)))

    step(accept, "10", city)
    if main is not None:                                    # duplicate call about a known fault: merge
        t = accept + rng.randint(120, 1200)
        o.set(t, merged_into_wo_no=main.row["wo_no"], status_code="08", close_time=ts(t))
        step(t, "95", remark=f"合并至{main.row['wo_no']}")
        main.set(t, call_count=int(main.row["call_count"]) + 1)
        return [o] + steps
    dispatch = accept + (minutes(rng, 1, 5) if wtype == "01" else minutes(rng, 5, 90))
    o.set(dispatch, dispatch_time=ts(dispatch), status_code="02")
    step(dispatch, "20", city)
    receive = dispatch + minutes(rng, 1, 15)
    o.set(receive, receive_time=ts(receive), status_code="03")
    step(receive, "30")
    extra: list[Life] = []
    if wtype == "01":
        if task is None:
            task = repair_task(ter, rng, ids, receive, org, tg, ur, sub, wo_no, outage_id)
            extra.append(task)
        arr = task.row["arrive_time"]
        step(max(receive, task.versions[-1][0] if not arr else _sec(arr)), "40")
        reply = max(receive, _sec(task.row["reply_time"])) + minutes(rng, 1, 10)
    else:
        contact = receive + minutes(rng, 20, 360)
        step(contact, "32")
        span = DUE_HOURS[wtype] * 3600
        reply = receive + int(span * (rng.uniform(0.05, 0.9) if rng.random() < 0.95 else rng.uniform(1.0, 1.5)))
    o.set(reply, reply_time=ts(reply), status_code="04", handle_opinion="已处理并答复客户")
    step(reply, "60")
    audit = reply + minutes(rng, 20, 480)
    if rng.random() < 0.06:                                 # 审核退单, handled again
        o.set(audit, status_code="07", return_count=1)
        step(audit, "75", remark="回单内容不完整")
        o.set(audit + 600, status_code="03")
        reply = audit + minutes(rng, 60, 600)
        o.set(reply, reply_time=ts(reply), status_code="04")
        step(reply, "60")
        audit = reply + minutes(rng, 20, 240)
    o.set(audit, audit_time=ts(audit), status_code="05")
    step(audit, "70")
    visits: list[Life] = []
    t = audit
    for seq in (1, 2):
        plan = t + minutes(rng, 60, 1200)
        v = Life("cs_visit", t, dict(visit_id=f"{wo_no}-V{seq}", wo_no=wo_no, visit_seq=seq, visit_mode="01",
                                     plan_time=ts(plan), agent_id=rng.choice(ter.agents)))
        visits.append(v)
        ok = seq == 2 or rng.random() < 0.85
        sat = rng.choices(("01", "02", "03"), (85, 10, 5))[0]
        v.set(plan, visit_time=ts(plan), visit_result="01" if ok else "02",
              satisfaction=sat if ok else None, resolved_flag=int(sat != "03") if ok else None,
              dissatisfied_reason="处理不及时" if ok and sat == "03" else None)
        t = plan
        if ok:
            break
    step(t, "80")
    close = t + minutes(rng, 5, 120)
    o.set(close, close_time=ts(close), status_code="06")
    step(close, "90")
    if wtype == "02":                                       # 属实认定 days after archive
        # an aggrieved customer's standing grievance is usually founded
        weights = (60, 20, 20) if i is not None and i % REPEATER_EVERY == 0 else (30, 15, 55)
        o.set(close + rng.randint(DAY, 5 * DAY), complaint_valid=rng.choices(("01", "02", "03"), weights)[0])
    urges: list[Life] = []
    if rng.random() < 0.08:
        ut = accept + int((close - accept) * rng.uniform(0.1, 0.8))
        urges.append(Life("cs_urge", ut, dict(urge_id=f"{wo_no}-U1", wo_no=wo_no, urge_time=ts(ut),
                                              urge_source=rng.choice(("01", "02", "03", "04")),
                                              urge_reason="02" if wtype == "01" else rng.choice(("01", "03", "04")),
                                              urge_content="客户催促处理", org_no=org)))
    return [o] + steps + visits + urges + extra


def escalation(rng: random.Random, wtype: str, channel: str) -> str | None:
    """ESCALATE_LEVEL of a new order: complaints are escalated now and then, regulator transfers more often."""
    if wtype != "02":
        return "01" if rng.random() < 0.002 else None
    share = 0.16 if channel == "06" else 0.08
    r = rng.random()
    if r >= share:
        return None
    return "01" if r < share * 0.9 else rng.choice(("02", "02", "03"))


def repair_task(ter: Territory, rng: random.Random, ids: Ids, receive: int, org: str, tg: dict | None, ur: str,
                sub: str | None, wo_no: str | None, outage_id: str | None, source: str = "01") -> Life:
    """A 抢修 task moving through dispatch, arrival (sometimes back-filled) and restoration."""
    crew = rng.choice(ter.crews[org])
    t = Life("dist_repair_task", receive, dict(
        task_id=ids("RT"), wo_no=wo_no, outage_id=outage_id, org_no=org, feeder_no=tg["feeder_no"] if tg else None,
        tg_no=tg["tg_no"] if tg else None, urban_rural=ur, fault_addr=f"{org[-4:]}某路", urgency="02",
        receive_time=ts(receive), status_code="01", task_source=source,
        appoint_time=ts(receive + 3 * 3600) if rng.random() < 0.03 else None))
    dispatch = receive + minutes(rng, 1, 8)
    t.set(dispatch, dispatch_time=ts(dispatch), crew_id=crew, status_code="02")
    accept = dispatch + minutes(rng, 0.5, 5)
    t.set(accept, crew_accept_time=ts(accept), status_code="03")
    depart = accept + minutes(rng, 1, 5)
    t.set(depart, depart_time=ts(depart), status_code="04")
    limit = ARRIVAL_LIMIT_MIN[ur] * 60
    arrive = receive + int(limit * (rng.uniform(0.3, 0.98) if rng.random() < 0.92 else rng.uniform(1.02, 1.6)))
    arrive = max(arrive, depart + 60)
    backfill = rng.random() < 0.2
    restore = arrive + minutes(rng, 20, 180)
    if backfill:                                            # arrival keyed in from the app at restoration
        t.set(restore, restore_time=ts(restore), arrive_time=ts(arrive), arrive_backfill_flag=1, status_code="06")
    else:
        t.set(arrive, arrive_time=ts(arrive), status_code="05", lon=round(120 + rng.random(), 6),
              lat=round(30 + rng.random(), 6))
        t.set(restore, restore_time=ts(restore), status_code="06")
    reply = restore + minutes(rng, 5, 60)
    t.set(reply, reply_time=ts(reply), status_code="07", fault_type=sub if sub and sub.startswith("01") else "0102",
          fault_cause=rng.choice(("01", "02", "03", "04", "05", "08", "99")), equip_owner=rng.choice(("01", "01", "02")))
    t.set(reply + rng.randint(12 * 3600, DAY), status_code="08")
    return t
