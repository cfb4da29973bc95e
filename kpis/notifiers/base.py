"""What every channel receives (one rendered notification) and how it reports failure."""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from kpis.notifiers.render import Rendered
from kpis.roster import DeliveryConfig

TRANSIENT_HTTP = {408, 429}


@dataclass(frozen=True)
class Outgoing:
    notification_id: str
    recipient: str
    address: str
    message: Rendered
    config: DeliveryConfig


class SendError(Exception):
    """A failed send; `transient` ones are retried with backoff until the deadline."""

    def __init__(self, detail: str, transient: bool) -> None:
        super().__init__(detail)
        self.detail, self.transient = detail, transient


def post_json(out: Outgoing, body: object) -> dict | None:
    """POST JSON with the notification id as Idempotency-Key; returns the JSON reply if any."""
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    req = urllib.request.Request(out.address, data=data, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8",
        "Idempotency-Key": out.notification_id,
        "User-Agent": "kpi-dashboard-alerts/1",
    })
    try:
        with urllib.request.urlopen(req, timeout=out.config.send_timeout_s) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        transient = exc.code >= 500 or exc.code in TRANSIENT_HTTP
        raise SendError(f"HTTP {exc.code} from {_host(out.address)}", transient) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SendError(f"cannot reach {_host(out.address)}: {reason}", True) from exc
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        return None


def _host(url: str) -> str:
    """Host part only: robot URLs carry their access token in the query string."""
    return urllib.parse.urlsplit(url).netloc


def check_robot_reply(reply: dict | None, transient_codes: set[int], channel: str) -> str:
    """WeCom and DingTalk answer HTTP 200 with an errcode; 0 means accepted."""
    if reply is None:
        raise SendError(f"{channel}: empty or non-JSON reply", True)
    code = int(reply.get("errcode", 0))
    if code == 0:
        return f"{channel} errcode 0"
    raise SendError(f"{channel} errcode {code}: {reply.get('errmsg', '')}"[:300], code in transient_codes)
