"""用采 activity: nightly collection with 补采, 台区 line loss, voltage, curves, events and theft cases."""
from __future__ import annotations

from itertools import repeat

import numpy as np

from simulator import heartbeat
from simulator.clock import _TOD, DAY, day_str, ts
from simulator.gen import count, minutes, rng_for
from simulator.life import Life
from simulator.service import Ids
from simulator.territory import CURVE_SAMPLE, Territory

EVENTS = (("E01", 8), ("E02", 6), ("E03", 6), ("E04", 4), ("E05", 5), ("E06", 3), ("E07", 15), ("E08", 4),
          ("E09", 2), ("E10", 1), ("E11", 2), ("E12", 10), ("E13", 10), ("E14", 3), ("E15", 10), ("E16", 6),
          ("E17", 8), ("E18", 2))
DRIFTING_PER_1000 = 4     # meters with a clock off by more than 5 minutes
FAULTY_PER_1000 = 2       # meters failing collection for days in a row
HEAVY_EVERY = 8           # one 台区 master meter in N serves a transformer that runs heavy on peak evenings
VOLTAGE_EVERY = 50         # one customer meter in N keeps daily voltage statistics


def _noise(seed: int, d: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, 7, d]).random(n)


def _static(ter: Territory) -> dict:
    """Per-territory lists the daily collection reuses (computed once per territory)."""
    cached = getattr(ter, "_metering", None)
    if cached is None:
        users = [i for i in range(ter.n) if ter.cons_active[i]]
        tf = np.array([ter.cons_tfactor[i] for i in users])
        cached = dict(users=users, idx=np.array(users, dtype=np.int64), tf=tf,
                      mean=np.array([ter.cons_kwh[i] for i in users]) / tf,
                      masters=[tg for tg in ter.tgs if tg["master"]],
                      meters=[ter.cons_meter[i] for i in users], terms=[ter.cons_terminal[i] for i in users],
                      orgs=[ter.cons_org[i] for i in users],
                      tg_arr=np.array([ter.cons_tg[i] for i in users], dtype=np.int64),
                      tgs=[ter.tgs[ter.cons_tg[i]]["tg_no"] for i in users])
        ter._metering = cached
    return cached


