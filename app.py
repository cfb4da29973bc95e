"""Composition root and command line of the KPI dashboard.

    python app.py                 embedded default: simulator (first start: build), worker, web
    python app.py worker [--once] the worker service (ETL → KPIs → alerts → publish)
    python app.py web             the web service (Flask dev server, reloader off)
    python app.py users ...       user administration (kpis.appdb)
    gunicorn -w 2 -k gthread --threads 4 -b 127.0.0.1:8050 'app:server()'   production web

Importing this module has no side effects; no SQL, callbacks or layout live here.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from etl.settings import SOURCE_NAMES, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("app")


def _settings() -> Settings:
    try:
        return load_settings(os.environ)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


def _logging() -> None:
    level = os.environ.get("LOG_LEVEL", "INFO")
    logging.basicConfig(level=level,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    if level.upper() != "DEBUG":
        # APScheduler logs two INFO lines per job run (alert dispatch every 15 s): noise that
        # hides the worker's own lines; its warnings (missed runs) still show.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)


def server() -> Any:
    """WSGI factory for gunicorn: `gunicorn 'app:server()'`."""
    _logging()
    from dashboards._web import create_app
    return create_app(_settings()).server


def _sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def sources_missing(settings: Settings) -> bool:
    """True when an SQLite source file does not exist yet (first start of the embedded default)."""
    paths = [_sqlite_path(settings.source_url(n)) for n in SOURCE_NAMES]
    return any(p is not None and not p.exists() for p in paths)


def _simulator_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name in SOURCE_NAMES:   # the simulator writes exactly where the worker reads
        env[f"SOURCE_{name.upper()}_URL"] = settings.source_url(name)
    return env


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the embedded run like Ctrl-C: children are stopped


def run_embedded(settings: Settings) -> int:
    """Simulator (when simulating), worker as a child process, web server in this process."""
    children: list[subprocess.Popen[bytes]] = []
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.simulate and sources_missing(settings):
        print(f"First start: building the simulated `{settings.sim_scale}` territory "
              f"({settings.sim_days} days of history) ...", flush=True)
        done = subprocess.run([sys.executable, "-m", "simulator", "build", "--scale",
                               settings.sim_scale, "--days", str(settings.sim_days)],
                              cwd=ROOT, env=_simulator_env(settings), check=False)
        if done.returncode != 0:
            print(f"simulator build failed (exit {done.returncode})", file=sys.stderr)
            return done.returncode
    from kpis.appdb import ensure_first_admin
    password = ensure_first_admin(settings)
    if password:
        print(f"First start: sign in as `admin` with password {password} "
              "(shown once; add users with `python app.py users add`)", flush=True)
    try:
        if settings.simulate:
            children.append(subprocess.Popen(
                [sys.executable, "-m", "simulator", "live", "--speed", str(settings.sim_speed),
                 "--follow-wall-clock"],
                cwd=ROOT, env=_simulator_env(settings)))
        children.append(subprocess.Popen([sys.executable, str(ROOT / "app.py"), "worker"], cwd=ROOT))
        signal.signal(signal.SIGTERM, _interrupt)
        return run_web(settings)
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()


def run_web(settings: Settings) -> int:
    """The Flask development server, threaded, reloader off (a reloader doubles processes)."""
    from dashboards._web import create_app
    app = create_app(settings)
    print(f"Dashboard: http://{settings.host}:{settings.port}/", flush=True)
    app.server.run(host=settings.host, port=settings.port, threaded=True,
                   debug=False, use_reloader=False)
    return 0


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    if command not in ("", "worker", "web", "users"):
        print(f"unknown command `{command}`\n{__doc__}", file=sys.stderr)
        return 2
    settings = _settings()
    _logging()
    if command == "worker":
        from kpis.worker import run_worker
        return run_worker(settings, once="--once" in argv[1:])
    if command == "web":
        return run_web(settings)
    if command == "users":
        from kpis.appdb import users_cli
        return users_cli(argv[1:], settings)
    return run_embedded(settings)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
