"""ETL against the simulator's sources (scale small): equality with sources, passes, kills."""
from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from etl.pipeline import run_pass
from etl.settings import SOURCE_NAMES, load_settings
from etl.warehouse import Warehouse
from tests.etl.compare import assert_equal_to_sources, warehouse_checksums

simulator = pytest.importorskip("simulator")
live = pytest.importorskip("simulator.live")
faults = pytest.importorskip("simulator.faults")
REPO = Path(__file__).resolve().parents[2]


def _urls(root: Path) -> dict[str, str]:
    return {s: f"sqlite:///{root / f'source_{s}.db'}" for s in SOURCE_NAMES}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sim")
    simulator.build(_urls(root), scale="small", seed=7, days=2, side=root / "side")
    return root


def _env(built: Path, tmp_path: Path) -> dict[str, str]:
    """A private copy of the built sources (and the simulator's state) for one test."""
    env = {"DATA_DIR": str(tmp_path / "data"), "ETL_SAFETY_LAG_S": "0"}
    for s in SOURCE_NAMES:
        shutil.copy(built / f"source_{s}.db", tmp_path / f"source_{s}.db")
        env[f"SOURCE_{s.upper()}_URL"] = f"sqlite:///{tmp_path / f'source_{s}.db'}"
    shutil.copytree(built / "side", tmp_path / "side")
    return env


def _step(tmp_path: Path, seconds: int) -> int:
    """Advance the simulator's live clock deterministically; rows written."""
    return sum(live.step(_urls(tmp_path), seconds, side=tmp_path / "side").values())


def _touch(env: dict[str, str], step: int) -> None:
    """A deterministic change set: updates, a soft delete and re-stamped rows in several tables."""
    ts = f"2099-01-01 00:{step:02d}:00"       # ahead of any clock: the source clock follows it
    for table, sql in [
        ("cs_work_order", "UPDATE cs_work_order SET status_code = '07', updated_at = ? WHERE rowid % 7 = ?"),
        ("mis_customer", "UPDATE mis_customer SET is_deleted = 1, updated_at = ? WHERE rowid % 500 = ?"),
        ("meter_collection_daily", "UPDATE meter_collection_daily SET try_count = try_count + 1, "
                                   "updated_at = ? WHERE rowid % 97 = ?"),
    ]:
        system = table.split("_")[0]
        con = sqlite3.connect(env[f"SOURCE_{system.upper()}_URL"].removeprefix("sqlite:///"))
        con.execute(sql, [ts, step])
        con.commit()
        con.close()


def test_full_load_then_incremental_passes_equal_the_sources(built, tmp_path):
    env = _env(built, tmp_path)
    settings = load_settings(env)
    with Warehouse(settings.warehouse_path, threads=2) as wh:
        assert run_pass(settings, wh).ok
        assert_equal_to_sources(wh.cursor(), env)
        for step in range(1, 4):
            written = _step(tmp_path, 900)          # 15 simulated minutes of live mode
            r = run_pass(settings, wh)
            assert r.ok
            assert sum(t.rows_merged for s in r for t in s.tables) >= written > 0
            assert_equal_to_sources(wh.cursor(), env)
        _touch(env, 1)                              # corrections and soft deletes as well
        assert run_pass(settings, wh).ok
        assert_equal_to_sources(wh.cursor(), env)


def test_sqlalchemy_path_loads_the_same_rows_as_the_scanner(built, tmp_path):
    env = _env(built, tmp_path)
    settings = load_settings(env)
    with Warehouse(settings.warehouse_path, threads=2) as wh:
        assert run_pass(settings, wh, force_kind="sqlalchemy").ok
        assert_equal_to_sources(wh.cursor(), env)