def day(ter: Territory, seed: int, d: int) -> list[Life]:
    """Collection rows for data_date d (written from 00:30 on d+1), line loss, voltage and curves."""
    rng = rng_for(seed, "metering", d)
    g = np.random.default_rng([seed, 11, d])
    m = _static(ter)
    users, masters, n = m["users"], m["masters"], len(m["users"])
    now_n, prev_n = _noise(seed, d, ter.n)[m["idx"]], _noise(seed, d - 1, ter.n)[m["idx"]]
    mean = m["mean"]
    reg_now = mean * (d - 8000) + mean * 0.3 * now_n + 1000.0   # register value, before 倍率
    reg_prev = mean * (d - 1 - 8000) + mean * 0.3 * prev_n + 1000.0
    day_kwh = (reg_now - reg_prev) * m["tf"]
    first = (d + 1) * DAY + 1800 + g.integers(0, 6 * 3600 + 1800, n)
    u = g.random(n)
    # terminals off the network during the night's collection (the heartbeat model's outages)
    down = heartbeat.offline_at(seed, len(ter.tgs), (d + 1) * DAY + 3 * 3600)
    fixed_at = first + g.integers(3600, 3 * DAY, n)
    dd = day_str(d)
    prefix = day_str(d + 1) + " "
    first_txt = [prefix + _TOD[s] for s in (first - (d + 1) * DAY).tolist()]
    succ_txt = [prefix + _TOD[s] for s in (first + 20 - (d + 1) * DAY).tolist()]
    r = np.round(reg_now, 4)
    kwh = np.round(day_kwh, 4).tolist()
    meters, terms, orgs, tgs = m["meters"], m["terms"], m["orgs"], m["tgs"]
    # a few meters' clocks have drifted beyond the 5-minute tolerance (battery, never synchronised)
    idx = m["idx"]
    drift = (idx * 2654435761 % 1000) < DRIFTING_PER_1000
    clock = np.where(drift, np.where(idx % 2 == 0, 1, -1) * (310 + (idx * 37 + d) % 900),
                     (u * 40).astype(int) - 20).tolist()
    rows = list(zip(meters, repeat(dd), terms, orgs, tgs, repeat("01"), repeat(None), first_txt, succ_txt, repeat(1),
                    repeat("01"), r.tolist(), np.round(r * 0.1, 4).tolist(), np.round(r * 0.3, 4).tolist(),
                    np.round(r * 0.35, 4).tolist(), np.round(r * 0.25, 4).tolist(), repeat(0.0), kwh, clock,
                    succ_txt, succ_txt, repeat(0)))
    failed = u < 0.015
    # faulty meters (module or wiring) fail night after night until a technician replaces them
    stuck = ((idx * 40503 % 1000) < FAULTY_PER_1000) & ((d + idx) % 23 < 6)
    off = down[m["tg_arr"]]
    failed |= stuck | off
    t_ok = (first + 20).tolist()
    ok = (~failed).tolist()
    out: list[Life] = [Life("meter_collection_daily", 0, versions=[(t, row)])
                       for t, row, good in zip(t_ok, rows, ok) if good]
    for k in np.nonzero(failed)[0].tolist():
        row = rows[k]
        bad = row[:5] + ("03" if off[k] else "02", "01" if off[k] else ("02", "03", "05", "06")[k % 4], row[7], None,
                         3, None) + (None,) * 7 + (None, row[8], row[8], 0)
        versions = [(t_ok[k], bad)]
        if not stuck[k] and (u[k] < 0.0105 or (off[k] and u[k] < 0.7)):    # 补采 later
            tf = int(fixed_at[k])
            versions.append((tf, row[:8] + (ts(tf), 4, "02") + row[11:19] + (row[8], ts(tf), 0)))
        out.append(Life("meter_collection_daily", 0, versions=versions))
    # per 台区: energy sold by the meters collected, how many were, how many should have been
    tg_arr, good = m["tg_arr"], ~failed
    size = len(ter.tgs)
    sold = np.bincount(tg_arr[good], weights=np.round(day_kwh, 4)[good], minlength=size)
    got = np.bincount(tg_arr[good], minlength=size)
    expected = np.bincount(tg_arr, minlength=size)
    tg_sale = {k: [float(sold[k]), int(got[k]), int(expected[k])] for k in np.nonzero(expected)[0].tolist()}
    out += _line_loss(ter, rng, d, masters, tg_sale)
    out += _voltage(ter, rng, d, users)
    out += _curves(ter, rng, d, masters)
    ids = Ids(d, "E")
    for _ in range(count(rng, max(0.5, ter.n * 0.0004))):
        out.append(_event(ter, rng, d, ids("EV")))
    return out


