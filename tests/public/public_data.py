"""Reads the public data sets and maps them onto contract tables (docs/public-data.md).

The files stay where the shared folder keeps them (`<repo>/../shared/data/public/`); nothing is
copied into the repository. The mapping only places the publishers' fields in contract columns;
it computes no KPI.
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
PUBLIC_DIR = REPO.parent / "shared" / "data" / "public"
CALLS_CSV = "technion_anonymous_bank_calls_1999-08.csv"
METRICS_CSV = "technion_daily_metrics_1999_thirdparty.csv"
OUTAGES_XLSX = "purdue_major_power_outages_2000_2016.xlsx"

# The org tree the calls are attributed to: every call at city C1 (a call centre serves a city).
CALL_ORGS = [
    {"org_no": "P", "org_name": "省公司", "org_type": "02", "status_code": "01"},
    {"org_no": "C1", "org_name": "地市一", "org_type": "03", "parent_org_no": "P", "status_code": "01"},
]
CALL_ORG = "C1"
# The call log says 2010 (a relabelled copy); the third party's file keeps the real year 1999.
LOG_YEAR, METRICS_YEAR = 2010, 1999
NO_TIME = "0:00:00"              # the log's "stage not reached"
HALF_DAY = timedelta(hours=12)


def public_file(name: str) -> Path:
    return PUBLIC_DIR / name


def read_calls() -> pd.DataFrame:
    """The call log as text, one row per call, plus integer durations."""
    df = pd.read_csv(public_file(CALLS_CSV), dtype=str, keep_default_na=False)
    for col in ("vru_time", "q_time", "ser_time"):
        df[col] = df[col].astype(int)
    return df


def read_metrics(month: int = 8) -> pd.DataFrame:
    """The third party's daily metrics of one month, indexed by day of month."""
    df = pd.read_csv(public_file(METRICS_CSV))
    df = df[df["date"].str.startswith(f"{METRICS_YEAR}-{month:02d}-")].copy()
    df["day"] = df["date"].str[-2:].astype(int)
    return df.set_index("day")


def _tod(text: str) -> timedelta:
    h, m, s = (int(x) for x in text.split(":"))
    return timedelta(hours=h, minutes=m, seconds=s)


def _stamp(day: date, text: str, after: datetime) -> datetime:
    """Time of day `text` on the call's date, or the next date when it is more than 12 h
    before the previous stage (a stage that ran past midnight; the log keeps times of day only)."""
    t = datetime.combine(day, time()) + _tod(text)
    return t + timedelta(days=1) if t < after - HALF_DAY else t


def _fmt(t: datetime | None) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%d %H:%M:%S")


def call_row(r: dict) -> dict:
    """One log row -> one cs_call row (mapping table in docs/public-data.md)."""
    day = date.fromisoformat(r["date"])
    arrive = _stamp(day, r["vru_entry"], datetime.combine(day, time()))
    vru_exit = _stamp(day, r["vru_exit"], arrive)
    queued = r["q_start"] != NO_TIME
    served = r["ser_start"] != NO_TIME
    q_start = _stamp(day, r["q_start"], arrive) if queued else None
    q_exit = _stamp(day, r["q_exit"], q_start) if queued else None
    ser_start = _stamp(day, r["ser_start"], q_exit or vru_exit) if served else None
    ser_exit = _stamp(day, r["ser_exit"], ser_start) if served else None
    agent = r["outcome"] == "AGENT"
    if agent:
        result = "01"
    elif r["outcome"] == "HANG":
        result = "03" if queued else "02"
    else:                        # PHANTOM: neither answered nor abandoned
        result = "05"
    # Queue start and exit come from one clock (the ACD), service times from another that runs
    # 1-2 s off: the answer is the queue exit, so answer - queue start is the log's q_time.
    answer = (q_exit if queued else ser_start) if agent else None
    end = ser_exit or q_exit or vru_exit
    return {
        "call_id": f"{r['vru+line']}-{r['call_id']}",   # call_id alone repeats across lines
        "call_direction": "01",
        "caller_no": None if r["customer_id"] == "0" else r["customer_id"],
        "arrive_time": _fmt(arrive),
        "queue_start_time": _fmt(q_start),
        "answer_time": _fmt(answer),
        "end_time": _fmt(end),
        "call_result": result,
        "agent_id": r["server"] if agent and r["server"] != "NO_SERVER" else None,
        "org_no": CALL_ORG,
        "talk_seconds": r["ser_time"] if agent else None,
        "created_at": _fmt(arrive),
    }


