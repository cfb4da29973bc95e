"""DingTalk (钉钉) group robot, markdown msgtype."""
from __future__ import annotations

from kpis.notifiers.base import Outgoing, check_robot_reply, post_json

LIMIT_BYTES = 20000
RATE_LIMITED = {130101}          # "send too fast": retry later


def send(out: Outgoing) -> str:
    """Send title + markdown text; errcode 0 is success."""
    msg = out.message
    body = {"msgtype": "markdown",
            "markdown": {"title": msg.subject, "text": msg.markdown_within(LIMIT_BYTES)}}
    return check_robot_reply(post_json(out, body), RATE_LIMITED, "dingtalk")
