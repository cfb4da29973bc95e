"""The static world: org tree, grids, feeders, 台区, customers, metering, terminals, crews, calendar."""
from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from simulator.clock import DAY, day_str, to_date, ts
from simulator import heartbeat
from simulator.life import layout

SCALES: dict[str, dict[str, int]] = {
    # customers, counties, stations per county, grids per station
    "small": {"customers": 3000, "counties": 2, "stations": 2, "grids": 4},
    "county": {"customers": 60000, "counties": 2, "stations": 5, "grids": 5},
    "city": {"customers": 3_500_000, "counties": 12, "stations": 10, "grids": 8},
}
PROVINCE, CITY = "33101", "33401"
CUST_PER_TG = 80
# 台区 master meters with a 96-point curve (the first N by 台区 number): the only meters whose
# curve collection is configured (curve_flag), so that the curve completeness rate measures the
# points missing from the curves the simulator writes rather than the meters it writes none for
CURVE_SAMPLE = 40
CREWS_PER_STATION = 4       # about half of them out on a task at a busy hour of a county
# approximate statutory holidays (month, day) ranges; Spring Festival from a table
_FIXED_HOLIDAYS = [((1, 1), (1, 1)), ((4, 4), (4, 6)), ((5, 1), (5, 5)), ((10, 1), (10, 7))]
_SPRING = {2024: (2, 10), 2025: (1, 28), 2026: (2, 16), 2027: (2, 5), 2028: (1, 25), 2029: (2, 12),
           2030: (2, 2)}
_LV_TYPES = (("400", 3), ("401", 2), ("402", 3), ("403", 2), ("405", 5), ("300", 1), ("301", 1))
_HV_TYPES = (("100", 5), ("403", 3), ("402", 2), ("101", 1), ("900", 1))


@dataclass
class Territory:
    """Everything the activity generators pick from, as parallel lists (cheap at city scale)."""
    scale: str
    t0: int                                  # when the static rows were written
    orgs: list[dict] = field(default_factory=list)
    stations: list[str] = field(default_factory=list)
    station_ur: dict[str, str] = field(default_factory=dict)
    station_county: dict[str, str] = field(default_factory=dict)
    grids: list[tuple[str, str]] = field(default_factory=list)          # (grid_no, station)
    feeders: list[tuple[str, str]] = field(default_factory=list)        # (feeder_no, station)
    tgs: list[dict] = field(default_factory=list)
    crews: dict[str, list[str]] = field(default_factory=dict)           # station -> crew ids
    agents: list[str] = field(default_factory=list)
    # customers as parallel lists
    cons: list[str] = field(default_factory=list)
    cons_org: list[str] = field(default_factory=list)
    cons_grid: list[str] = field(default_factory=list)
    cons_tg: list[int] = field(default_factory=list)                    # index into tgs
    cons_sort: list[str] = field(default_factory=list)
    cons_elec: list[str] = field(default_factory=list)
    cons_pay: list[str] = field(default_factory=list)
    cons_flag: list[int] = field(default_factory=list)                  # bit0 important, bit1 sensitive, bit2 dg
    cons_kwh: list[float] = field(default_factory=list)                 # mean daily kWh
    cons_meter: list[str] = field(default_factory=list)
    cons_mp: list[str] = field(default_factory=list)
    cons_terminal: list[str] = field(default_factory=list)
    cons_tfactor: list[float] = field(default_factory=list)
    cons_active: list[bool] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.cons)



# 行业用电分类 by customer class (first digit of ELEC_TYPE): industry, residents, agriculture,
# commerce; the rest public services.
TRADE_BY_CLASS = {"1": "C300", "2": "Z100", "3": "A100", "4": "F500"}

