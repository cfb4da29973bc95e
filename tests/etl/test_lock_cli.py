"""The writer lock and the command line, as real processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from etl.errors import WriterBusy
from etl.lock import acquire_writer_lock
from tests.etl.conftest import GRIDS, ORGS
from tests.etl.sources_kit import build_sources

REPO = Path(__file__).resolve().parents[2]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etl", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env, "PYTHONPATH": str(REPO)}, timeout=120)


def test_second_holder_is_told_who_holds_the_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from etl.lock import acquire_writer_lock;"
                               f"l = acquire_writer_lock({str(tmp_path)!r}); print('held', flush=True); time.sleep(30)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WriterBusy) as err:
            acquire_writer_lock(tmp_path)
        assert f"PID {holder.pid}" in str(err.value) and "python -m etl status" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    acquire_writer_lock(tmp_path).release()      # free again once the holder is gone


def test_cli_run_status_and_refusal_while_locked(tmp_path):
    env = build_sources(tmp_path, {"mis_org": ORGS, "mis_grid": GRIDS})
    done = _cli(env, "run", "--once")
    assert done.returncode == 0, done.stderr
    assert "run 1: ok" in done.stdout
    st = _cli(env, "status", "--format", "json")
    assert st.returncode == 0, st.stderr
    status = json.loads(st.stdout)
    assert {f["source"]: f["last_status"] for f in status["freshness"]} == {
        "mis": "ok", "cs": "ok", "dist": "ok", "meter": "ok"}
    assert {"source": "mis", "table_name": "mis_org"}.items() <= next(
        t for t in status["tables"] if t["table_name"] == "mis_org").items()
    assert next(t for t in status["tables"] if t["table_name"] == "mis_org")["row_count"] == 4
    with acquire_writer_lock(Path(env["DATA_DIR"])):
        refused = _cli(env, "run", "--once")
        assert refused.returncode == 3 and f"PID {os.getpid()}" in refused.stderr
        nosnap = _cli(env, "status")
        assert nosnap.returncode == 2 and "no snapshot" in nosnap.stderr


def test_cli_exit_code_is_nonzero_when_a_source_is_down(tmp_path):
    env = build_sources(tmp_path)
    Path(env["SOURCE_DIST_URL"].removeprefix("sqlite:///")).unlink()
    done = _cli(env, "run", "--once")
    assert done.returncode == 1
    assert "dist   failed" in done.stdout and "mis    ok" in done.stdout
