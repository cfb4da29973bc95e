"""Real receivers (aiosmtpd SMTP, ThreadingHTTPServer), a temporary warehouse and a small registry."""
from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest
from aiosmtpd.controller import Controller

from etl.settings import Settings
from kpis.roster import app_engine

KPI_VALUE_DDL = """CREATE TABLE kpi_value (kpi_id VARCHAR, theme VARCHAR, org_no VARCHAR,
    org_level VARCHAR, grain VARCHAR, period_start TIMESTAMP, period_end TIMESTAMP, value DOUBLE,
    numerator DOUBLE, denominator DOUBLE, baseline DOUBLE, status VARCHAR, is_final BOOLEAN,
    computed_at TIMESTAMP, watermarks VARCHAR)"""

ONTIME = SimpleNamespace(
    id="repair.arrival_ontime_rate_urban", name_zh="城区抢修到达现场及时率", name_en="Urban arrival on time",
    theme="repair", unit="%", direction="higher_better", grain="daily", warning="98", critical="95",
    clear="98.5", pending=None, recover_after=None, min_sample=30, sources=("cs", "dist"))
CALLS = SimpleNamespace(
    id="call.abandon_rate", name_zh="95598呼损率", name_en="Abandon rate", theme="call", unit="%",
    direction="lower_better", grain="hourly", warning="10", critical="20", clear=None, pending=1,
    recover_after=1, min_sample=None, sources="cs")
COUNT = SimpleNamespace(
    id="customer.active_total", name_zh="在册客户总数", name_en="Active customers", theme="customer",
    unit="count", direction="band", grain="daily", warning=None, critical=None, clear=None,
    pending=None, recover_after=None, min_sample=None, sources=("mis",))


@pytest.fixture
def registry() -> SimpleNamespace:
    return SimpleNamespace(kpis={k.id: k for k in (ONTIME, CALLS, COUNT)})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(source_urls={}, data_dir=tmp_path, warehouse_path=tmp_path / "warehouse.duckdb")


@pytest.fixture
def app_db(settings: Settings):
    return app_engine(settings.app_db_path)


def build_base(con) -> None:
    """kpi_value and the conformed org tables: C01 city → X01, X02 counties; S01 station under X01."""
    con.execute(KPI_VALUE_DDL)
    con.execute("CREATE TABLE dim_org (org_no VARCHAR, org_name VARCHAR, org_level VARCHAR, "
                "parent_no VARCHAR, depth INTEGER, is_root BOOLEAN)")
    con.execute("CREATE TABLE dim_org_ancestor (org_no VARCHAR, ancestor_no VARCHAR, ancestor_level VARCHAR)")
    tree = [("C01", "滨江市供电公司", "city", None, 0), ("X01", "城关县供电公司", "county", "C01", 1),
            ("X02", "河西县供电公司", "county", "C01", 1), ("S01", "城东供电所", "station", "X01", 2)]
    for org, name, level, parent, depth in tree:
        con.execute("INSERT INTO dim_org VALUES (?, ?, ?, ?, ?, ?)", [org, name, level, parent, depth, parent is None])
    anc = {"C01": ["C01"], "X01": ["X01", "C01"], "X02": ["X02", "C01"], "S01": ["S01", "X01", "C01"]}
    for org, ancestors in anc.items():
        for a in ancestors:
            con.execute("INSERT INTO dim_org_ancestor VALUES (?, ?, 'x')", [org, a])


@pytest.fixture
def warehouse(settings: Settings):
    con = duckdb.connect(str(settings.warehouse_path))
    build_base(con)
    yield con
    con.close()


def put_value(con, kpi, org, start: datetime, end: datetime, value, status, num=None, den=None,
              computed_at: datetime | None = None, watermarks: dict | None = None):
    """Write one kpi_value row the way the engine would (one current row per key)."""
    con.execute("DELETE FROM kpi_value WHERE kpi_id = ? AND org_no = ? AND grain = ? AND period_start = ?",
                [kpi.id, org, kpi.grain, start])
    con.execute("INSERT INTO kpi_value VALUES (?, ?, ?, 'county', ?, ?, ?, ?, ?, ?, NULL, ?, false, ?, ?)",
                [kpi.id, kpi.theme, org, kpi.grain, start, end, value, num, den, status,
                 computed_at or start, json.dumps(watermarks or {"cs": "2026-10-15 09:59:30",
                                                                 "dist": "2026-10-15 09:59:00"})])
    return (kpi.id, org, kpi.grain, start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SmtpReceiver:
    """A real SMTP server that can be started late (down) and stopped."""
    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    controller: Controller | None = None

    async def handle_DATA(self, server, session, envelope):   # aiosmtpd handler hook
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"

    def start(self) -> None:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def smtp_receiver():
    rx = SmtpReceiver(free_port())
    yield rx
    rx.stop()


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        server = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with server.lock:
            code = server.codes.pop(0) if server.codes else 200
            server.requests.append({"path": self.path, "headers": dict(self.headers), "code": code,
                                    "json": json.loads(body.decode("utf-8"))})
        reply = json.dumps(server.reply).encode() if code == 200 else b"{}"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_receiver():
    """Collects webhook posts; `codes` is a queue of status codes to answer (then 200)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.lock, server.codes, server.requests = threading.Lock(), [], []
    server.reply = {"errcode": 0, "errmsg": "ok"}
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
