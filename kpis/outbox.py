"""The transactional outbox: one row per (recipient, channel) notification, plus delivery attempts.

Rows are written in the KPI job's transaction (kpis.alerting) and drained by kpis.dispatch.
Status: pending → sent | dead. `alert_delivery` keeps every attempt.
"""
from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

DDL = (
    """CREATE TABLE IF NOT EXISTS alert_outbox (
        notification_id VARCHAR, created_at TIMESTAMP, recipient VARCHAR, channel VARCHAR,
        address VARCHAR, kind VARCHAR, event_ids VARCHAR, payload VARCHAR, status VARCHAR,
        attempts INTEGER, next_attempt_at TIMESTAMP, deadline TIMESTAMP, sent_at TIMESTAMP,
        last_error VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS alert_delivery (
        notification_id VARCHAR, attempt INTEGER, attempted_at TIMESTAMP, outcome VARCHAR,
        detail VARCHAR, elapsed_ms DOUBLE)""",
)

BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_CAP = timedelta(minutes=15)


@dataclass(frozen=True)
class Pending:
    notification_id: str
    recipient: str
    channel: str
    address: str
    kind: str
    payload: dict[str, Any]
    attempts: int
    deadline: datetime


def ensure_schema(con: Any) -> None:
    """Create the outbox tables if missing (idempotent)."""
    for ddl in DDL:
        con.execute(ddl)


def enqueue(con: Any, recipient: str, channel: str, address: str, kind: str,
            items: Sequence[dict[str, Any]], event_ids: Iterable[str], now: datetime,
            deadline_s: int) -> str:
    """Write one pending notification; runs inside the caller's transaction."""
    nid = uuid.uuid4().hex
    con.execute(
        "INSERT INTO alert_outbox VALUES ($id, $now, $rcpt, $ch, $addr, $kind, $events, $payload, "
        "'pending', 0, $now, $deadline, NULL, NULL)",
        {"id": nid, "now": now, "rcpt": recipient, "ch": channel, "addr": address, "kind": kind,
         "events": json.dumps(list(event_ids)), "deadline": now + timedelta(seconds=deadline_s),
         "payload": json.dumps({"kind": kind, "items": list(items)}, ensure_ascii=False, default=str)})
    return nid


def due(con: Any, now: datetime, limit: int = 200) -> list[Pending]:
    """Pending notifications whose next attempt is due, oldest first."""
    rows = con.execute(
        "SELECT notification_id, recipient, channel, address, kind, payload, attempts, deadline "
        "FROM alert_outbox WHERE status = 'pending' AND next_attempt_at <= $now "
        "ORDER BY created_at, notification_id LIMIT $limit", {"now": now, "limit": limit}).fetchall()
    return [Pending(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows]


def mark_sent(con: Any, p: Pending, now: datetime, detail: str, elapsed_ms: float) -> None:
    """Commit `sent` right after the receiver accepted: the narrowest duplicate window we can get."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("UPDATE alert_outbox SET status = 'sent', sent_at = $now, attempts = attempts + 1, "
                    "last_error = NULL WHERE notification_id = $id", {"now": now, "id": p.notification_id})
        con.execute("INSERT INTO alert_delivery VALUES ($id, $n, $now, 'sent', $detail, $ms)",
                    {"id": p.notification_id, "n": p.attempts + 1, "now": now, "detail": detail,
                     "ms": elapsed_ms})
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def backoff(attempt: int, rng: random.Random | None = None) -> timedelta:
    """30 s, 1 min, 2 min … capped at 15 min, with ±20 % jitter so retries do not align."""
    base = min(BACKOFF_BASE * (2 ** max(attempt - 1, 0)), BACKOFF_CAP)
    return base * (0.8 + 0.4 * (rng or random).random())


@dataclass(frozen=True)
class Failure:
    pending: Pending
    detail: str
    transient: bool
    elapsed_ms: float


def record_failures(con: Any, failures: Sequence[Failure], now: datetime) -> None:
    """One transaction for every failed attempt of a dispatcher run (DuckDB prefers bulk work)."""
    if not failures:
        return
    con.execute("BEGIN TRANSACTION")
    try:
        for f in failures:
            n = f.pending.attempts + 1
            retry_at = now + backoff(n)
            dead = not f.transient or retry_at > f.pending.deadline
            outcome = "dead" if dead else "retry"
            con.execute("UPDATE alert_outbox SET attempts = $n, last_error = $err, status = $status, "
                        "next_attempt_at = $at WHERE notification_id = $id",
                        {"n": n, "err": f.detail, "status": "dead" if dead else "pending",
                         "at": retry_at, "id": f.pending.notification_id})
            con.execute("INSERT INTO alert_delivery VALUES ($id, $n, $now, $outcome, $detail, $ms)",
                        {"id": f.pending.notification_id, "n": n, "now": now, "outcome": outcome,
                         "detail": f.detail, "ms": f.elapsed_ms})
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def expire(con: Any, now: datetime) -> int:
    """Dead-letter pending rows past their deadline (e.g. after a long outage of the worker)."""
    rows = con.execute("UPDATE alert_outbox SET status = 'dead', last_error = "
                       "COALESCE(last_error, 'deadline passed before any attempt') "
                       "WHERE status = 'pending' AND deadline < $now RETURNING notification_id",
                       {"now": now}).fetchall()
    return len(rows)
