"""Layering: pages import no warehouse, DuckDB or SQLAlchemy; the web app starts no scheduler."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# dashboards may use kpis (and the settings object); never the ETL, DuckDB, SQLAlchemy or a scheduler
FORBIDDEN = ("etl", "duckdb", "sqlalchemy", "apscheduler", "kpis.worker", "kpis.publish", "simulator")
ALLOWED = ("etl.settings",)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def test_dashboards_import_no_storage_or_scheduler() -> None:
    bad = []
    for path in sorted((ROOT / "dashboards").rglob("*.py")):
        for name in _imports(path):
            if name in ALLOWED or name.startswith(tuple(a + "." for a in ALLOWED)):
                continue
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                bad.append(f"{path.relative_to(ROOT)}: {name}")
    assert bad == []


def test_building_the_web_app_imports_no_warehouse_worker_or_scheduler(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from etl.settings import load_settings\n"
        f"settings = load_settings({{'DATA_DIR': {str(tmp_path)!r}, 'SECRET_KEY': 'x' * 40, 'SIMULATE': '0'}})\n"
        "from app import server\n"
        "from dashboards._web import create_app\n"
        "app = create_app(settings)\n"
        "bad = [m for m in ('etl.warehouse', 'kpis.worker', 'apscheduler', 'etl.pipeline') if m in sys.modules]\n"
        "print('BAD', bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "BAD []" in done.stdout


def test_importing_app_has_no_side_effects(tmp_path: Path) -> None:
    code = "import os, app; print(sorted(os.listdir('.')))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