def _line_loss(ter: Territory, rng, d: int, masters: list[dict], tg_sale: dict[int, list]) -> list[Life]:
    out = []
    index = {tg["tg_no"]: k for k, tg in enumerate(ter.tgs)}
    for k, tg in enumerate(masters):
        sale, got, expected = tg_sale.get(index[tg["tg_no"]], [0.0, 0, 0])
        if expected == 0:
            continue
        true_sale = sale * expected / max(got, 1)
        loss = tg["loss"] + rng.uniform(-0.01, 0.01)
        supply = true_sale / (1 - loss)
        master_ok = rng.random() > 0.01
        calc1 = (d + 1) * DAY + 6 * 3600 + rng.randrange(1800)

        def row(sale_kwh: float, coll: int, calc_round: str, t: int, ok: bool) -> tuple:
            calc = ok and master_ok and coll >= 0.98 * expected
            rate = (supply - sale_kwh) / supply * 100 if calc and supply else None
            cls = "04" if rate is None else ("03" if rate < 0 else "02" if rate >= 10 else "01")
            return (tg["tg_no"], day_str(d), tg["org_no"], round(supply, 4) if master_ok else None, 0.0,
                    round(sale_kwh, 4), round(supply - sale_kwh, 4) if calc else None,
                    round(rate, 4) if rate is not None else None, expected, coll, int(master_ok),
                    "01" if calc else "02", cls, calc_round, ts(t), None, None, 0)
        mt = int(first_try(d, rng))
        reg = round(50000.0 + supply / 60 * (d - 8000) / 1000, 4)
        good = (tg["master"], day_str(d), tg["terminal"], tg["org_no"], tg["tg_no"], "01", None, ts(mt), ts(mt + 20), 1,
                "01", reg, None, None, None, None, 0.0, round(supply, 4), 0, None, None, 0)
        if master_ok:
            out.append(Life("meter_collection_daily", mt + 20, versions=[(mt + 20, good)]))
        else:
            out.append(Life("meter_collection_daily", mt + 20, versions=[(mt + 20, good[:5] + (
                "02", "03", ts(mt), None, 3, None) + (None,) * 7 + (None, None, None, 0))]))
        versions = [(calc1, row(sale, got, "1", calc1, True))]
        calc2 = calc1 + 2 * DAY
        versions.append((calc2, row(true_sale, expected if rng.random() < 0.9 else got, "2", calc2, True)))
        versions.append((calc2 + DAY, versions[-1][1][:13] + ("3", ts(calc2 + DAY)) + versions[-1][1][15:]))
        out.append(Life("meter_tg_energy_daily", calc1, versions=versions))
    return out


def first_try(d: int, rng) -> int:
    return (d + 1) * DAY + 1800 + rng.randrange(5 * 3600)


def _voltage(ter: Territory, rng, d: int, users: list[int]) -> list[Life]:
    out = []
    t = (d + 1) * DAY + 7 * 3600
    for i in users[::VOLTAGE_EVERY]:
        upper = rng.choice((0, 0, 0, 0, 5, 30)) if ter.cons_sort[i] == "03" else 0
        lower = rng.choice((0, 0, 0, 0, 0, 12, 60, 240)) if ter.station_ur[ter.cons_org[i]] != "01" else 0
        tup = (ter.cons_meter[i], day_str(d), "02", ter.cons[i], ter.tgs[ter.cons_tg[i]]["tg_no"], ter.cons_org[i],
               "AC02202", 1440 - rng.choice((0, 0, 0, 15)), upper, lower, None, None, 0)
        versions = [(t + rng.randrange(3600), tup)]
        if rng.random() < 0.1:                              # recomputed after 补采
            versions.append((t + DAY, tup[:7] + (1440, upper, lower) + tup[10:]))
        out.append(Life("meter_voltage_daily", versions[0][0], versions=versions))
    for st in ter.stations:                                 # one D类 monitor per 供电所
        tup = (f"DV{st}", day_str(d), "01", None, None, st, "AC02202", 1440, rng.choice((0, 0, 10)),
               rng.choice((0, 0, 0, 45)), None, None, 0)
        out.append(Life("meter_voltage_daily", t + 600, versions=[(t + 600, tup)]))
    return out


def _curves(ter: Territory, rng, d: int, masters: list[dict]) -> list[Life]:
    out = []
    base = (d + 1) * DAY + 3600
    for k, tg in enumerate(masters[:CURVE_SAMPLE]):
        cap = tg["tg_cap"]
        reg = 50000.0 + d * cap * 0.3 * 24 / 60
        # an undersized transformer: its evening peak reaches 85-105 % of capacity on most days
        heavy = k % HEAVY_EVERY == 3 and rng.random() < 0.7
        for p in range(1, 97):
            hour = (p - 1) / 4
            if heavy and 18 <= hour < 22:
                load = cap * rng.uniform(0.85, 1.05)
            else:
                load = cap * (0.25 + 0.35 * (1 if 9 <= hour < 12 or 18 <= hour < 22 else 0.4)) * rng.uniform(0.8, 1.1)
            reg += load / 4 / 60
            ia, ib, ic = (round(load / 0.66 * rng.uniform(0.7, 1.3) / 3, 3) for _ in range(3))
            tup = (tg["master"], ts(d * DAY + p * 900), round(reg, 4), round(load, 4),
                   round(rng.uniform(215, 236), 2), round(rng.uniform(215, 236), 2), round(rng.uniform(215, 236), 2),
                   ia, ib, ic, "01", None, None, 0)
            t = base + k * 10 + (rng.randint(3600, 20 * 3600) if rng.random() < 0.02 else 0)
            out.append(Life("meter_curve_15min", t, versions=[(t, tup)]))
    return out


