"""Outage durations and customer-minutes of the engine against the publisher's figures.

Expected values: OUTAGE.DURATION (minutes) and CUSTOMERS.AFFECTED of the Purdue major-outage
list. The product's times are Beijing time, which has no daylight saving, so it subtracts wall
clocks; the publisher's duration is the elapsed time for the 31 events (2008 and later) that
cross a US daylight-saving change, 60 minutes more or less than the wall clocks say. The
daylight-saving shift of each event comes from the IANA rules (zoneinfo), not from the product.
"""
from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from tests.public.public_data import CURTAILMENT_CAUSES

# The rule is all that matters for a difference: every US zone that keeps daylight saving
# switches at 02:00 local wall time on the same dates, so New York's rule stands for them all.
NO_DST_RULE = {"AZ": "America/Phoenix", "HI": "Pacific/Honolulu",
               "IN": "America/Indiana/Indianapolis"}     # most of Indiana: none before 2006
US_RULE = "America/New_York"
TOL_MIN = 1e-6     # sums are DECIMAL(38, 9) hours in the engine: 1e-9 h = 6e-8 min


def dst_shift_minutes(state: str, start: datetime, end: datetime) -> float:
    """Elapsed minutes minus wall-clock minutes: +60 across an autumn change, -60 across spring."""
    tz = ZoneInfo(NO_DST_RULE.get(state, US_RULE))
    utc = [t.replace(tzinfo=tz).astimezone(timezone.utc) for t in (start, end)]
    elapsed = utc[1] - utc[0]
    return (elapsed - (end - start)).total_seconds() / 60


@pytest.fixture(scope="module")
def expected(outages) -> pd.DataFrame:
    """Per event: the publisher's minutes and customers, the DST shift, and the minutes the
    product must find (the publisher's minus the shift where the publisher counted elapsed time)."""
    _, ev = outages
    e = pd.DataFrame(index=ev.index)
    e["pub_min"] = ev["OUTAGE.DURATION"].astype(float)
    e["cust"] = ev["CUSTOMERS.AFFECTED"]
    e["fault"] = ~ev["CAUSE.CATEGORY"].isin(CURTAILMENT_CAUSES)
    e["year"] = [s.year for s in ev["start"]]
    e["month"] = [s.month for s in ev["start"]]
    e["shift"] = [dst_shift_minutes(st, s, en)
                  for st, s, en in zip(ev["POSTAL.CODE"], ev["start"], ev["end"])]
    e["wall_min"] = [(en - s).total_seconds() / 60 for s, en in zip(ev["start"], ev["end"])]
    # Which convention the publisher used is read off its own columns and the IANA rule only.
    elapsed = (e["shift"] != 0) & (e["pub_min"] == e["wall_min"] + e["shift"])
    e["pub_elapsed"] = elapsed
    e["want_min"] = e["pub_min"] - e["shift"].where(elapsed, 0.0)
    return e


def station_values(con, kpi: str, grain: str, level: str) -> pd.DataFrame:
    df = con.execute(
        "SELECT org_no, period_start, value, numerator, denominator FROM kpi_value "
        "WHERE kpi_id = ? AND grain = ? AND org_level = ? AND value IS NOT NULL",
        [kpi, grain, level]).df()
    df["obs"] = df["org_no"].str[1:].astype(int)
    return df.set_index("obs")


def test_events_and_dst_crossings_as_published(expected):
    e = expected
    assert len(e) == 1476                          # 1,534 events, 58 without a start or restoration
    # the publisher's minutes are its own wall-clock difference, or that plus the DST shift
    assert ((e["pub_min"] == e["wall_min"]) | e["pub_elapsed"]).all()
    assert ((e["shift"] == 0) & (e["pub_min"] == e["wall_min"])).sum() == 1439
    crossing = e[e["shift"] != 0]
    assert sorted(crossing["shift"].abs().unique()) == [60.0]
    assert crossing["pub_elapsed"].sum() == 31
    # the 31 are all 2008 or later; the 6 crossing events the publisher subtracted as wall clocks
    # are all 2003-2005
    assert crossing[crossing["pub_elapsed"]]["year"].min() >= 2008
    naive_crossers = crossing[~crossing["pub_elapsed"]]
    assert len(naive_crossers) == 6 and naive_crossers["year"].max() <= 2005