def _pick(rng: random.Random, weighted: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([w[0] for w in weighted], [w[1] for w in weighted])[0]


def build(scale: str, seed: int, start_day: int) -> Territory:
    """Deterministic territory for a scale and seed."""
    if scale not in SCALES:
        raise ValueError(f"scale `{scale}`: expected one of {', '.join(SCALES)}")
    p = SCALES[scale]
    rng = random.Random(f"territory:{seed}:{scale}")
    t0 = (start_day - 30) * DAY
    ter = Territory(scale, t0)
    ter.orgs.append(dict(org_no=PROVINCE, org_name="国网某省电力有限公司", org_short_name="省公司",
                         parent_org_no=None, org_type="02", sort_no=1, status_code="01"))
    ter.orgs.append(dict(org_no=CITY, org_name="某市供电公司", org_short_name="市公司",
                         parent_org_no=PROVINCE, org_type="03", sort_no=1, status_code="01"))
    n_st = p["counties"] * p["stations"]
    per_grid = p["customers"] / (n_st * p["grids"])
    for c in range(p["counties"]):
        county = f"{CITY}{c + 1:02d}"
        ter.orgs.append(dict(org_no=county, org_name=f"{'城区' if c == 0 else '县'}{c + 1}供电公司",
                             parent_org_no=CITY, org_type="04", sort_no=c + 1, status_code="01"))
        for s in range(p["stations"]):
            st = f"{county}{s + 1:02d}"
            ur = "01" if c == 0 else ("03" if s == p["stations"] - 1 else "02")
            ter.orgs.append(dict(org_no=st, org_name=f"{county[-2:]}县{s + 1}供电所", parent_org_no=county,
                                 org_type="05", urban_rural=ur, sort_no=s + 1, status_code="01"))
            ter.stations.append(st)
            ter.station_ur[st] = ur
            ter.station_county[st] = county
            ter.crews[st] = [f"CR{st}{k}" for k in range(CREWS_PER_STATION)]
            feeders = [f"FD{st[-6:]}{k:02d}" for k in range(max(1, math.ceil(p["grids"] * per_grid / CUST_PER_TG / 25)))]
            ter.feeders += [(f, st) for f in feeders]
            for g in range(p["grids"]):
                grid = f"{st}{g + 1:03d}"
                ter.grids.append((grid, st))
                _fill_grid(ter, rng, st, grid, ur, feeders, int(round(per_grid)))
    ter.agents = [f"A{k:04d}" for k in range(max(6, p["customers"] // 3000))]
    return ter


def _fill_grid(ter: Territory, rng: random.Random, st: str, grid: str, ur: str, feeders: list[str],
               n_cust: int) -> None:
    n_pub = max(1, math.ceil(n_cust * 0.985 / CUST_PER_TG))
    first_tg = len(ter.tgs)
    for k in range(n_pub):
        tg_no = f"TG{len(ter.tgs) + 1:08d}"
        ter.tgs.append(dict(tg_no=tg_no, feeder_no=rng.choice(feeders), pub_priv_flag="01", org_no=st,
                            grid_no=grid, urban_rural=ur, tg_cap=rng.choice((200.0, 315.0, 400.0, 630.0)),
                            master=f"{3331000000000 + len(ter.tgs):022d}", terminal=f"TM{len(ter.tgs):08d}",
                            cons=[], loss=rng.choice((0.03, 0.04, 0.05, 0.06)) if rng.random() > 0.08
                            else rng.choice((0.14, 0.18, -0.03))))
    for _ in range(n_cust):
        i = len(ter.cons)
        r = rng.random()
        sort = "03" if r < 0.88 else ("02" if r < 0.985 else "01")
        if sort == "01":                                  # 高压: own 专变台区 and terminal
            tg = len(ter.tgs)
            ter.tgs.append(dict(tg_no=f"TG{tg + 1:08d}", feeder_no=rng.choice(feeders), pub_priv_flag="02",
                                org_no=st, grid_no=grid, urban_rural=ur, tg_cap=rng.choice((315.0, 630.0, 1250.0)),
                                master=None, terminal=f"TM{tg:08d}", cons=[], loss=0.0, cons_no=f"{3300000000 + i}"))
            elec = _pick(rng, _HV_TYPES)
            kwh = rng.uniform(800, 8000)
            terminal = ter.tgs[tg]["terminal"]
        else:
            tg = first_tg + rng.randrange(n_pub)
            elec = ("202" if ur == "01" else "201") if sort == "03" else _pick(rng, _LV_TYPES)
            kwh = rng.uniform(3, 15) if sort == "03" else rng.uniform(10, 200)
            terminal = ter.tgs[tg]["terminal"]
        ter.tgs[tg]["cons"].append(i)
        ter.cons.append(f"{3300000000 + i}")
        ter.cons_org.append(st)
        ter.cons_grid.append(grid)
        ter.cons_tg.append(tg)
        ter.cons_sort.append(sort)
        ter.cons_elec.append(elec)
        ter.cons_pay.append(("03" if r < 0.62 else "01" if r < 0.87 else "02") if sort == "03" else "01")
        flag = (1 if sort == "01" and rng.random() < 0.3 else 0) | (2 if rng.random() < 0.01 else 0) \
            | (4 if sort == "03" and rng.random() < 0.03 else 0)
        ter.cons_flag.append(flag)
        ter.cons_kwh.append(round(kwh, 2))
        ter.cons_meter.append(f"{3330000000000 + i:022d}")
        ter.cons_mp.append(f"MP{i + 1:010d}")
        ter.cons_terminal.append(terminal)
        ter.cons_tfactor.append(float(rng.choice((40, 80, 200))) if sort == "01" else 1.0)
        ter.cons_active.append(rng.random() > 0.005)


def _importance(rng: random.Random, sort: str, important: int) -> dict:
    """impt_level and supply_mode: 特级/一级 important customers are fed by two or more sources,
    二级/临时性 by at least two circuits; a few do not (yet) meet their level."""
    if not important:
        return dict(impt_level="05", supply_mode="02" if sort == "01" else "01")
    level = rng.choices(("01", "02", "03", "04"), (5, 30, 50, 15))[0]
    if level in ("01", "02"):
        mode = rng.choices(("03", "04", "02"), (85, 10, 5))[0]
    else:
        mode = rng.choices(("02", "03", "01"), (70, 25, 5))[0]
    return dict(impt_level=level, supply_mode=mode)


def _row(table: str, values: dict, t: str) -> tuple:
    cols, defaults, _ = layout(table)
    values["created_at"] = values["updated_at"] = t
    return tuple(map(values.get, cols, defaults))


def rows(ter: Territory, seed: int, first_day: int, last_day: int,
         systems: set[str] | None = None) -> Iterator[tuple[str, list[tuple]]]:
    """The territory's rows per table (contract order within each system), in chunks."""
    for table, part in _rows(ter, seed, first_day, last_day, systems or {"mis", "cs", "dist", "meter"}):
        if systems is None or table.split("_", 1)[0] in systems:
            yield table, part


def _rows(ter: Territory, seed: int, first_day: int, last_day: int,
          systems: set[str]) -> Iterator[tuple[str, list[tuple]]]:
    # The per-customer blocks are skipped for a process that does not write them (at city scale
    # they are millions of rows); they draw from `rng`, so only tables after them (dist, which
    # is written with mis) depend on their being run, never the meter tables.
    rng = random.Random(f"territory-rows:{seed}:{ter.scale}")
    t = ts(ter.t0)
    yield "mis_org", [_row("mis_org", o, t) for o in ter.orgs]
    yield "mis_grid", [_row("mis_grid", dict(grid_no=g, grid_name=f"{g[-3:]}网格", org_no=s,
                                             grid_type={"01": "01", "02": "03", "03": "03"}[ter.station_ur[s]],
                                             manager_emp_no=f"E{g[-6:]}", status_code="01"), t)
                       for g, s in ter.grids]
    chunk = 200_000
    supply = random.Random(f"important:{seed}:{ter.scale}")     # its own stream: other values stay put
    for lo in range(0, ter.n if "mis" in systems else 0, chunk):
        cust, mps, meters = [], [], []
        for i in range(lo, min(ter.n, lo + chunk)):
            sort, tg = ter.cons_sort[i], ter.tgs[ter.cons_tg[i]]
            ur, st = tg["urban_rural"], ter.cons_org[i]
            volt = {"03": "AC02202", "02": "AC03802", "01": "AC00101"}[sort]
            active = ter.cons_active[i]
            build = day_str(first_day - rng.randint(60, 6000))
            cust.append(_row("mis_customer", dict(
                cons_no=ter.cons[i], cons_name=f"客户{i:07d}", cons_sort_code=sort, elec_type_code=ter.cons_elec[i],
                # 行业分类 by the customer class; about 2 % of archives lack it (completeness KPI).
                # A function of i, not of rng, so that no other simulated value moves.
                trade_code=None if i % 53 == 0 else TRADE_BY_CLASS.get(ter.cons_elec[i][0], "S900"),
                volt_code=volt, contract_cap={"03": 8.0, "02": 50.0, "01": 630.0}[sort],
                run_cap={"03": 8.0, "02": 50.0, "01": 630.0}[sort],
                prc_code={"03": "2101", "02": "4101", "01": "1102"}[sort] if ter.cons_elec[i][0] != "3" else "3101",
                pay_mode=ter.cons_pay[i], lode_attr_code="2" if sort == "01" else "3",
                **_importance(supply, sort, ter.cons_flag[i] & 1), sensitive_flag=(ter.cons_flag[i] >> 1) & 1,
                urban_rural=ur, org_no=st, grid_no=ter.cons_grid[i], mr_sect_no=f"S{ter.cons_grid[i][-6:]}",
                elec_addr=f"{st[-4:]}路{i}号", status_code="01" if active else "04", build_date=build,
                ps_date=build, cancel_date=None if active else day_str(first_day - rng.randint(1, 50)),
                mobile_no=f"139****{i % 10000:04d}", mobile_verified_flag=int(rng.random() < 0.8),
                echannel_bind_flag=int(rng.random() < 0.65), ebill_flag=int(rng.random() < 0.4),
                dg_flag=(ter.cons_flag[i] >> 2) & 1,
                emergency_power_flag=int(bool(ter.cons_flag[i] & 1) and rng.random() < 0.8)), t))
            mps.append(_row("mis_metering_point", dict(
                mp_no=ter.cons_mp[i], cons_no=ter.cons[i], mp_name="结算计量点", mp_attr_code="01",
                usage_type_code="01", meas_mode="1" if sort == "01" else "3", volt_code=volt, tg_no=tg["tg_no"],
                feeder_no=tg["feeder_no"], org_no=st, status_code="02" if active else "04"), t))
            meters.append(_row("mis_meter", dict(
                meter_asset_no=ter.cons_meter[i], mp_no=ter.cons_mp[i], meter_type="28" if sort == "03" else "29",
                wiring_mode="1" if sort == "03" else "3", t_factor=ter.cons_tfactor[i],
                comm_mode="01" if rng.random() < 0.8 else "02", manufacturer=rng.choice(("威胜", "林洋", "炬华", "海兴")),
                inst_date=build, status_code="01" if active else "03",
                remove_date=None if active else day_str(first_day - 1)), t))
            if rng.random() < 0.003:                       # an older meter replaced on this point
                meters.append(_row("mis_meter", dict(
                    meter_asset_no=f"{3339000000000 + i:022d}", mp_no=ter.cons_mp[i], meter_type="21",
                    wiring_mode="1", t_factor=1.0, inst_date=build, remove_date=day_str(first_day - rng.randint(30, 900)),
                    status_code="03"), t))
        yield "mis_customer", cust
        yield "mis_metering_point", mps
        yield "mis_meter", meters
    pub = [tg for tg in ter.tgs if tg["master"]]
    yield "mis_metering_point", [_row("mis_metering_point", dict(
        mp_no=f"MPT{k + 1:08d}", mp_name="台区考核计量点", mp_attr_code="02", usage_type_code="02", meas_mode="2",
        volt_code="AC03802", tg_no=tg["tg_no"], feeder_no=tg["feeder_no"], org_no=tg["org_no"], status_code="02"), t)
        for k, tg in enumerate(pub)]
    yield "mis_meter", [_row("mis_meter", dict(
        meter_asset_no=tg["master"], mp_no=f"MPT{k + 1:08d}", meter_type="24", wiring_mode="3", t_factor=60.0,
        comm_mode="04", manufacturer="威胜", inst_date=day_str(first_day - 400), status_code="01"), t)
        for k, tg in enumerate(pub)]
    yield "mis_work_calendar", calendar(first_day, last_day, t)
    # dist
    yield "dist_feeder", [_row("dist_feeder", dict(
        feeder_no=f, feeder_name=f"10kV{f[-4:]}线", substation_name=f"{s[-4:]}变", volt_code="AC00101", org_no=ter.station_county[s],
        feeder_type=rng.choice(("01", "02", "03")), supply_area_type={"01": "B", "02": "C", "03": "D"}[ter.station_ur[s]],
        length_km=round(rng.uniform(3, 30), 3), run_status="01"), t) for f, s in ter.feeders]
    yield "dist_tg", [_row("dist_tg", dict(
        tg_no=tg["tg_no"], tg_name=f"{tg['tg_no'][-5:]}台区", feeder_no=tg["feeder_no"], pub_priv_flag=tg["pub_priv_flag"],
        tg_cap=tg["tg_cap"], org_no=tg["org_no"], grid_no=tg["grid_no"], urban_rural=tg["urban_rural"],
        cons_no=tg.get("cons_no"), lon=round(120 + rng.random(), 6), lat=round(30 + rng.random(), 6), run_status="01",
        rel_area_code={"01": "02", "02": "04", "03": "04"}[tg["urban_rural"]]), t) for tg in ter.tgs]
    yield "dist_crew", [crew_row(ter, s, k, "01", ter.t0) for s, cs in ter.crews.items() for k in range(len(cs))]
    if "meter" not in systems:
        return
    beats = heartbeat.last_beats(seed, len(ter.tgs), last_day * DAY).tolist()
    yield "meter_terminal", [terminal_row(ter, k, beats[k]) for k in range(len(ter.tgs))]
    for lo in range(0, ter.n, chunk):
        yield "meter_coll_obj", [_row("meter_coll_obj", dict(
            meter_asset_no=ter.cons_meter[i], terminal_id=ter.cons_terminal[i], mp_sn=i % 1000 + 2,
            comm_addr=f"{i:012d}", mp_no=ter.cons_mp[i], cons_no=ter.cons[i], tg_no=ter.tgs[ter.cons_tg[i]]["tg_no"],
            org_no=ter.cons_org[i], t_factor=ter.cons_tfactor[i], coll_flag=int(ter.cons_active[i]),
            status_code="01" if ter.cons_active[i] else "02", curve_flag=0), t)
            for i in range(lo, min(ter.n, lo + chunk))]
    yield "meter_coll_obj", [_row("meter_coll_obj", dict(
        meter_asset_no=tg["master"], terminal_id=tg["terminal"], mp_sn=1, comm_addr=tg["master"][-12:],
        mp_no=f"MPT{k + 1:08d}", tg_no=tg["tg_no"], org_no=tg["org_no"], is_tg_master=1, t_factor=60.0,
        status_code="01", curve_flag=int(k < CURVE_SAMPLE)), t) for k, tg in enumerate(pub)]


def crew_row(ter: Territory, station: str, k: int, status: str, t: int) -> tuple:
    """A repair crew's row with its status since second t (created with the territory)."""
    c = ter.crews[station][k]
    row = _row("dist_crew", dict(
        crew_id=c, crew_name=f"{station[-4:]}抢修{k + 1}班", org_no=station, crew_type="02" if k else "01",
        member_count=4, vehicle_no=f"浙A{c[-5:]}", status_code=status, status_time=ts(t)), ts(t))
    return _restamp(row, ter.t0)


def terminal_row(ter: Territory, k: int, last_online: int) -> tuple:
    """A terminal's row as last stamped by the master station's heartbeat at last_online."""
    tg = ter.tgs[k]
    row = _row("meter_terminal", dict(
        terminal_id=tg["terminal"], terminal_addr=f"3301{k:06d}", terminal_type="03" if tg["pub_priv_flag"] == "02" else "02",
        protocol_code="02", comm_mode="14", tg_no=tg["tg_no"], cons_no=tg.get("cons_no"), org_no=tg["org_no"],
        manufacturer="林洋", inst_date=day_str(ter.t0 // DAY - 470), run_status="01", last_online_time=ts(last_online)),
        ts(max(last_online, ter.t0)))
    return _restamp(row, ter.t0)


def _restamp(row: tuple, created: int) -> tuple:
    """created_at back to the territory's creation (the static rows' first write)."""
    return row[:-3] + (ts(created),) + row[-2:]


def calendar(first_day: int, last_day: int, t: str) -> list[tuple]:
    """mis_work_calendar from 1 January of the first year to a year after the last day."""
    start = first_day - (to_date(first_day).timetuple().tm_yday - 1)
    out = []
    for d in range(start, last_day + 367):
        date = to_date(d)
        md = (date.month, date.day)
        sf = _SPRING.get(date.year)
        holiday = any(a <= md <= b for a, b in _FIXED_HOLIDAYS)
        if sf:
            sf_day = to_date(d - (date - date.replace(month=sf[0], day=sf[1])).days)
            holiday = holiday or 0 <= (date - sf_day).days < 8
        weekend = date.weekday() >= 5
        adjusted = weekend and ((9, 27) <= md <= (9, 30) or (sf is not None and -3 <= (date - date.replace(
            month=sf[0], day=sf[1])).days < 0))
        if holiday:
            flag, kind = 0, "03"
        elif adjusted:
            flag, kind = 1, "04"
        elif weekend:
            flag, kind = 0, "02"
        else:
            flag, kind = 1, "01"
        out.append(_row("mis_work_calendar", dict(cal_date=day_str(d), work_flag=flag, day_type=kind), t))
    return out
