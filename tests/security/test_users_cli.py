"""`python app.py users ...`, the first admin, the shared secret key, the admin audit pages."""
from __future__ import annotations

import csv
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from etl.settings import Settings, load_settings
from kpis.appdb import AppDb, ensure_first_admin, secret_key, users_cli

from .conftest import PASSWORD, login

ROOT = Path(__file__).resolve().parents[2]


def _cli(settings: Settings, *argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = users_cli(list(argv), settings, stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


def test_add_list_disable_through_the_cli(settings: Settings):
    code, _ = _cli(settings, "add", "wang", "--role", "analyst", "--org", "X1",
                   "--password-stdin", stdin="a long enough secret\n")
    assert code == 0
    code, listing = _cli(settings, "list")
    assert code == 0
    assert listing.splitlines()[1].split()[:4] == ["wang", "analyst", "X1", "active"]
    db = AppDb(settings.app_db_path)
    assert db.verify("wang", "a long enough secret").role == "analyst"
    assert _cli(settings, "disable", "wang")[0] == 0
    assert _cli(settings, "list")[1].splitlines()[1].split()[3] == "disabled"
    assert db.verify("wang", "a long enough secret") is None
    assert [r["event"] for r in reversed(db.audit_rows())] == ["user_add", "user_disable"]


def test_cli_refuses_short_passwords_duplicates_and_unknown_users(settings: Settings, capsys):
    assert _cli(settings, "add", "li", "--role", "duty", "--org", "S1", "--password-stdin",
                stdin="short\n")[0] == 1
    assert "at least" in capsys.readouterr().err
    _cli(settings, "add", "li", "--role", "duty", "--org", "S1", "--password-stdin",
         stdin="a long enough secret\n")
    assert _cli(settings, "add", "li", "--role", "duty", "--org", "S1", "--password-stdin",
                stdin="another long secret\n")[0] == 1
    assert "exists already" in capsys.readouterr().err
    assert _cli(settings, "disable", "nobody")[0] == 1
    assert "nobody" in capsys.readouterr().err


def test_cli_rejects_an_unknown_role(settings: Settings):
    with pytest.raises(SystemExit):
        _cli(settings, "add", "x", "--role", "root", "--org", "X1", "--password-stdin")


def test_password_never_in_argv_and_read_from_stdin_in_a_real_process(tmp_path: Path):
    if not (ROOT / "app.py").exists():
        pytest.skip("app.py not written yet")
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data")}
    add = subprocess.run([sys.executable, "app.py", "users", "add", "zhao", "--role", "manager",
                          "--org", "X2", "--password-stdin"], input="stdin secret 123\n",
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert add.returncode == 0, add.stderr
    listing = subprocess.run([sys.executable, "app.py", "users", "list"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert "zhao" in listing.stdout and "stdin secret" not in listing.stdout
    db = AppDb(tmp_path / "data" / "app.db")
    assert db.verify("zhao", "stdin secret 123") is not None
    assert "stdin secret" not in (tmp_path / "data" / "app.db").read_bytes().decode("latin-1")


def test_first_start_creates_one_admin_on_the_root_org_and_returns_its_password_once(
        settings: Settings, snapshot: Path):
    password = ensure_first_admin(settings)
    assert password and len(password) >= 16
    db = AppDb(settings.app_db_path)
    [admin] = db.list_users()
    assert (admin.name, admin.role, admin.org_no) == ("admin", "admin", "C0")
    assert db.verify("admin", password) is not None
    assert ensure_first_admin(settings) is None          # second start: nothing new


def test_no_first_admin_against_real_sources(tmp_path: Path):
    settings = load_settings({"DATA_DIR": str(tmp_path),
                              "SOURCE_MIS_URL": "sqlite:///" + str(tmp_path / "mis.db")})
    assert ensure_first_admin(settings) is None
    assert AppDb(settings.app_db_path).list_users() == []


def test_secret_key_is_made_once_private_and_shared(settings: Settings):
    first = secret_key(settings)
    path = settings.data_dir / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_key(settings) == first and len(first) >= 32
    explicit = load_settings({"DATA_DIR": str(settings.data_dir), "SECRET_KEY": "from-env-xyz"})
    assert secret_key(explicit) == "from-env-xyz"


def test_audit_log_page_and_csv_are_for_admins_only(app, appdb: AppDb):
    pytest.importorskip("kpis.export", reason="kpis/export.py (web helper) not written yet")
    manager = app.test_client()
    login(manager, "mgr1")
    assert manager.get("/admin/audit").status_code == 403
    assert manager.get("/admin/audit.csv").status_code == 403
    boss = app.test_client()
    login(boss, "boss")
    page = boss.get("/admin/audit?event=login_ok").get_data(as_text=True)
    assert "审计日志" in page and "mgr1" in page and "boss" in page
    resp = boss.get("/admin/audit.csv?user=mgr1")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(resp.get_data().decode("utf-8-sig"))))
    assert [(r["user"], r["event"]) for r in rows] == [("mgr1", "login_ok")]
    last = appdb.audit_rows(limit=1)[0]
    assert (last["user"], last["event"], last["row_count"]) == ("boss", "export", 1)


def test_audit_page_escapes_what_users_typed(app, appdb: AppDb):
    login(app.test_client(), "<script>alert(1)</script>", PASSWORD)
    boss = app.test_client()
    login(boss, "boss")
    page = boss.get("/admin/audit").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
