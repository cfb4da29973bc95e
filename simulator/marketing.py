"""营销 activity: 业扩 applications and stages, appointments, hall queues, visits, 费控停复电, bills and payments."""
from __future__ import annotations

import random
from datetime import date

from simulator.clock import DAY, day_of, day_str, to_date, ts
from simulator.gen import WORK_RHYTHM, at, count, minutes, rng_for
from simulator.life import Life
from simulator.service import Ids, order
from simulator.territory import Territory

APP_TYPES = (("101", 55), ("102", 20), ("111", 8), ("103", 5), ("112", 2), ("121", 6), ("122", 3), ("131", 1))
# (step_code, resp_party, mean days, mis_app stamp set when it ends)
HV_FLOW = (("01", "01", 0.1, None), ("02", "01", 2, "survey_time"), ("03", "01", 8, "plan_reply_time"),
           ("04", "02", 10, None), ("04", "01", 3, "design_review_time"), ("05", "01", 3, "mid_check_time"),
           ("06", "02", 12, None), ("06", "01", 3, "completion_check_time"), ("07", "01", 2, "contract_sign_time"),
           ("08", "01", 4, "connect_time"), ("09", "01", 2, "archive_time"))
LV_FLOW = (("01", "01", 0.05, None), ("02", "01", 1, "survey_time"), ("08", "01", 2, "connect_time"),
           ("09", "01", 1, "archive_time"))
CHANNELS = (("0209", 30), ("0208", 22), ("0104", 20), ("0206", 8), ("0201", 5), ("0101", 6), ("0207", 3),
            ("0203", 3), ("0103", 3))
BANK = {"0201", "0203", "0204", "0205", "0206", "0207"}
PRICE = {"03": 0.55, "02": 0.75, "01": 0.65}
# remote reading, meter reader on site, estimated (估抄), keyed in by hand (人工补录)
READ_TYPES, READ_WEIGHTS = ("01", "02", "03", "04"), (96.7, 3.05, 0.15, 0.1)
LATE_STAGE = 0.04          # share of 业扩 stages that wait much longer than usual
APP_COMPLAINTS = 0.006     # applications whose applicant files a complaint about them
ARREARS_SHARE = 0.004      # customers carrying unpaid bills of earlier months into the history


