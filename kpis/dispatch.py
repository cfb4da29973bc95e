"""The dispatcher job (every 15 s in the worker): copy user writes, escalate, send due notifications.

Call it with a cursor of its own and outside any open transaction: each successful send is
committed at once (`sent` + attempt row), failures of one run are recorded in one transaction.
Delivery is at least once; the only duplicate window left is a crash between the receiver's
acceptance and that commit, and the notification id travels as Message-ID / Idempotency-Key so
a receiver can drop it.
"""
from __future__ import annotations

import json
import logging
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa
from sqlalchemy import Engine

from kpis import outbox
from kpis.alerting import _insert, _org_info, engine_for, ensure_schema, route_and_enqueue
from kpis.notifiers import NOTIFIERS, Outgoing, SendError
from kpis.notifiers.render import render
from kpis.roster import (DeliveryConfig, active_silences, alert_ack, alert_silence, delivery_config,
                         load_roster, rows)

log = logging.getLogger(__name__)

ACK_SCHEMA = pa.schema([("ack_id", pa.string()), ("kpi_id", pa.string()), ("org_no", pa.string()),
                        ("alarm_since", pa.timestamp("us")), ("user_name", pa.string()),
                        ("comment", pa.string()), ("acked_at", pa.timestamp("us"))])
SILENCE_SCHEMA = pa.schema([("silence_id", pa.string()), ("kpi_id", pa.string()), ("org_no", pa.string()),
                            ("starts_at", pa.timestamp("us")), ("ends_at", pa.timestamp("us")),
                            ("reason", pa.string()), ("user_name", pa.string()),
                            ("created_at", pa.timestamp("us"))])


@dataclass
class DispatchSummary:
    sent: int = 0
    failed: int = 0
    dead: int = 0
    escalated: int = 0
    skipped: int = 0              # left for the next run: their destination just failed


def dispatch_due(con: Any, settings: Any, now: datetime, limit: int = 200) -> DispatchSummary:
    """One dispatcher run; `now` is naive Asia/Shanghai time."""
    ensure_schema(con)
    engine = engine_for(settings)
    cfg = delivery_config(engine, settings)
    summary = DispatchSummary()
    _guarded(sync_user_writes, con, engine)
    summary.escalated = _guarded(escalate, con, engine, cfg, now) or 0
    summary.dead = outbox.expire(con, now)
    failures: list[outbox.Failure] = []
    failed_destinations: set[str] = set()
    for p in outbox.due(con, now, limit):
        dest = _destination(p.channel, p.address, cfg)
        if dest in failed_destinations:
            summary.skipped += 1
            continue
        started = time.monotonic()
        try:
            sender = NOTIFIERS.get(p.channel)
            if sender is None:
                raise SendError(f"unknown channel {p.channel!r}; expected one of {sorted(NOTIFIERS)}", False)
            message = render(p.payload, cfg.base_url)
            detail = sender(Outgoing(p.notification_id, p.recipient, p.address, message, cfg))
        except SendError as exc:
            elapsed = (time.monotonic() - started) * 1000
            failures.append(outbox.Failure(p, exc.detail, exc.transient, elapsed))
            if exc.transient:
                failed_destinations.add(dest)
            log.warning("alert %s to %s via %s failed (%s): %s", p.notification_id, p.recipient,
                        p.channel, "will retry" if exc.transient else "permanent", exc.detail)
            continue
        outbox.mark_sent(con, p, now, detail, (time.monotonic() - started) * 1000)
        summary.sent += 1
    outbox.record_failures(con, failures, now)
    summary.failed = len(failures)
    summary.dead += sum(1 for f in failures if not f.transient)
    return summary


def _destination(channel: str, address: str, cfg: DeliveryConfig) -> str:
    """Where a send goes: one SMTP server for all e-mail, else the webhook's host."""
    if channel == "email":
        return f"smtp:{cfg.smtp_host}:{cfg.smtp_port}"
    return f"{channel}:{urllib.parse.urlsplit(address).netloc}"


def _guarded(fn: Any, *args: Any) -> Any:
    """A write conflict with the KPI job rolls back this step only; it is retried next run."""
    try:
        return fn(*args)
    except duckdb.TransactionException as exc:
        log.warning("%s skipped this run: %s", fn.__name__, exc)
        return None


def sync_user_writes(con: Any, engine: Engine) -> None:
    """Copy acks (append-only) and silences (small, replaced) from app.db; mark acked alarms."""
    acks = rows(engine, alert_ack)
    silences = rows(engine, alert_silence)
    known = {r[0] for r in con.execute("SELECT ack_id FROM alert_ack").fetchall()}
    new_acks = [a for a in acks if a["ack_id"] not in known]
    con.execute("BEGIN TRANSACTION")
    try:
        if new_acks:
            _insert(con, "alert_ack", pa.Table.from_pylist(new_acks, schema=ACK_SCHEMA))
        con.execute("DELETE FROM alert_silence")
        if silences:
            _insert(con, "alert_silence", pa.Table.from_pylist(silences, schema=SILENCE_SCHEMA))
        con.execute(
            "UPDATE alarm_state SET acked_at = a.acked_at, acked_by = a.user_name FROM ("
            "  SELECT kpi_id, org_no, alarm_since, min(acked_at) AS acked_at,"
            "         arg_min(user_name, acked_at) AS user_name FROM alert_ack GROUP BY ALL) a "
            "WHERE alarm_state.kpi_id = a.kpi_id AND alarm_state.org_no = a.org_no "
            "AND alarm_state.since = a.alarm_since AND alarm_state.acked_at IS NULL")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def escalate(con: Any, engine: Engine, cfg: DeliveryConfig, now: datetime) -> int:
    """Notify the escalation roster about alarms nobody acknowledged in time; once per episode."""
    due = con.execute(
        "SELECT kpi_id, org_no, last_item FROM alarm_state WHERE state IN ('firing', 'recovering') "
        "AND NOT held AND acked_at IS NULL AND escalated_at IS NULL AND escalate_after_s IS NOT NULL "
        "AND since + to_seconds(escalate_after_s) <= $now ORDER BY kpi_id, org_no",
        {"now": now}).fetchall()
    if not due:
        return 0
    events = [dict(json.loads(item), kind="escalation") for _, _, item in due]
    orgs = _org_info(con, {org for _, org, _ in due})
    con.execute("BEGIN TRANSACTION")
    try:
        route_and_enqueue(con, events, load_roster(engine), active_silences(engine, now), now,
                          cfg.deadline_s, orgs, role="escalation")
        con.execute("UPDATE alarm_state SET escalated_at = $now WHERE list_contains($keys, "
                    "kpi_id || chr(31) || org_no)",
                    {"now": now, "keys": [f"{k}\x1f{o}" for k, o, _ in due]})
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return len(due)