def test_a_down_source_fails_alone_and_catches_up(built, tmp_path):
    env = _env(built, tmp_path)
    settings = load_settings(env)
    with Warehouse(settings.warehouse_path, threads=2) as wh, \
            faults.source_down(_urls(tmp_path), "cs", tmp_path / "side"):
        _step(tmp_path, 600)                        # the others keep moving while cs is down
        r = run_pass(settings, wh)
        assert not r.ok
        assert [s.source for s in r if not s.ok] == ["cs"]
        cur = wh.cursor()
        fresh = dict(cur.execute("SELECT source, last_status FROM etl_freshness").fetchall())
        assert fresh == {"mis": "ok", "cs": "failed", "dist": "ok", "meter": "ok"}
        err = cur.execute("SELECT error FROM etl_run WHERE source = 'cs' AND table_name = '*'").fetchone()[0]
        assert "source `cs`" in err and "does not exist" in err
        assert cur.execute("SELECT count(*) FROM cs_work_order").fetchone()[0] == 0
        assert cur.execute("SELECT count(*) FROM mis_customer").fetchone()[0] > 0
    with Warehouse(settings.warehouse_path, threads=2) as wh:
        _step(tmp_path, 600)
        assert run_pass(settings, wh).ok
        assert_equal_to_sources(wh.cursor(), env)


def test_kill_at_random_points_converges_to_an_uninterrupted_run(built, tmp_path):
    env = _env(built, tmp_path)
    penv = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    rng = random.Random(20261015)
    cmd = [sys.executable, "-m", "etl", "run", "--once"]
    kills, finished = 0, []
    # Kill points are drawn within the time a pass takes: once a pass completes, later passes
    # only load a delta and end sooner, so the upper bound follows the passes seen to finish.
    for i in range(40):
        if kills >= 10:
            break
        if i in (4, 8) or finished:
            _step(tmp_path, 600)    # the sources move between kills: there is always work
        upper = min(2.5, 0.9 * min(finished)) if finished else 2.5
        started = time.monotonic()
        proc = subprocess.Popen(cmd, env=penv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(min(0.3, upper / 2), upper))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        else:
            finished.append(time.monotonic() - started)
        proc.wait()
    assert kills >= 10, f"only {kills} kills; passes finished in {finished}"
    done = subprocess.run(cmd, env=penv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    con = duckdb.connect(str(Path(env["DATA_DIR"]) / "warehouse.duckdb"), read_only=True)
    killed = assert_equal_to_sources(con, env)
    con.close()
    clean_env = {**env, "DATA_DIR": str(tmp_path / "clean")}
    settings = load_settings(clean_env)
    with Warehouse(settings.warehouse_path, threads=2) as wh:
        assert run_pass(settings, wh).ok
        assert warehouse_checksums(wh.cursor()) == killed


def test_every_simulated_bad_row_ends_in_reject_or_dq_with_its_reason(tmp_path):
    urls = _urls(tmp_path)
    simulator.build(urls, scale="small", seed=11, days=2, bad_rows=0.05, side=tmp_path / "side")
    env = {"DATA_DIR": str(tmp_path / "data"), "ETL_SAFETY_LAG_S": "0",
           **{f"SOURCE_{s.upper()}_URL": u for s, u in urls.items()}}
    settings = load_settings(env)
    expected = {"unknown_code": ("etl_dq", "unknown_code:"), "unknown_org": ("etl_dq", "unknown_org:"),
                "end_before_start": ("etl_dq", "end_before_start:"), "negative_energy": ("etl_dq", "negative:"),
                "missing_required": ("etl_reject", "missing_required:")}
    with open(tmp_path / "side" / "simulator_badrows.csv", encoding="utf-8") as f:
        bad = list(csv.DictReader(f))
    assert {b["kind"] for b in bad} >= set(expected)
    with Warehouse(settings.warehouse_path, threads=2) as wh:
        run_pass(settings, wh)
        cur = wh.cursor()
        missing = []
        for b in bad:
            if b["kind"] == "soft_delete":
                continue
            where, prefix = expected[b["kind"]]
            hit = cur.execute(f"SELECT count(*) FROM {where} WHERE table_name = ? AND row_key = ? "
                              f"AND {'reason' if where == 'etl_reject' else 'rule'} LIKE ? || '%'",
                              [b["table_name"], b["key"], prefix]).fetchone()[0]
            if not hit:
                missing.append(b)
        assert not missing, f"{len(missing)} of {len(bad)} bad rows without evidence, e.g. {missing[:3]}"