def day(ter: Territory, seed: int, d: int) -> list[Life]:
    """One day of 业扩, appointments, hall tickets, customer visits and remote disconnections."""
    rng = rng_for(seed, "marketing", d)
    ids = Ids(d, "M")
    out: list[Life] = []
    if to_date(d).weekday() < 5:
        for st in ter.stations:
            for _ in range(count(rng, ter.n / len(ter.stations) * 0.0015)):
                out.append(ticket(rng, ids, st, at(rng, d, WORK_RHYTHM)))
    for _ in range(count(rng, ter.n * 0.0004)):
        i = rng.randrange(ter.n)
        t = at(rng, d, WORK_RHYTHM)
        out.append(Life("mis_cust_visit", t + rng.randint(0, 3 * DAY), dict(
            visit_id=ids("VS"), cons_no=ter.cons[i], org_no=ter.cons_org[i], grid_no=ter.cons_grid[i],
            visit_type=rng.choice(("02", "03", "09")) if ter.cons_sort[i] != "03" else "03",
            visit_time=ts(t), emp_no=f"E{ter.cons_grid[i][-6:]}")))
    # 重要客户服务走访: each important customer on its own day of the month, a few visits missed
    dom = to_date(d).day
    for i in important(ter):
        if (i * 7 + to_date(d).month) % 28 + 1 == dom and rng.random() < 0.92:
            t = at(rng, d, WORK_RHYTHM)
            out.append(Life("mis_cust_visit", t + rng.randint(0, 2 * DAY), dict(
                visit_id=ids("VS"), cons_no=ter.cons[i], org_no=ter.cons_org[i], grid_no=ter.cons_grid[i],
                visit_type="01", visit_time=ts(t), emp_no=f"E{ter.cons_grid[i][-6:]}")))
    prepaid = [i for i in range(0, ter.n, max(1, ter.n // 20000)) if ter.cons_pay[i] == "03"]
    for _ in range(count(rng, ter.n * 0.0006)):
        if prepaid:
            out += disconnection(ter, rng, ids, rng.choice(prepaid), d * DAY + rng.randrange(DAY))
    return out


def important(ter: Territory) -> list[int]:
    """Indexes of the important customers (cached on the territory)."""
    cached = getattr(ter, "_important", None)
    if cached is None:
        cached = ter._important = [i for i in range(ter.n) if ter.cons_flag[i] & 1 and ter.cons_active[i]]
    return cached


def apps(ter: Territory, seed: int, d: int) -> list[Life]:
    """One day of 业扩 applications with their stages, appointments and the odd complaint about them."""
    rng = rng_for(seed, "apps", d)
    ids = Ids(d, "A")
    out: list[Life] = []
    for _ in range(count(rng, max(1.0, ter.n * 0.0003))):
        out += application(ter, rng, ids, at(rng, d, WORK_RHYTHM))
    return out


def application(ter: Territory, rng: random.Random, ids: Ids, accept: int) -> list[Life]:
    busi = rng.choices([a[0] for a in APP_TYPES], [a[1] for a in APP_TYPES])[0]
    hv = busi in ("103", "112")
    i = rng.randrange(ter.n)
    grow = busi in ("111", "112", "121", "122")
    org, grid = ter.cons_org[i], ter.cons_grid[i]
    app_no = ids("AP")
    a = Life("mis_app", accept, dict(
        app_no=app_no, busi_type_code=busi, cons_no=ter.cons[i] if grow else None, cons_name=f"申请人{app_no[-5:]}",
        cons_sort_code="01" if hv else ("03" if busi == "101" else "02"),
        elec_type_code="403" if hv else ("202" if busi == "101" else "405"), volt_code="AC00101" if hv else "AC02202",
        apply_cap=float(rng.choice((630, 1250))) if hv else float(rng.choice((8, 16, 30))), org_no=org, grid_no=grid,
        accept_channel=rng.choice(("01", "02", "02", "04", "05", "06")),
        grid_project_flag=int(not hv and rng.random() < 0.1), status_code="01", current_step="01",
        accept_time=ts(accept), supply_source_type=rng.choice(("01", "02")) if hv else None,
        small_micro_flag=int(busi == "102" and rng.random() < 0.6), three_zero_flag=int(not hv and rng.random() < 0.7)))
    out: list[Life] = [a]
    t = accept
    stop = len(HV_FLOW if hv else LV_FLOW) if rng.random() > 0.03 else 2
    stretched = False
    for seq, (code, party, mean, stamp) in enumerate((HV_FLOW if hv else LV_FLOW)[:stop], start=1):
        s = Life("mis_app_step", t, dict(step_id=f"{app_no}-{seq:02d}", app_no=app_no, step_code=code, step_seq=seq,
                                         resp_party=party, start_time=ts(t), org_no=org))
        # most stages take about their usual time; some wait much longer (materials, approvals)
        # (one such stage at most: the whole life stays within the generator's horizon)
        late = not stretched and rng.random() < LATE_STAGE
        stretched = stretched or late
        end = t + int(DAY * (max(1.0, min(mean, 8)) * rng.uniform(2.5, 4.0) if late else mean * rng.uniform(0.3, 1.6)))
        keyed = end + (rng.randint(DAY, 3 * DAY) if rng.random() < 0.15 else rng.randint(0, 600))
        s.set(keyed, end_time=ts(end))
        out.append(s)
        changes = {"current_step": code}
        if stamp:
            changes[stamp] = ts(end)
        if code == "09":
            changes["status_code"] = "02"
        a.set(keyed, **changes)
        if code == "02" and not hv:
            promised = t + int(DAY * 0.8)
            appt = Life("mis_field_appt", t, dict(
                appt_no=f"{app_no}-A", cons_no=a.row["cons_no"], org_no=org, grid_no=grid, appt_type="01", src_no=app_no,
                promised_time=ts(promised), status_code="01"))
            arrive = promised - rng.randint(600, 7200) if rng.random() < 0.93 else promised + rng.randint(600, 7200)
            appt.set(arrive + rng.randint(0, DAY // 2), arrive_time=ts(arrive), status_code="02")
            out.append(appt)
        t = end
    if stop == 2:
        a.set(t + rng.randint(DAY, 20 * DAY), status_code="03", terminate_time=ts(t + DAY))
    if rng.random() < APP_COMPLAINTS:                       # the applicant complains to 95598
        when = accept + rng.randint(DAY, 10 * DAY)
        out += order(ter, rng, ids, when, i if grow else None, org, "02", "0202", rng.choice(("01", "01", "02", "07")),
                     caller=f"136****{rng.randrange(10000):04d}", app_no=app_no)
    return out


def ticket(rng: random.Random, ids: Ids, st: str, take: int) -> Life:
    k = Life("mis_hall_ticket", take, dict(ticket_id=ids("HT"), hall_no=f"H{st}", org_no=st,
                                           busi_kind=rng.choice(("01", "01", "02", "03", "04", "09")),
                                           take_time=ts(take), status_code="01"))
    call = take + minutes(rng, 1, 30)
    if rng.random() < 0.05:
        k.set(call, status_code="04")
        return k
    k.set(call, call_time=ts(call), status_code="02")
    done = call + minutes(rng, 3, 20)
    k.set(done, finish_time=ts(done), status_code="03")
    return k


def disconnection(ter: Territory, rng: random.Random, ids: Ids, i: int, cut: int) -> list[Life]:
    rc = Life("mis_rc_event", cut, dict(rc_id=ids("RC"), cons_no=ter.cons[i], org_no=ter.cons_org[i],
                                         meter_asset_no=ter.cons_meter[i], cut_reason="01", cut_mode="01",
                                         cut_time=ts(cut), status_code="01"))
    if rng.random() > 0.85:
        return [rc]
    settle = cut + rng.randint(2 * 3600, 2 * DAY)
    pay = Life("mis_payment", settle, dict(
        charge_id=ids("PY"), cons_no=ter.cons[i], org_no=ter.cons_org[i], pay_time=ts(settle), acct_time=ts(settle),
        rcv_amt=float(rng.choice((50, 100, 200))), pay_channel=rng.choice(("0209", "0208", "0104")), pay_method="03",
        third_trade_no=f"T{rng.getrandbits(40):012d}", status_code="01"))
    rc.set(settle + 5, settle_time=ts(settle), settle_charge_id=pay.row["charge_id"], status_code="02")
    cmd = settle + rng.randint(10, 300)
    if rng.random() < 0.92:
        rc.set(cmd + 30, recon_cmd_time=ts(cmd), recon_remote_result="01", recon_mode="01", recon_time=ts(cmd + 20),
               status_code="03")
    else:
        rc.set(cmd + 120, recon_cmd_time=ts(cmd), recon_remote_result=rng.choice(("02", "03")))
        field = cmd + rng.randint(2 * 3600, 8 * 3600)
        rc.set(field + rng.randint(0, DAY), recon_mode="02", recon_time=ts(field), status_code="03")
    return [pay, rc]


def bills(ter: Territory, seed: int, d: int) -> list[Life]:
    """Bills released on the 1st-3rd of the month (a third of the 抄表段 each day), and their payments."""
    dom = to_date(d).day
    if dom > 3:
        return []
    rng = rng_for(seed, "bills", d)
    ids = Ids(d, "B")
    ym = day_str(d)[:7].replace("-", "")
    due = day_str(d + 25)
    out: list[Life] = []
    for i in range(dom - 1, ter.n, 3):
        if not ter.cons_active[i]:
            continue
        release = d * DAY + rng.randint(2 * 3600, 6 * 3600)
        kwh = round(ter.cons_kwh[i] * 30 * rng.uniform(0.8, 1.2), 2)
        amt = round(kwh * PRICE[ter.cons_sort[i]], 2)
        b = Life("mis_bill", release, dict(
            bill_id=ids("BL"), cons_no=ter.cons[i], org_no=ter.cons_org[i], rcvbl_ym=ym, amt_type="01", t_pq=kwh,
            rcvbl_amt=amt, rcved_amt=0.0, release_date=day_str(d), due_date=due, settle_flag="01",
            elec_type_code=ter.cons_elec[i], read_type=rng.choices(READ_TYPES, READ_WEIGHTS)[0]))
        out.append(b)
        if rng.random() < 0.002:                                # 退补 for this month's bill, keyed later
            t = release + rng.randint(5 * DAY, 20 * DAY)
            out.append(Life("mis_bill", t, dict(
                bill_id=ids("BL"), cons_no=ter.cons[i], org_no=ter.cons_org[i], rcvbl_ym=ym, amt_type="02",
                orig_bill_id=b.row["bill_id"], t_pq=-10.0, rcvbl_amt=-5.5, rcved_amt=0.0, release_date=day_str(t // DAY),
                settle_flag="01", elec_type_code=ter.cons_elec[i])))
        if rng.random() > 0.93:
            # not paid by the due date: most pay after 催费 within one to three months, a tenth never
            if rng.random() < 0.1:
                continue
            paid = release + rng.randint(30 * DAY, 100 * DAY)
        else:
            paid = release + int(rng.expovariate(1 / (8 * DAY)))
            if paid > release + 45 * DAY:
                continue
        chan = rng.choices([c[0] for c in CHANNELS], [c[1] for c in CHANNELS])[0]
        posted = paid + (rng.randint(DAY, 3 * DAY) if chan in BANK else rng.randint(1, 30))
        p = Life("mis_payment", posted, dict(
            charge_id=ids("PY"), cons_no=ter.cons[i], org_no=ter.cons_org[i],
            rcv_org_no=ter.cons_org[i] if chan.startswith("01") else None, pay_time=ts(paid), acct_time=ts(posted),
            rcv_amt=amt, pay_channel=chan, pay_method="01" if chan == "0101" else ("02" if chan in BANK else "03"),
            third_trade_no=f"T{rng.getrandbits(40):012d}", status_code="01",
            operator_no="E0001" if chan == "0101" else None))
        f = Life("mis_rcved_flow", posted, dict(rcved_id=ids("RF"), charge_id=p.row["charge_id"], bill_id=b.row["bill_id"],
                                                cons_no=ter.cons[i], org_no=ter.cons_org[i], rcved_amt=amt,
                                                rcved_time=ts(paid), status_code="01"))
        invoice = rng.random() < 0.6
        b.set(posted, rcved_amt=amt, settle_flag="03", settle_time=ts(paid),
              invoice_type="01" if invoice else None, invoice_time=ts(posted + 60) if invoice else None)
        out += [p, f]
        if rng.random() < 0.003:                                # 冲正 days later
            t = posted + rng.randint(2 * DAY, 6 * DAY)
            r = Life("mis_payment", t, dict(
                charge_id=ids("PY"), cons_no=ter.cons[i], org_no=ter.cons_org[i], pay_time=ts(t), acct_time=ts(t),
                rcv_amt=-amt, pay_channel=chan, pay_method=p.row["pay_method"], status_code="03",
                reversal_of=p.row["charge_id"]))
            p.set(t, status_code="02")
            out += [r, Life("mis_rcved_flow", t, dict(
                rcved_id=ids("RF"), charge_id=r.row["charge_id"], bill_id=b.row["bill_id"], cons_no=ter.cons[i],
                org_no=ter.cons_org[i], rcved_amt=-amt, rcved_time=ts(t), status_code="02"))]
            b.set(t, rcved_amt=0.0, settle_flag="01", settle_time=None)
    return out


def arrears(ter: Territory, seed: int, d: int) -> list[Life]:
    """Arrears the history opens with (run for the day before the start only): a few customers owe
    1-6 monthly bills released 4 to 16 months earlier, some from previous years; about a third of
    them settle everything at the counter during the first months of the history."""
    start = ter.t0 // DAY + 30
    if d != start - 1:
        return []
    rng = rng_for(seed, "arrears", d)
    first = to_date(start).replace(day=1)
    out: list[Life] = []
    seen: set[int] = set()
    for _ in range(count(rng, ter.n * ARREARS_SHARE)):
        i = rng.randrange(ter.n)
        if not ter.cons_active[i] or ter.cons_sort[i] == "01" or i in seen:
            continue
        seen.add(i)
        back = rng.randint(4, 16)
        bills = []
        for m in range(back, max(3, back - rng.randint(1, 6)), -1):
            y, mo = divmod(first.year * 12 + first.month - 1 - m, 12)
            release = day_of(date(y, mo + 1, 1)) + dom_of(i)
            kwh = round(ter.cons_kwh[i] * 30 * rng.uniform(0.8, 1.2), 2)
            b = Life("mis_bill", release * DAY + 3 * 3600, dict(
                bill_id=f"BL{day_str(release).replace('-', '')}O{i:08d}", cons_no=ter.cons[i], org_no=ter.cons_org[i],
                rcvbl_ym=f"{y}{mo + 1:02d}", amt_type="01", t_pq=kwh, rcvbl_amt=round(kwh * PRICE[ter.cons_sort[i]], 2),
                rcved_amt=0.0, release_date=day_str(release), due_date=day_str(release + 25), settle_flag="01",
                elec_type_code=ter.cons_elec[i], read_type="01"))
            bills.append(b)
        out += bills
        if rng.random() < 0.35:                              # settled at the counter after 催费
            paid = start * DAY + rng.randint(0, 100 * DAY)
            total = round(sum(b.row["rcvbl_amt"] for b in bills), 2)
            p = Life("mis_payment", paid + rng.randint(1, 30), dict(
                charge_id=f"PY{day_str(start).replace('-', '')}O{i:08d}", cons_no=ter.cons[i], org_no=ter.cons_org[i],
                rcv_org_no=ter.cons_org[i], pay_time=ts(paid), acct_time=ts(paid), rcv_amt=total, pay_channel="0101",
                pay_method="01", status_code="01", operator_no="E0001"))
            out.append(p)
            for k, b in enumerate(bills):
                out.append(Life("mis_rcved_flow", p.start, dict(
                    rcved_id=f"{p.row['charge_id']}-{k + 1}", charge_id=p.row["charge_id"], bill_id=b.row["bill_id"],
                    cons_no=ter.cons[i], org_no=ter.cons_org[i], rcved_amt=b.row["rcvbl_amt"], rcved_time=ts(paid),
                    status_code="01")))
                b.set(p.start, rcved_amt=b.row["rcvbl_amt"], settle_flag="03", settle_time=ts(paid))
    return out


def dom_of(i: int) -> int:
    """Day of the month (0-2) a customer's bill is released: its 抄表段 (as bills())."""
    return i % 3
