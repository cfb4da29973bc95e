"""Evaluation periods (CONVENTIONS.md §2): hours, days, months and near-real-time snapshots."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from kpis.errors import PeriodError


@dataclass(frozen=True, order=True)
class Period:
    grain: str          # hourly | daily | monthly | near-real-time
    ws: datetime
    we: datetime

    def te(self, as_of: datetime) -> datetime:
        """The effective end: events stop at as_of in a running period."""
        return min(self.we, as_of)

    def is_open(self, as_of: datetime) -> bool:
        return as_of < self.we

    @property
    def label(self) -> str:
        if self.grain == "monthly":
            return self.ws.strftime("%Y-%m")
        if self.grain == "daily":
            return self.ws.strftime("%Y-%m-%d")
        if self.grain == "hourly":
            return self.ws.strftime("%Y-%m-%d %H:00")
        return self.ws.strftime("%Y-%m-%d %H:%M:%S")


def day(d: date) -> Period:
    start = datetime(d.year, d.month, d.day)
    return Period("daily", start, start + timedelta(days=1))


def month(year: int, mon: int) -> Period:
    start = datetime(year, mon, 1)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1)
    return Period("monthly", start, end)


def hours_of(d: Period) -> list[Period]:
    return [Period("hourly", d.ws + timedelta(hours=h), d.ws + timedelta(hours=h + 1))
            for h in range(int((d.we - d.ws).total_seconds() // 3600))]


def days_of(m: Period) -> list[Period]:
    out, cur = [], m.ws
    while cur < m.we:
        out.append(day(cur.date()))
        cur += timedelta(days=1)
    return out


def snapshot(as_of: datetime) -> Period:
    return Period("near-real-time", as_of, as_of)


def previous_month(p: Period) -> Period:
    prev = p.ws - timedelta(days=1)
    return month(prev.year, prev.month)


def parse_period(text: str, as_of: datetime) -> Period:
    """`today`, `YYYY-MM-DD HH` (an hour), `YYYY-MM-DD` or `YYYY-MM`; PeriodError otherwise."""
    text = text.strip()
    if text == "today":
        return day(as_of.date())
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        try:
            return day(date.fromisoformat(text))
        except ValueError as exc:
            raise PeriodError(f"period `{text}`: {exc}") from None
    h = re.fullmatch(r"(\d{4}-\d{2}-\d{2})[ T](\d{2})(?::00)?", text)
    if h and int(h[2]) < 24:
        start = datetime.fromisoformat(h[1]) + timedelta(hours=int(h[2]))
        return Period("hourly", start, start + timedelta(hours=1))
    m = re.fullmatch(r"(\d{4})-(\d{2})", text)
    if m and 1 <= int(m[2]) <= 12:
        return month(int(m[1]), int(m[2]))
    raise PeriodError(f"period `{text}` is not understood; expected today, YYYY-MM-DD HH, YYYY-MM-DD or YYYY-MM")
