"""E-mail over SMTP: Chinese subject and body, text and HTML parts, Message-ID = notification id."""
from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

from kpis.notifiers.base import Outgoing, SendError


def build(out: Outgoing) -> EmailMessage:
    """The MIME message; the Message-ID lets receivers drop a resent duplicate."""
    msg = EmailMessage()
    msg["Subject"] = out.message.subject
    msg["From"] = out.config.smtp_from
    msg["To"] = out.address
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = f"<{out.notification_id}@kpi-alerts>"
    msg.set_content(out.message.text)
    msg.add_alternative(out.message.html, subtype="html")
    return msg


def send(out: Outgoing) -> str:
    """Send one message; 4xx replies and connection problems are transient, 5xx permanent."""
    cfg = out.config
    if not cfg.smtp_host:
        raise SendError("e-mail: no SMTP host configured (alert setting `smtp_host`)", False)
    msg = build(out)
    try:
        if cfg.smtp_security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(cfg.smtp_host, cfg.smtp_port, timeout=cfg.send_timeout_s,
                                                    context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.send_timeout_s)
        with client:
            if cfg.smtp_security == "starttls":
                client.starttls(context=ssl.create_default_context())
            if cfg.smtp_user:
                client.login(cfg.smtp_user, cfg.smtp_password or "")
            refused = client.send_message(msg)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        raise SendError(f"SMTP refused recipient: {codes}", all(400 <= c < 500 for c in codes)) from exc
    except smtplib.SMTPResponseException as exc:
        raise SendError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"[:300], 400 <= exc.smtp_code < 500) from exc
    except (smtplib.SMTPException, OSError) as exc:   # disconnects, refused connections, timeouts
        raise SendError(f"SMTP {cfg.smtp_host}:{cfg.smtp_port} unreachable: {exc}"[:300], True) from exc
    if refused:
        raise SendError(f"SMTP refused {sorted(refused)}", False)
    return "SMTP 250"
