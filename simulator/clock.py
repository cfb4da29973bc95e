"""Simulated time: whole seconds since 2000-01-01 00:00:00 local (naive Beijing) time."""
from __future__ import annotations

from datetime import date, datetime, timedelta

EPOCH = datetime(2000, 1, 1)
DAY = 86400
_TOD = [f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)]
_DATES: dict[int, str] = {}


def day_str(day: int) -> str:
    """'YYYY-MM-DD' of a day number (days since the epoch)."""
    s = _DATES.get(day)
    if s is None:
        s = _DATES[day] = (EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")
    return s


def ts(sec: int | float) -> str:
    """'YYYY-MM-DD HH:MM:SS' of a simulated second."""
    sec = int(sec)
    return f"{day_str(sec // DAY)} {_TOD[sec % DAY]}"


def parse_ts(text: str) -> int:
    """Inverse of ts()."""
    return int((datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S") - EPOCH).total_seconds())


def day_of(d: date) -> int:
    """Day number of a calendar date."""
    return (d - EPOCH.date()).days


def to_date(day: int) -> date:
    return (EPOCH + timedelta(days=day)).date()
