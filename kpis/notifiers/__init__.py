"""Delivery channels: an explicit mapping from channel name to a send function."""
from __future__ import annotations

from collections.abc import Callable

from kpis.notifiers import dingtalk, email, webhook, wecom
from kpis.notifiers.base import Outgoing, SendError

Sender = Callable[[Outgoing], str]

NOTIFIERS: dict[str, Sender] = {
    "email": email.send,
    "webhook": webhook.send,
    "wecom": wecom.send,
    "dingtalk": dingtalk.send,
}

__all__ = ["NOTIFIERS", "Outgoing", "SendError", "Sender"]
