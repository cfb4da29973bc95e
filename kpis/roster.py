"""Alert user writes in the app database: duty roster, contacts, acks, silences, delivery settings.

The web tier writes these to Settings.app_db_path (SQLite, WAL) through SQLAlchemy; the worker
reads them each cycle (routing, silences) and copies acks and silences into the warehouse.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (Column, DateTime, Engine, Integer, MetaData, String, Table, Text, create_engine,
                        event, insert, select, update)

meta = MetaData()

alert_contact = Table(                       # one row per recipient and channel
    "alert_contact", meta,
    Column("recipient", String, primary_key=True),
    Column("channel", String, primary_key=True),      # email, webhook, wecom, dingtalk
    Column("address", Text, nullable=False),           # e-mail address or robot/webhook URL
    Column("display_name", String),
)
duty_roster = Table(
    "duty_roster", meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("org_no", String, nullable=False),          # '*' = every unit; a unit covers its descendants
    Column("recipient", String, nullable=False),
    Column("role", String, nullable=False, default="primary"),   # primary | escalation
    Column("days", String, nullable=False, default="1234567"),   # ISO weekdays, Monday = 1
    Column("shift_start", String, nullable=False, default="00:00"),  # Asia/Shanghai wall clock
    Column("shift_end", String, nullable=False, default="24:00"),    # end < start: overnight shift
    Column("min_severity", String, nullable=False, default="warning"),
)
alert_ack = Table(
    "alert_ack", meta,
    Column("ack_id", String, primary_key=True),
    Column("kpi_id", String, nullable=False),
    Column("org_no", String, nullable=False),
    Column("alarm_since", DateTime, nullable=False),   # identifies the firing episode
    Column("user_name", String, nullable=False),
    Column("comment", Text, nullable=False, default=""),
    Column("acked_at", DateTime, nullable=False),
)
alert_silence = Table(
    "alert_silence", meta,
    Column("silence_id", String, primary_key=True),
    Column("kpi_id", String),                          # NULL: every KPI
    Column("org_no", String),                          # NULL: every unit; else the unit and below
    Column("starts_at", DateTime, nullable=False),
    Column("ends_at", DateTime, nullable=False),
    Column("reason", Text, nullable=False),
    Column("user_name", String, nullable=False),
    Column("created_at", DateTime, nullable=False),
)
alert_setting = Table(
    "alert_setting", meta,
    Column("key", String, primary_key=True),
    Column("value", Text),
)

SETTING_KEYS = ("base_url", "smtp_host", "smtp_port", "smtp_user", "smtp_password", "smtp_from",
                "smtp_security", "send_timeout_s", "deadline_s")


class RosterError(ValueError):
    """A roster, silence or acknowledgement request that cannot be stored."""


def app_engine(path: Path | str) -> Engine:
    """Engine over the app database with WAL and a busy timeout; creates the alert tables."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 10})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_con: Any, _record: Any) -> None:
        dbapi_con.execute("PRAGMA journal_mode=WAL")
        dbapi_con.execute("PRAGMA busy_timeout=10000")

    meta.create_all(engine)
    return engine


@dataclass(frozen=True)
class DeliveryConfig:
    """Where and how notifications are sent; secrets never logged."""
    base_url: str = "http://127.0.0.1:8050"
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "kpi-alerts@localhost"
    smtp_security: str = "none"          # none | starttls | ssl
    send_timeout_s: float = 10.0
    deadline_s: int = 6 * 3600           # undelivered after this: dead letter


def delivery_config(engine: Engine, settings: object | None = None) -> DeliveryConfig:
    """Settings attributes `alert_<key>` (env vars, when the lead adds them) win over app.db rows."""
    with engine.connect() as con:
        stored = {k: v for k, v in con.execute(select(alert_setting.c.key, alert_setting.c.value))}
    values: dict[str, Any] = {}
    for key in SETTING_KEYS:
        raw = getattr(settings, f"alert_{key}", None) if settings is not None else None
        raw = raw if raw not in (None, "") else stored.get(key)
        if raw in (None, ""):
            continue
        try:
            values[key] = (int(raw) if key in ("smtp_port", "deadline_s") else
                           float(raw) if key == "send_timeout_s" else str(raw))
        except ValueError as exc:
            raise RosterError(f"alert setting `{key}`: expected a number, got {raw!r}") from exc
    if values.get("smtp_security", "none") not in ("none", "starttls", "ssl"):
        raise RosterError(f"alert setting `smtp_security`: expected none, starttls or ssl, "
                          f"got {values['smtp_security']!r}")
    return DeliveryConfig(**values)


def set_settings(engine: Engine, values: Mapping[str, object]) -> None:
    """Store delivery settings (keys of SETTING_KEYS)."""
    unknown = set(values) - set(SETTING_KEYS)
    if unknown:
        raise RosterError(f"unknown alert setting(s) {sorted(unknown)}; expected {SETTING_KEYS}")
    with engine.begin() as con:
        for key, value in values.items():
            con.execute(alert_setting.delete().where(alert_setting.c.key == key))
            con.execute(insert(alert_setting).values(key=key, value=None if value is None else str(value)))


def add_contact(engine: Engine, recipient: str, channel: str, address: str,
                display_name: str | None = None) -> None:
    """Register (or replace) how a recipient is reached on one channel."""
    if channel not in ("email", "webhook", "wecom", "dingtalk"):
        raise RosterError(f"contact {recipient!r}: unknown channel {channel!r}")
    with engine.begin() as con:
        con.execute(alert_contact.delete().where((alert_contact.c.recipient == recipient)
                                                 & (alert_contact.c.channel == channel)))
        con.execute(insert(alert_contact).values(recipient=recipient, channel=channel,
                                                 address=address, display_name=display_name))


