"""A dispatcher killed in the middle of delivery resumes from the outbox without duplicates."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import duckdb
from aiosmtpd.controller import Controller

from kpis.alerting import process
from kpis.roster import add_contact, add_shift, set_settings

from .conftest import CALLS, free_port, put_value

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 10, 15, 10, 0)
DISPATCH = """
import sys, duckdb
from datetime import datetime
from pathlib import Path
from etl.settings import Settings
from kpis.dispatch import dispatch_due
data = Path(sys.argv[1])
settings = Settings(source_urls={}, data_dir=data, warehouse_path=data / "warehouse.duckdb")
con = duckdb.connect(str(settings.warehouse_path))
print(dispatch_due(con, settings, datetime.fromisoformat(sys.argv[2])), flush=True)
"""


class StallingSmtp:
    """Accepts messages, but stalls before answering the third until released (then refuses it)."""

    def __init__(self) -> None:
        self.accepted: list = []
        self.seen = 0
        self.stalled, self.release = threading.Event(), threading.Event()

    async def handle_DATA(self, server, session, envelope):
        self.seen += 1
        if self.seen == 3:
            self.stalled.set()
            while not self.release.is_set():
                await asyncio.sleep(0.02)
            return "451 sender went away"          # never acknowledged: not delivered
        self.accepted.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


def run_dispatcher(data: Path, now: datetime) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", DISPATCH, str(data), now.isoformat()], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_mid_delivery_then_restart_sends_no_duplicate(warehouse, registry, settings, app_db):
    handler, port = StallingSmtp(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        set_settings(app_db, {"smtp_host": "127.0.0.1", "smtp_port": port})
        people = [f"p{i}" for i in range(5)]
        for who in people:                                   # five recipients: five notifications
            add_contact(app_db, who, "email", f"{who}@example.cn")
            add_shift(app_db, "*", who)
        warehouse.execute("BEGIN TRANSACTION")
        key = put_value(warehouse, CALLS, "S01", T0, T0 + timedelta(hours=1), 30.0, "critical", num=30, den=100)
        process(warehouse, registry, [key], T0, settings)
        warehouse.execute("COMMIT")
        warehouse.close()                                    # the dispatcher process owns the file now

        first = run_dispatcher(settings.data_dir, T0)
        assert handler.stalled.wait(30), first.stderr.read() if first.poll() is not None else "no stall"
        first.kill()                                         # crash while the third send is in flight
        first.wait(10)
        handler.release.set()
        assert len(handler.accepted) == 2

        second = run_dispatcher(settings.data_dir, T0 + timedelta(seconds=15))
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert "sent=3" in out
    finally:
        controller.stop()
    recipients = sorted(str(m["To"]) for m in handler.accepted)
    assert recipients == sorted(f"{p}@example.cn" for p in people)     # each exactly once
    assert len({m["Message-ID"] for m in handler.accepted}) == 5
    con = duckdb.connect(str(settings.warehouse_path))
    try:
        assert con.execute("SELECT status, count(*) FROM alert_outbox GROUP BY ALL").fetchall() == [("sent", 5)]
    finally:
        con.close()
