"""Login, logout, the deny-by-default request guard, CSRF, the user's scope and the audit log.

`init_auth(server, settings)` is called once by the web app factory. Every request except
/login and /healthz needs a live session; pages redirect to /login, Dash callbacks, exports and
APIs answer 401 JSON. Unsafe methods need the session's CSRF token (form field `csrf_token` or
header `X-CSRFToken`, which dashboards/assets/csrf.js adds to Dash's POSTs). See docs/security.md.
"""
from __future__ import annotations

import hmac
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import wraps
from html import escape
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from flask import (Flask, Response, current_app, g, has_request_context, jsonify, redirect,
                   request, session, stream_with_context)
from flask.sessions import SecureCookieSessionInterface

from etl.settings import Settings
from kpis.appdb import AppDb, User, secret_key
from kpis.scope import EMPTY_SCOPE, Scope, can, scope_for
from kpis.serving import SnapshotReader, SnapshotUnavailable

EXTENSION = "kpi_auth"
SESSION_COOKIE = "kpi_session"
CSRF_COOKIE = "kpi_csrf"              # readable by csrf.js; the server compares with the session
CSRF_HEADER = "X-CSRFToken"
IDLE_LIFETIME = timedelta(hours=8)    # a permanent session ends after 8 h without a request
PUBLIC_ENDPOINTS = frozenset({"auth_login", "auth_healthz"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Requests that are never pages: they get 401/403 JSON, never a redirect to an HTML form.
API_MARKERS = ("/_dash-", "/api/", "/export", "/admin/audit.csv")

F = TypeVar("F", bound=Callable[..., Any])


class _SessionInterface(SecureCookieSessionInterface):
    """Signed-cookie sessions whose cookie is Secure exactly when the request came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config.get("SESSION_COOKIE_SECURE")) or (
            has_request_context() and request.is_secure)


SESSION_MEMO_S = 5.0        # a positive session lookup is reused this long in one process ...
SESSION_MEMO_MAX = 10_000   # ... unless the app database changed meanwhile (logout, disable)


class _SessionMemo:
    """Per process: session id -> its user, so a request costs no app-database query.

    A lookup through SQLAlchemy cost ~1 ms of CPU, on every request. An entry is reused only
    while SQLite's `PRAGMA data_version` of the app database is unchanged: it changes with every
    commit of any other connection, in this process or another web worker or the users CLI, so
    a logout, a disabled user or a new login is seen at the next request. Commits unrelated to
    sessions (audit rows) only cost a fresh lookup. The absolute session age is checked by the
    lookup, so an entry also ends SESSION_MEMO_S after it was checked: a session outlives its
    24 h limit by at most that. Only positive answers are kept.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._pid = 0
        self._users: dict[str, tuple[User, int, float]] = {}
        self.clock: Callable[[], float] = time.monotonic     # tests move it

    def _data_version(self) -> int:
        with self._lock:
            if self._con is None or self._pid != os.getpid():
                # opened in the process that asks: an SQLite handle must not cross a fork
                # (gunicorn --preload builds the app in the master)
                self._con = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
                self._pid = os.getpid()
                self._users.clear()
            return int(self._con.execute("PRAGMA data_version").fetchone()[0])

    def user(self, sid: Any, lookup: Callable[[Any], User | None]) -> User | None:
        if not sid or not isinstance(sid, str):
            return lookup(sid)
        seen = self._data_version()     # read before the lookup: a commit in between misses next time
        now = self.clock()
        hit = self._users.get(sid)
        if hit is not None and hit[1] == seen and now < hit[2]:
            return hit[0]
        user = lookup(sid)
        with self._lock:
            if user is None:
                self._users.pop(sid, None)
                return None
            if len(self._users) >= SESSION_MEMO_MAX:
                self._users.clear()
            self._users[sid] = (user, seen, now + SESSION_MEMO_S)
        return user

    def forget(self, sid: Any) -> None:
        with self._lock:
            self._users.pop(sid, None)


@dataclass
class _AuthState:
    settings: Settings
    db: AppDb
    reader: SnapshotReader
    lock: threading.Lock = field(default_factory=threading.Lock)
    tree_version: int | None = None
    tree_rows: tuple[tuple[str, str], ...] = ()
    scopes: dict[tuple[int, str, str, str], Scope] = field(default_factory=dict)
    sessions: _SessionMemo | None = None

    def ancestor_rows(self) -> tuple[int | None, tuple[tuple[str, str], ...]]:
        """(version, (org_no, ancestor_no) pairs) of the current snapshot, read once per version."""
        version = self.reader.version()
        if version is None:
            return None, ()
        with self.lock:
            if version == self.tree_version:
                return version, self.tree_rows
        with self.reader.cursor(version) as (got, cur):
            rows = tuple((str(o), str(a)) for o, a in
                         cur.execute("SELECT org_no, ancestor_no FROM dim_org_ancestor").fetchall())
        with self.lock:
            self.tree_version, self.tree_rows = got, rows
            self.scopes.clear()
        return got, rows

    def scope(self, user: User) -> Scope:
        try:
            version, rows = self.ancestor_rows()
        except SnapshotUnavailable:
            version, rows = None, ()
        if version is None:
            return Scope(user=user.name, role=user.role, org_nos=frozenset())
        key = (version, user.name, user.role, user.org_no)
        with self.lock:
            hit = self.scopes.get(key)
        if hit is None:
            hit = scope_for(user.name, user.role, user.org_no, rows)
            with self.lock:
                self.scopes[key] = hit
        return hit


def init_auth(server: Flask, settings: Settings, reader: SnapshotReader | None = None,
              db: AppDb | None = None) -> None:
    """Install sessions, /login, /logout, /healthz, the admin audit pages and the guard."""
    server.secret_key = secret_key(settings)
    server.session_interface = _SessionInterface()
    server.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",   # links from alert e-mails still arrive logged in
        PERMANENT_SESSION_LIFETIME=IDLE_LIFETIME,
        SESSION_REFRESH_EACH_REQUEST=True,
    )
    db = db or AppDb(settings.app_db_path, settings.timezone)
    server.extensions[EXTENSION] = _AuthState(
        settings=settings, db=db, reader=reader or SnapshotReader(settings.serving_dir),
        sessions=_SessionMemo(str(db.path)))
    server.add_url_rule("/login", "auth_login", _login, methods=["GET", "POST"])
    server.add_url_rule("/logout", "auth_logout", _logout, methods=["POST"])
    server.add_url_rule("/healthz", "auth_healthz", _healthz, methods=["GET"])
    server.add_url_rule("/admin/audit", "auth_audit", _audit_page, methods=["GET"])
    server.add_url_rule("/admin/audit.csv", "auth_audit_csv", _audit_csv, methods=["GET"])
    server.before_request(_guard)
    server.after_request(_after)


def _state() -> _AuthState:
    state = current_app.extensions.get(EXTENSION)
    if state is None:
        raise RuntimeError("init_auth(server, settings) was not called on this Flask app")
    return state


def app_db() -> AppDb:
    """The app database of the running web app (for audit and user writes of other parts)."""
    return _state().db


# the guard -------------------------------------------------------------------------------

def _is_api(path: str) -> bool:
    return any(marker in path for marker in API_MARKERS) or path.endswith((".csv", ".json"))


def _deny(status: int, message: str) -> Response:
    if status == 401 and request.method in ("GET", "HEAD") and not _is_api(request.path) \
            and request.accept_mimetypes.accept_html:
        target = request.full_path if request.query_string else request.path
        return redirect("/login?next=" + _quote(target))
    resp = jsonify(error=message)
    resp.status_code = status
    return resp


def _quote(text: str) -> str:
    return quote(text, safe="/")


def _session_user() -> User | None:
    if "kpi_user" not in g:
        state = _state()
        sid = session.get("sid")
        g.kpi_user = (state.db.session_user(sid) if state.sessions is None
                      else state.sessions.user(sid, state.db.session_user))
    return g.kpi_user


def _guard() -> Response | None:
    """Deny by default: only /login and /healthz are open; unsafe methods need the CSRF token."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if _session_user() is None:
        # Drop only a stale session id: the CSRF token of a login form open in this browser
        # must survive the browser's own background requests (favicon) that hit the guard.
        session.pop("sid", None)
        return _deny(401, "login required / 请先登录")
    if request.method in UNSAFE_METHODS and not _csrf_ok():
        return _deny(403, "missing or wrong CSRF token / 请求校验失败，请刷新页面")
    return None


def _csrf_ok() -> bool:
    expected = session.get("csrf")
    if not expected:
        return False
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        return False   # a cross-site POST, whatever token it carries
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and not request.is_json:
        sent = request.form.get("csrf_token")
    return bool(sent) and hmac.compare_digest(str(sent), str(expected))


def _after(resp: Response) -> Response:
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("X-Frame-Options", "DENY")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    token = session.get("csrf") if session.get("sid") else None
    if token and request.cookies.get(CSRF_COOKIE) != token:
        resp.set_cookie(CSRF_COOKIE, token, httponly=False, samesite="Strict",
                        secure=request.is_secure, path="/")
    elif not token and request.cookies.get(CSRF_COOKIE):
        resp.delete_cookie(CSRF_COOKIE, path="/")
    return resp


def csrf_token() -> str:
    """The session's CSRF token (made on first use), for hidden form fields."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


# scope, roles, audit ---------------------------------------------------------------------

def current_scope() -> Scope:
    """The signed-in user's scope over the current snapshot's org tree; EMPTY_SCOPE otherwise."""
    if not has_request_context():
        return EMPTY_SCOPE
    if "kpi_scope" in g:
        return g.kpi_scope
    user = _session_user()
    scope = EMPTY_SCOPE if user is None else _state().scope(user)
    g.kpi_scope = scope
    return scope


def require(action: str) -> Callable[[F], F]:
    """Decorator for Flask views: 401 without a session, 403 when the role may not `action`."""
    can(EMPTY_SCOPE, action)   # an unknown action fails at import time, not at the first request

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            scope = current_scope()
            if scope.user is None:
                return _deny(401, "login required / 请先登录")
            if not can(scope, action):
                return _deny(403, f"role {scope.role} may not {action} / 无此权限")
            return view(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate


def audit_export(scope: Scope, what: str, filters: Mapping[str, Any], row_count: int | None) -> None:
    """Record who exported what with which filters and how many rows."""
    _state().db.audit(scope.user, "export",
                      {"what": what, "filters": dict(filters), "ip": _client_ip()}, row_count)


def _client_ip() -> str:
    if not has_request_context():
        return "-"
    return request.remote_addr or "-"


# routes ----------------------------------------------------------------------------------

def _healthz() -> Response:
    return jsonify(status="ok")


def _safe_next(target: str | None) -> str:
    """Only a local path: never another host (open redirect) nor a scheme-relative //host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


def _login() -> Response | tuple[str, int] | str:
    state = _state()
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if _session_user() is not None:
            return redirect(next_url)
        return _login_page(next_url, None), 200
    if not _csrf_ok():
        return _login_page(next_url, "页面已过期，请重试 / The form expired, please try again"), 400
    name = (request.form.get("username") or "").strip()[:64]
    password = request.form.get("password") or ""
    ip = _client_ip()
    keys = [f"user:{name.lower()}", f"ip:{ip}"]
    now = time.time()
    wait = state.db.throttle_wait(keys, now)
    if wait > 0:
        state.db.audit(name or None, "login_fail", {"reason": "throttled", "ip": ip})
        body = _login_page(next_url, f"尝试次数过多，请 {wait} 秒后再试 / "
                                     f"Too many attempts, try again in {wait} s")
        return Response(body, status=429, headers={"Retry-After": str(wait)}, mimetype="text/html")
    user = state.db.verify(name, password) if name and password else None
    if user is None:
        state.db.record_failure(keys, now)
        state.db.audit(name or None, "login_fail", {"reason": "bad credentials", "ip": ip})
        return _login_page(next_url, "用户名或密码错误 / Wrong user name or password"), 401
    state.db.clear_failures(keys[0])
    session.clear()
    session.permanent = True
    session["sid"] = state.db.start_session(user.name)
    session["csrf"] = secrets.token_urlsafe(32)
    g.kpi_user = user
    state.db.audit(user.name, "login_ok", {"ip": ip, "role": user.role, "org_no": user.org_no})
    return redirect(next_url)


def _logout() -> Response:
    state = _state()
    user = _session_user()
    state.db.end_session(session.get("sid"))
    if state.sessions is not None:
        state.sessions.forget(session.get("sid"))
    if user is not None:
        state.db.audit(user.name, "logout", {"ip": _client_ip()})
    session.clear()
    return redirect("/login")


_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body{{font-family:"Noto Sans CJK SC","Microsoft YaHei",sans-serif;background:#f4f6f8;margin:0}}
main{{max-width:{width};margin:8vh auto;background:#fff;padding:2em;border-radius:8px;
box-shadow:0 1px 4px rgba(0,0,0,.15)}}
label{{display:block;margin:1em 0 .3em}} input[type=text],input[type=password]{{width:100%;
padding:.6em;box-sizing:border-box}} button{{margin-top:1.5em;padding:.6em 2em}}
.err{{color:#b00020}} table{{border-collapse:collapse;width:100%;font-size:.9em}}
td,th{{border-bottom:1px solid #ddd;padding:.3em;text-align:left;vertical-align:top}}
</style></head><body><main>{body}</main></body></html>"""


def _login_page(next_url: str, error: str | None) -> str:
    err = f'<p class="err" role="alert">{escape(error)}</p>' if error else ""
    body = f"""<h1>KPI 监控 登录 <small>/ Sign in</small></h1>{err}
<form method="post" action="/login" autocomplete="on">
<input type="hidden" name="csrf_token" value="{escape(csrf_token())}">
<input type="hidden" name="next" value="{escape(next_url)}">
<label for="username">用户名 / User name</label>
<input type="text" id="username" name="username" required autofocus autocomplete="username">
<label for="password">密码 / Password</label>
<input type="password" id="password" name="password" required autocomplete="current-password">
<button type="submit">登录 / Sign in</button></form>"""
    return _PAGE.format(title="登录 / Sign in", width="24em", body=body)


AUDIT_COLUMNS = ("id", "at", "user", "event", "detail", "row_count")


def _audit_filters() -> dict[str, str | None]:
    return {k: (request.args.get(k) or None) for k in ("user", "event", "since", "until")}


@require("admin")
def _audit_page() -> str:
    filters = _audit_filters()
    rows = _state().db.audit_rows(**filters, limit=500)
    head = "".join(f"<th>{c}</th>" for c in AUDIT_COLUMNS)
    body_rows = "".join(
        "<tr>" + "".join(f"<td>{escape('' if r[c] is None else str(r[c]))}</td>"
                         for c in AUDIT_COLUMNS) + "</tr>" for r in rows)
    form = "".join(
        f'<label>{label} <input type="text" name="{k}" value="{escape(filters[k] or "")}"></label>'
        for k, label in (("user", "用户 / user"), ("event", "事件 / event"),
                         ("since", "起 / since"), ("until", "止 / until")))
    query = urlencode({k: v for k, v in filters.items() if v})
    body = (f"<h1>审计日志 <small>/ Audit log</small></h1><form method=get>{form}"
            f"<button type=submit>筛选 / Filter</button></form>"
            f'<p><a href="/admin/audit.csv?{escape(query)}">导出 CSV / Export CSV</a> · '
            f"最近 {len(rows)} 条 / latest {len(rows)} rows</p>"
            f"<table><tr>{head}</tr>{body_rows}</table>")
    return _PAGE.format(title="审计日志 / Audit log", width="70em", body=body)


@require("admin")
def _audit_csv() -> Response:
    filters = _audit_filters()
    state = _state()
    rows = state.db.audit_rows(**filters, limit=None)
    audit_export(current_scope(), "audit_log", filters, len(rows))
    batches = [[tuple(r[c] for c in AUDIT_COLUMNS) for r in rows]]
    resp = Response(stream_with_context(_csv(AUDIT_COLUMNS, batches)), mimetype="text/csv")
    resp.headers["Content-Disposition"] = 'attachment; filename="audit_log.csv"'
    return resp


def _csv(header: Iterable[str], batches: Iterable[Iterable[Iterable[object]]]) -> Iterator[bytes]:
    from kpis.export import csv_chunks
    return csv_chunks(list(header), ([list(row) for row in batch] for batch in batches))
