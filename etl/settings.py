"""Runtime settings: the only product module that reads os.environ.

Every setting has an environment variable and a default for the embedded setup (simulated
SQLite sources under data/, one DuckDB warehouse). Settings are read and validated once at
start; every problem is collected and reported together, naming the variable.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

SOURCE_NAMES = ("mis", "cs", "dist", "meter")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / "data"


class SettingsError(ValueError):
    """Invalid configuration; the message names every bad variable."""


@dataclass(frozen=True)
class Settings:
    source_urls: Mapping[str, str] = field(repr=False)   # may hold passwords: never logged
    data_dir: Path
    warehouse_path: Path
    port: int = 8050
    host: str = "127.0.0.1"
    embedded: bool = True         # no SOURCE_*_URL set: the simulator's SQLite files are the sources
    simulate: bool = True         # run `simulator live` against the source URLs
    sim_scale: str = "county"     # scale built on first start of the embedded default
    sim_speed: float = 1.0        # live simulator clock factor
    sim_days: int = 90            # history built on first start
    timezone: str = "Asia/Shanghai"
    etl_interval_s: int = 60
    etl_overlap_s: int = 600
    etl_meter_overlap_s: int = 26 * 3600
    # the long metering overlap is read only where counts per bucket differ, and swept whole once
    # per this long (source-clock seconds; 0 = read whole every pass, the behaviour before the guard)
    etl_meter_reread_s: int = 21600
    # the guard compares counts per bucket of this many seconds and re-reads only those that differ
    etl_meter_bucket_s: int = 600
    # at most this many source rows of the older overlap are re-read in one pass (differing buckets
    # first, then the next slice of the periodic sweep): a city night holds ~3.5 M readings
    etl_meter_reread_rows: int = 50_000
    # cs + dist beside meter, each source on its own cursor: no measurable gain on a busy 2-core
    # machine (bench/RESULTS.md, ETL), so opt-in
    etl_parallel: bool = False
    etl_safety_lag_s: int = 5
    source_timeout_s: int = 20
    refresh_s: int = 30
    stale_after_s: int = 300      # a source whose data is older than this is shown (and alerted) late
    secret_key: str | None = field(default=None, repr=False)
    cache_dir: Path | None = None
    # alert delivery (None: fall back to the values stored in the app database)
    alert_base_url: str | None = None
    alert_smtp_host: str | None = None
    alert_smtp_port: int | None = None
    alert_smtp_user: str | None = None
    alert_smtp_password: str | None = field(default=None, repr=False)
    alert_smtp_from: str | None = None
    alert_smtp_security: str | None = None
    alert_send_timeout_s: int | None = None
    alert_deadline_s: int | None = None

    @property
    def serving_dir(self) -> Path:
        return self.data_dir / "serving"

    @property
    def app_db_path(self) -> Path:
        return self.data_dir / "app.db"

    def source_url(self, name: str) -> str:
        return self.source_urls[name]


def default_source_url(name: str, data_dir: Path = DEFAULT_DATA_DIR) -> str:
    return f"sqlite:///{data_dir / f'source_{name}.db'}"


def _int(environ: Mapping[str, str], var: str, default: int, low: int, high: int,
         problems: list[str]) -> int:
    raw = environ.get(var)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{var}: expected a whole number, got {raw!r}")
        return default
    if not low <= value <= high:
        problems.append(f"{var}: expected {low}..{high}, got {value}")
    return value


def _float(environ: Mapping[str, str], var: str, default: float, low: float, high: float,
           problems: list[str]) -> float:
    raw = environ.get(var)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        problems.append(f"{var}: expected a number, got {raw!r}")
        return default
    if not low <= value <= high:
        problems.append(f"{var}: expected {low}..{high}, got {value}")
    return value


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """Read and validate every setting; raise SettingsError listing all problems at once."""
    problems: list[str] = []
    data_dir = Path(environ.get("DATA_DIR") or DEFAULT_DATA_DIR)
    urls: dict[str, str] = {}
    for name in SOURCE_NAMES:
        var = f"SOURCE_{name.upper()}_URL"
        urls[name] = environ.get(var) or default_source_url(name, data_dir)
        try:
            make_url(urls[name])
        except ArgumentError:
            problems.append(f"{var}: not a SQLAlchemy URL (e.g. postgresql+psycopg://user@host/db)")
    embedded = not any(environ.get(f"SOURCE_{n.upper()}_URL") for n in SOURCE_NAMES)
    simulate = environ.get("SIMULATE", "")
    if simulate not in ("", "0", "1"):
        problems.append(f"SIMULATE: expected 0 or 1, got {simulate!r}")
    scale = environ.get("SIM_SCALE", "county")
    if scale not in ("small", "county", "city"):
        problems.append(f"SIM_SCALE: expected small, county or city, got {scale!r}")
    port = _int(environ, "PORT", 8050, 1, 65535, problems)
    values = dict(
        etl_interval_s=_int(environ, "ETL_INTERVAL_S", 60, 1, 86400, problems),
        etl_overlap_s=_int(environ, "ETL_OVERLAP_S", 600, 0, 7 * 86400, problems),
        etl_meter_overlap_s=_int(environ, "ETL_METER_OVERLAP_S", 26 * 3600, 0, 30 * 86400, problems),
        etl_meter_reread_s=_int(environ, "ETL_METER_REREAD_S", 21600, 0, 30 * 86400, problems),
        etl_meter_bucket_s=_int(environ, "ETL_METER_BUCKET_S", 600, 60, 86400, problems),
        etl_meter_reread_rows=_int(environ, "ETL_METER_REREAD_ROWS", 50_000, 1, 10**9, problems),
        etl_safety_lag_s=_int(environ, "ETL_SAFETY_LAG_S", 5, 0, 3600, problems),
        source_timeout_s=_int(environ, "SOURCE_TIMEOUT_S", 20, 1, 3600, problems),
        refresh_s=_int(environ, "REFRESH_S", 30, 5, 3600, problems),
        stale_after_s=_int(environ, "STALE_AFTER_S", 300, 30, 7 * 86400, problems),
        sim_days=_int(environ, "SIM_DAYS", 90, 1, 3 * 366, problems),
        sim_speed=_float(environ, "SIM_SPEED", 1.0, 0.01, 100000.0, problems),
    )
    parallel = environ.get("ETL_PARALLEL", "")
    if parallel not in ("", "0", "1"):
        problems.append(f"ETL_PARALLEL: expected 0 or 1, got {parallel!r}")
    values["etl_parallel"] = parallel == "1"
    security = environ.get("ALERT_SMTP_SECURITY") or None
    if security not in (None, "none", "starttls", "ssl"):
        problems.append(f"ALERT_SMTP_SECURITY: expected none, starttls or ssl, got {security!r}")
    alerts = dict(
        alert_base_url=environ.get("ALERT_BASE_URL") or None,
        alert_smtp_host=environ.get("ALERT_SMTP_HOST") or None,
        alert_smtp_port=_int(environ, "ALERT_SMTP_PORT", 0, 0, 65535, problems) or None,
        alert_smtp_user=environ.get("ALERT_SMTP_USER") or None,
        alert_smtp_password=environ.get("ALERT_SMTP_PASSWORD") or None,
        alert_smtp_from=environ.get("ALERT_SMTP_FROM") or None,
        alert_smtp_security=security,
        alert_send_timeout_s=_int(environ, "ALERT_SEND_TIMEOUT_S", 0, 0, 3600, problems) or None,
        alert_deadline_s=_int(environ, "ALERT_DEADLINE_S", 0, 0, 30 * 86400, problems) or None,
    )
    if problems:
        raise SettingsError("Invalid configuration:\n  " + "\n  ".join(problems))
    warehouse = Path(environ.get("WAREHOUSE_PATH") or data_dir / "warehouse.duckdb")
    return Settings(
        source_urls=urls, data_dir=data_dir, warehouse_path=warehouse, port=port,
        host=environ.get("HOST") or "127.0.0.1", embedded=embedded,
        # real systems are only read: write there only when asked with SIMULATE=1
        simulate=simulate == "1" or (embedded and simulate != "0"),
        sim_scale=scale, secret_key=environ.get("SECRET_KEY") or None,
        cache_dir=Path(environ["CACHE_DIR"]) if environ.get("CACHE_DIR") else None,
        **values, **alerts,
    )