def add_shift(engine: Engine, org_no: str, recipient: str, role: str = "primary",
              days: str = "1234567", shift_start: str = "00:00", shift_end: str = "24:00",
              min_severity: str = "warning") -> None:
    """Put a recipient on duty for an org unit (and its descendants) in a local-time shift."""
    if role not in ("primary", "escalation"):
        raise RosterError(f"shift for {recipient!r}: role must be primary or escalation, got {role!r}")
    for text in (shift_start, shift_end):
        _minutes(text)
    with engine.begin() as con:
        con.execute(insert(duty_roster).values(org_no=org_no, recipient=recipient, role=role, days=days,
                                               shift_start=shift_start, shift_end=shift_end,
                                               min_severity=min_severity))


def _minutes(text: str) -> int:
    try:
        h, m = (int(x) for x in text.split(":"))
    except ValueError as exc:
        raise RosterError(f"shift time {text!r}: expected HH:MM") from exc
    if not (0 <= h <= 24 and 0 <= m < 60 and h * 60 + m <= 1440):
        raise RosterError(f"shift time {text!r}: expected 00:00..24:00")
    return h * 60 + m


def in_shift(days: str, start: str, end: str, now: datetime) -> bool:
    """True when local `now` falls in the shift; an overnight shift belongs to the day it starts."""
    minute, a, b = now.hour * 60 + now.minute, _minutes(start), _minutes(end)
    weekday = now.isoweekday()
    if a <= b:
        return str(weekday) in days and a <= minute < b
    yesterday = 7 if weekday == 1 else weekday - 1
    return (str(weekday) in days and minute >= a) or (str(yesterday) in days and minute < b)


@dataclass(frozen=True, order=True)
class Route:
    recipient: str
    channel: str
    address: str


@dataclass(frozen=True)
class Roster:
    """The roster and contacts as read once per job run."""
    shifts: tuple[dict[str, Any], ...]
    contacts: tuple[dict[str, Any], ...]

    def routes(self, org_units: Iterable[str] | None, now: datetime, role: str = "primary",
               severity: str = "warning") -> list[Route]:
        """Contacts on duty now for any of `org_units` (a unit and its ancestors); None: any unit."""
        units = None if org_units is None else set(org_units) | {"*"}
        rank = {"warning": 1, "critical": 2}
        names = {s["recipient"] for s in self.shifts
                 if s["role"] == role and (units is None or s["org_no"] in units)
                 and in_shift(s["days"], s["shift_start"], s["shift_end"], now)
                 and rank.get(severity, 2) >= rank.get(s["min_severity"], 1)}
        return sorted(Route(c["recipient"], c["channel"], c["address"]) for c in self.contacts
                      if c["recipient"] in names)


def load_roster(engine: Engine) -> Roster:
    """Read shifts and contacts (a few hundred rows at most)."""
    with engine.connect() as con:
        shifts = tuple(dict(r) for r in con.execute(select(duty_roster)).mappings())
        contacts = tuple(dict(r) for r in con.execute(select(alert_contact)).mappings())
    return Roster(shifts, contacts)


def active_silences(engine: Engine, now: datetime) -> list[dict[str, Any]]:
    """Silences whose window contains `now`."""
    with engine.connect() as con:
        return [dict(r) for r in con.execute(select(alert_silence).where(
            (alert_silence.c.starts_at <= now) & (alert_silence.c.ends_at > now))).mappings()]


def acknowledge(engine: Engine, kpi_id: str, org_no: str, alarm_since: datetime, user: str,
                comment: str, now: datetime) -> str:
    """Record an acknowledgement of one firing episode; returns its id."""
    ack_id = uuid.uuid4().hex
    with engine.begin() as con:
        con.execute(insert(alert_ack).values(ack_id=ack_id, kpi_id=kpi_id, org_no=org_no,
                                             alarm_since=alarm_since, user_name=user,
                                             comment=comment or "", acked_at=now))
    return ack_id


def add_silence(engine: Engine, kpi_id: str | None, org_no: str | None, starts_at: datetime,
                ends_at: datetime, reason: str, user: str, now: datetime) -> str:
    """Silence a KPI and/or org unit for a window; a reason is required."""
    if not kpi_id and not org_no:
        raise RosterError("silence: name a KPI or an org unit (silencing everything is not allowed)")
    if ends_at <= starts_at:
        raise RosterError(f"silence: ends_at {ends_at} is not after starts_at {starts_at}")
    if not reason.strip():
        raise RosterError("silence: a reason is required")
    silence_id = uuid.uuid4().hex
    with engine.begin() as con:
        con.execute(insert(alert_silence).values(silence_id=silence_id, kpi_id=kpi_id or None,
                                                 org_no=org_no or None, starts_at=starts_at,
                                                 ends_at=ends_at, reason=reason, user_name=user,
                                                 created_at=now))
    return silence_id


def end_silence(engine: Engine, silence_id: str, now: datetime) -> None:
    """Expire a silence now."""
    with engine.begin() as con:
        con.execute(update(alert_silence).where(alert_silence.c.silence_id == silence_id)
                    .values(ends_at=now))


def rows(engine: Engine, table: Table) -> list[dict[str, Any]]:
    """All rows of one of this module's tables (acks and silences are small)."""
    with engine.connect() as con:
        return [dict(r) for r in con.execute(select(table)).mappings()]
