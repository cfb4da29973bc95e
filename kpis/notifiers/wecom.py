"""WeCom (企业微信) group robot, markdown msgtype."""
from __future__ import annotations

from kpis.notifiers.base import Outgoing, check_robot_reply, post_json

LIMIT_BYTES = 4096               # WeCom rejects longer markdown content
RATE_LIMITED = {45009}           # "api freq out of limit": retry later


def send(out: Outgoing) -> str:
    """Send the markdown text; errcode 0 is success."""
    content = out.message.markdown_within(LIMIT_BYTES)
    reply = post_json(out, {"msgtype": "markdown", "markdown": {"content": content}})
    return check_robot_reply(reply, RATE_LIMITED, "wecom")
