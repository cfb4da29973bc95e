"""The core suite against PostgreSQL sources (simulator into a throwaway database)."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from etl.pipeline import run_pass
from etl.settings import SOURCE_NAMES, load_settings
from etl.sources import local_now
from etl.warehouse import Warehouse
from tests.etl.compare import assert_equal_to_sources

simulator = pytest.importorskip("simulator")
ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="module")
def pg_url():
    engine = sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool,
                              connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as con:
            con.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.skip(f"no PostgreSQL answers at 127.0.0.1:5432 (trust auth, user postgres): {exc.orig}")
    name = f"etl_test_{uuid.uuid4().hex[:10]}"
    with engine.connect() as con:
        con.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with engine.connect() as con:
        con.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def test_postgres_sources_full_then_incremental_and_down(pg_url, tmp_path):
    urls = {s: pg_url for s in SOURCE_NAMES}
    simulator.build(urls, scale="small", seed=7, days=2, side=tmp_path / "side")
    env = {"DATA_DIR": str(tmp_path / "data"), "ETL_SAFETY_LAG_S": "0",
           **{f"SOURCE_{s.upper()}_URL": pg_url for s in SOURCE_NAMES}}
    settings = load_settings(env)
    with Warehouse(settings.warehouse_path, threads=2) as wh:
        r = run_pass(settings, wh)
        assert r.ok, [(s.source, s.error) for s in r]
        assert_equal_to_sources(wh.cursor(), env)
        engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
        stamp = local_now() - timedelta(seconds=2)
        with engine.begin() as con:
            con.execute(sa.text("UPDATE cs_work_order SET status_code = '07', updated_at = :t "
                                "WHERE wo_no IN (SELECT wo_no FROM cs_work_order ORDER BY wo_no LIMIT 5)"),
                        {"t": stamp})
            con.execute(sa.text("UPDATE mis_customer SET is_deleted = 1, updated_at = :t "
                                "WHERE cons_no IN (SELECT cons_no FROM mis_customer ORDER BY cons_no LIMIT 3)"),
                        {"t": stamp})
        engine.dispose()
        r = run_pass(settings, wh)
        assert r.ok
        merged = {t.table_name: t.rows_merged for s in r for t in s.tables}
        assert merged["cs_work_order"] == 5 and merged["mis_customer"] == 3
        assert_equal_to_sources(wh.cursor(), env)
        down = load_settings({**env, "SOURCE_DIST_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none"})
        r = run_pass(down, wh)
        assert [s.source for s in r if not s.ok] == ["dist"]
        assert "source `dist`" in r.sources["dist"].error
