"""The real web server (`python app.py web`) on a free port over the fixture snapshot, and a
headless Debian Chromium driven by Playwright (never a downloaded browser)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.web.snapshot_kit import publish_fixture

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
PASSWORD = "browser test password 1"


@dataclass
class Server:
    url: str
    data_dir: Path
    env: dict[str, str]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def web_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCE_", "SIM"))}
    env.update(DATA_DIR=str(data_dir), PORT=str(port), SECRET_KEY="browser-" + "s" * 40, SIMULATE="0",
               REFRESH_S="5", PYTHONUNBUFFERED="1")
    return env


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    data_dir = tmp_path_factory.mktemp("browser") / "data"
    publish_fixture(data_dir)
    port = free_port()
    env = web_env(data_dir, port)
    for name, role, org in (("ana", "analyst", "P0"), ("mgr", "manager", "C1")):
        done = subprocess.run([sys.executable, "app.py", "users", "add", name, "--role", role, "--org", org,
                               "--password-stdin"], cwd=ROOT, env=env, input=PASSWORD + "\n",
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    log = open(data_dir / "web.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "web"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield Server(f"http://127.0.0.1:{port}", data_dir, env)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="session")
def browser(server: Server):  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server: Server):  # type: ignore[no-untyped-def]
    """A logged-in analyst page that fails the test on any browser console error."""
    ctx = browser.new_context(viewport={"width": 1920, "height": 1080}, accept_downloads=True)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    login(pg, server.url, "ana")
    yield pg
    ctx.close()
    assert errors == [], errors


def login(pg, url: str, name: str) -> None:  # type: ignore[no-untyped-def]
    pg.goto(url + "/login")
    pg.fill("#username", name)
    pg.fill("#password", PASSWORD)
    pg.click("button[type=submit]")
    pg.wait_for_url(url + "/")
