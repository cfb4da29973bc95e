"""Settings are documented, validated once, and report every bad variable together."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from etl.settings import Settings, SettingsError, load_settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
SETTINGS_SRC = (Path(__file__).resolve().parent.parent / "etl" / "settings.py").read_text(encoding="utf-8")


def test_every_environment_variable_has_a_readme_row() -> None:
    variables = set(re.findall(r'"((?:SOURCE|ALERT|ETL|SIM|CACHE|DATA|STALE|REFRESH|SECRET|PORT|HOST|WAREHOUSE|SIMULATE)[A-Z_]*)"',
                               SETTINGS_SRC))
    variables |= {f"SOURCE_{n}_URL" for n in ("MIS", "CS", "DIST", "METER")}
    missing = [v for v in sorted(variables) if f"`{v}`" not in README]
    assert not missing, f"README lacks a configuration row for {missing}"


def test_every_settings_field_is_read_from_the_environment() -> None:
    unset = {"source_urls", "embedded", "timezone"}
    fields = [f.name for f in dataclasses.fields(Settings) if f.name not in unset]
    for name in fields:
        assert name in SETTINGS_SRC.split("def load_settings", 1)[1], f"{name} is never loaded"


def test_embedded_default_simulates_and_real_sources_are_only_read() -> None:
    assert load_settings({}).simulate is True
    real = load_settings({"SOURCE_MIS_URL": "postgresql+psycopg://u@db/mis"})
    assert real.simulate is False and real.embedded is False
    assert load_settings({"SOURCE_MIS_URL": "postgresql+psycopg://u@db/mis", "SIMULATE": "1"}).simulate


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"PORT": "eighty", "SIMULATE": "yes", "SOURCE_CS_URL": "not a url",
                       "ETL_INTERVAL_S": "0", "ALERT_SMTP_SECURITY": "tls"})
    message = str(info.value)
    for var in ("PORT", "SIMULATE", "SOURCE_CS_URL", "ETL_INTERVAL_S", "ALERT_SMTP_SECURITY"):
        assert var in message


def test_simulator_and_product_agree_on_default_source_urls(tmp_path: Path) -> None:
    from simulator.config import source_urls
    env = {"DATA_DIR": str(tmp_path)}
    assert source_urls(env) == dict(load_settings(env).source_urls)
