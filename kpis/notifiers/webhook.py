"""Generic JSON webhook: the structured notification with an Idempotency-Key header."""
from __future__ import annotations

from kpis.notifiers.base import Outgoing, post_json


def send(out: Outgoing) -> str:
    """POST the notification as JSON; 2xx is success."""
    msg = out.message
    post_json(out, {"notification_id": out.notification_id, "recipient": out.recipient,
                    "kind": msg.kind, "subject": msg.subject, "text": msg.text, "items": msg.items})
    return "HTTP 2xx"