def test_fault_outage_duration_per_event_mid_f(outages, expected):
    """reliability.mid_f at each event's own station: the mean of one event is its duration."""
    con, _ = outages
    got = station_values(con, "reliability.mid_f", "monthly", "station")
    e = expected
    population = e[e["fault"] & (e["pub_min"] > 5)]
    # one month each; curtailment (04) and momentary (<= 5 min) events have no value
    assert sorted(got.index) == sorted(population.index)
    assert (got["denominator"] == 1).all()
    assert [(p.year, p.month) for p in got["period_start"]] == \
        list(zip(population.loc[got.index, "year"], population.loc[got.index, "month"]))
    minutes = got["value"] * 60
    diff = (minutes - population.loc[got.index, "want_min"]).abs()
    assert diff.max() <= TOL_MIN, diff.idxmax()
    # stated against the publisher: equal except the DST crossers it counted as elapsed time
    off = (minutes - population.loc[got.index, "pub_min"]).round(6)
    assert set(off[off != 0].index) == set(population[population["pub_elapsed"]].index)
    assert (off[off != 0].abs() == 60).all()


def test_mid_f_month_rolls_up_events(outages, expected):
    """Province value of a month: SUM(hours) / COUNT over its fault events (not a mean of means)."""
    con, _ = outages
    e = expected[expected["fault"] & (expected["pub_min"] > 5)]
    prov = con.execute("SELECT period_start, numerator, denominator FROM kpi_value "
                       "WHERE kpi_id = 'reliability.mid_f' AND grain = 'monthly' AND org_no = 'P' "
                       "AND denominator > 0").fetchall()
    want = e.groupby(["year", "month"])["want_min"].agg(["sum", "count"])
    assert len(prov) == len(want)
    for ps, num, den in prov:
        s, n = want.loc[(ps.year, ps.month)]
        assert den == n and abs(num * 60 - s) <= TOL_MIN * n, ps


def test_customer_minutes_per_event_caidi(outages, expected):
    """reliability.caidi_min at each event's own grid, 12 months ending 1 January: numerator =
    customers affected x minutes (customer-minutes), value = the event's minutes."""
    con, _ = outages
    got = station_values(con, "reliability.caidi_min", "daily", "grid")
    e = expected
    population = e[(e["cust"] > 0) & (e["pub_min"] > 5)]
    assert sorted(got.index) == sorted(population.index)
    want = population.loc[got.index]
    assert (got["denominator"] == want["cust"]).all()
    assert [p.year for p in got["period_start"]] == want["year"].tolist()
    assert ((got["value"] - want["want_min"]).abs() <= TOL_MIN).all()
    cm = want["cust"] * want["want_min"]
    assert ((got["numerator"] - cm).abs() <= 1e-9 * cm).all()
    # against the publisher's own product of its two columns, the DST crossers differ by
    # exactly 60 customer-minutes per customer
    off = got["numerator"] - want["cust"] * want["pub_min"]
    crossers = want[want["pub_elapsed"]].index
    assert (off.drop(crossers).abs() <= 1e-9 * cm.drop(crossers)).all()
    assert ((off[crossers].abs() - 60 * want.loc[crossers, "cust"]).abs() <= 1e-6 * cm[crossers]).all()


def test_customer_minutes_roll_up_per_year(outages, expected):
    con, _ = outages
    e = expected[(expected["cust"] > 0) & (expected["pub_min"] > 5)]
    want = (e["cust"] * e["want_min"]).groupby(e["year"]).sum()
    cust = e["cust"].groupby(e["year"]).sum()
    prov = con.execute("SELECT period_start, numerator, denominator FROM kpi_value "
                       "WHERE kpi_id = 'reliability.caidi_min' AND org_no = 'P' "
                       "AND denominator > 0").fetchall()
    assert sorted(p.year for p, _, _ in prov) == sorted(want.index)
    for ps, num, den in prov:
        assert den == cust[ps.year]
        assert num == pytest.approx(want[ps.year], rel=1e-12)