def call_rows(df: pd.DataFrame) -> list[dict]:
    return [call_row(r) for r in df.to_dict("records")]


# ----------------------------------------------------------------------------------- outages

OUTAGE_TREE_ROOT = [
    {"org_no": "P", "org_name": "省公司", "org_type": "02", "status_code": "01"},
    {"org_no": "C1", "org_name": "地市一", "org_type": "03", "parent_org_no": "P", "status_code": "01"},
    {"org_no": "K1", "org_name": "县一", "org_type": "04", "parent_org_no": "C1", "status_code": "01"},
]
# Curtailment-like causes are 限电 (04); every other cause is a fault outage (03).
CURTAILMENT_CAUSES = {"public appeal", "fuel supply emergency"}


def read_outages() -> pd.DataFrame:
    """The 1,534 events: header on sheet row 6, units on row 7, a blank first column."""
    df = pd.read_excel(public_file(OUTAGES_XLSX), header=5, skiprows=[6])
    df = df.drop(columns=[df.columns[0]])
    df["OBS"] = df["OBS"].astype(int)
    return df.set_index("OBS", drop=False)


def _combine(d, t) -> datetime | None:
    if pd.isna(d) or pd.isna(t):
        return None
    return datetime.combine(pd.Timestamp(d).date(), t)


def outage_times(df: pd.DataFrame) -> pd.DataFrame:
    """Naive wall-clock start and restoration of each event with both (events without a
    restoration have no duration in the file either)."""
    out = pd.DataFrame({
        "start": [_combine(d, t) for d, t in zip(df["OUTAGE.START.DATE"], df["OUTAGE.START.TIME"])],
        "end": [_combine(d, t) for d, t in zip(df["OUTAGE.RESTORATION.DATE"],
                                                df["OUTAGE.RESTORATION.TIME"])],
    }, index=df.index)
    return out.dropna()


def outage_tables(df: pd.DataFrame, obs: list[int]) -> dict[str, list[dict]]:
    """Each chosen event -> its own station S<obs> with one grid G<obs> and one 台区 T<obs>, so
    that station and grid values of the engine are one event's figures."""
    times = outage_times(df)
    tables: dict[str, list[dict]] = {
        "mis_org": list(OUTAGE_TREE_ROOT), "mis_grid": [],
        "dist_feeder": [{"feeder_no": "F1", "feeder_name": "线路一", "org_no": "K1",
                         "volt_code": "AC00101", "run_status": "01"}],
        "dist_tg": [], "dist_outage": [], "dist_outage_tg": []}
    for o in obs:
        r = df.loc[o]
        s, e = times.loc[o, "start"], times.loc[o, "end"]
        cust = None if pd.isna(r["CUSTOMERS.AFFECTED"]) else int(r["CUSTOMERS.AFFECTED"])
        st, g, tg, oid = f"S{o:04d}", f"G{o:04d}", f"T{o:04d}", f"US{o:04d}"
        tables["mis_org"].append({"org_no": st, "org_name": f"所{o}", "org_type": "05",
                                  "parent_org_no": "K1", "status_code": "01"})
        tables["mis_grid"].append({"grid_no": g, "grid_name": f"网格{o}", "org_no": st,
                                   "status_code": "01"})
        tables["dist_tg"].append({"tg_no": tg, "tg_name": f"台区{o}", "feeder_no": "F1",
                                  "pub_priv_flag": "01", "org_no": st, "grid_no": g,
                                  "urban_rural": "01", "run_status": "01"})
        tables["dist_outage"].append({
            "outage_id": oid,
            "outage_type": "04" if r["CAUSE.CATEGORY"] in CURTAILMENT_CAUSES else "03",
            "scope_level": "01", "org_no": st, "status_code": "04",
            "actual_start_time": _fmt(s), "actual_end_time": _fmt(e),
            "tg_count": 1, "cust_count": cust, "remark": str(r["CAUSE.CATEGORY"]),
            "created_at": _fmt(s)})
        # restore_time left NULL: the interruption ends at the outage's actual_end_time
        tables["dist_outage_tg"].append({"outage_id": oid, "tg_no": tg, "cust_count": cust})
    return tables