def _event(ter: Territory, rng, d: int, event_id: str) -> Life:
    i = rng.randrange(ter.n)
    code = rng.choices([e[0] for e in EVENTS], [e[1] for e in EVENTS])[0]
    start = d * DAY + rng.randrange(DAY)
    report = start + rng.randint(60, 2 * DAY)
    severity = "01" if code in ("E01", "E02", "E05", "E09", "E11") else rng.choice(("02", "03"))
    terminal_event = code in ("E12", "E13")
    e = Life("meter_event", report, dict(
        event_id=event_id, event_code=code,
        meter_asset_no=None if terminal_event else ter.cons_meter[i], terminal_id=ter.cons_terminal[i],
        phase_code="0" if terminal_event else rng.choice(("0", "1", "2", "3")), start_time=ts(start),
        report_time=ts(report), severity=severity, handle_status="01", org_no=ter.cons_org[i],
        tg_no=ter.tgs[ter.cons_tg[i]]["tg_no"], cons_no=None if terminal_event else ter.cons[i]))
    if rng.random() < 0.7:
        e.set(report + rng.randint(600, DAY), end_time=ts(start + rng.randint(60, DAY)))
    if rng.random() < 0.1:
        e.set(report + rng.randint(3600, 2 * DAY), handle_status="04", handle_time=ts(report + 7200))
    elif severity != "03":
        disp = report + minutes(rng, 30, 24 * 60)
        e.set(disp, handle_status="02", dispatch_time=ts(disp))
        done = disp + minutes(rng, 60, 48 * 60)
        e.set(done, handle_status="03", handle_time=ts(done))
    return e


def cases(ter: Territory, seed: int, d: int) -> list[Life]:
    """窃电嫌疑 cases found on day d and their inspection lifecycle over days to weeks."""
    rng = rng_for(seed, "cases", d)
    ids = Ids(d, "T")
    out = []
    for _ in range(count(rng, max(0.3, len(ter.tgs) * 0.001))):
        i = rng.randrange(ter.n)
        found = d * DAY + rng.randint(6 * 3600, 10 * 3600)
        c = Life("meter_theft_case", found, dict(
            case_id=ids("TC"), case_source=rng.choice(("01", "01", "02", "03", "04")),
            suspect_type=rng.choice(("01", "02", "03", "04", "05", "09")), suspect_score=round(rng.uniform(50, 99), 2),
            cons_no=ter.cons[i], meter_asset_no=ter.cons_meter[i] if ter.cons_active[i] else None,
            tg_no=ter.tgs[ter.cons_tg[i]]["tg_no"], org_no=ter.cons_org[i], found_time=ts(found), status_code="01"))
        t = found + rng.randint(DAY // 2, 3 * DAY)
        if rng.random() < 0.05:
            c.set(t, status_code="06")
            out.append(c)
            continue
        c.set(t, dispatch_time=ts(t), status_code="02")
        t += rng.randint(DAY, 5 * DAY)
        c.set(t, inspect_time=ts(t), status_code="03")
        result = rng.choices(("01", "02", "03", "04", "05"), (25, 15, 10, 45, 5))[0]
        kwh = round(rng.uniform(500, 20000), 2) if result in ("01", "02") else 0.0
        t += rng.randint(DAY, 4 * DAY)
        c.set(t, result_code=result, recover_kwh=kwh, recover_amt=round(kwh * 0.6, 2),
              penalty_amt=round(kwh * 1.8, 2) if result == "01" else 0.0, status_code="04")
        t += rng.randint(2 * DAY, 10 * DAY)
        c.set(t, close_time=ts(t), status_code="05")
        out.append(c)
    return out
