"""The application database (data/app.db): users, login throttling, audit log, secret key.

SQLite in WAL mode through SQLAlchemy, shared by every web worker (and read by the worker
process). The alerts part adds its own tables (acks, silences, roster) to the same file through
`AppDb.engine`; this module creates only the tables below.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import secrets
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
import duckdb
from sqlalchemy import (Column, Engine, Float, Integer, MetaData, String, Table, Text, create_engine,
                        event, func, insert, select, text, update)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from etl.settings import Settings
from kpis.scope import ROLES, ROOT_ORG

log = logging.getLogger(__name__)

metadata = MetaData()

users = Table(
    "users", metadata,
    Column("name", String(64), primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("org_no", String(16), nullable=False),
    Column("disabled", Integer, nullable=False, default=0),
    Column("created_at", String(19), nullable=False),
)

audit_log = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", String(19), nullable=False, index=True),
    Column("user", String(64)),
    Column("event", String(32), nullable=False, index=True),
    Column("detail", Text, nullable=False, default="{}"),
    Column("row_count", Integer),
)

# One row per throttled key ("user:<name>" or "ip:<address>"), shared by all web workers.
login_throttle = Table(
    "login_throttle", metadata,
    Column("key", String(128), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("last_failure", Float, nullable=False),   # epoch seconds
    Column("locked_until", Float, nullable=False),   # epoch seconds
)

# Server-side record of each login, so that logout and disabling a user end the session even
# though Flask's signed cookie itself cannot be revoked.
sessions = Table(
    "sessions", metadata,
    Column("sid", String(64), primary_key=True),
    Column("user", String(64), nullable=False, index=True),
    Column("created_at", String(19), nullable=False),
)

SESSION_MAX_AGE_S = 24 * 3600   # absolute: a login lasts at most a day, however active
MIN_PASSWORD_LENGTH = 10
# Throttling: the first failures are free, then each further one doubles the wait, up to a cap;
# a quiet period forgets the count. Per IP more are free, since offices share one address.
FREE_FAILURES = {"user": 3, "ip": 20}
LOCK_BASE_S = 4
MAX_LOCK_S = 15 * 60
FORGET_AFTER_S = 30 * 60

_hasher = PasswordHasher()


class AppDbError(ValueError):
    """A user-management request that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    org_no: str
    disabled: bool
    created_at: str


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")   # several web workers write logins and audit rows
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class AppDb:
    """Users, throttling and audit rows in one SQLite file (WAL)."""

    def __init__(self, path: Path | str, timezone: str = "Asia/Shanghai") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tz = ZoneInfo(timezone)
        self.engine: Engine = create_engine(f"sqlite:///{self.path}")
        event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)
        try:
            os.chmod(self.path, 0o600)   # password hashes and the audit trail
        except OSError:
            pass

    def now_text(self) -> str:
        """Local wall time as 'YYYY-MM-DD HH:MM:SS', like every timestamp in this product."""
        return datetime.now(self.tz).strftime("%Y-%m-%d %H:%M:%S")

    # users ---------------------------------------------------------------------------------

    def add_user(self, name: str, role: str, org_no: str, password: str) -> User:
        """Create a user with an argon2 hash of `password`; the name must be new."""
        name = (name or "").strip()
        if not name or len(name) > 64 or any(c.isspace() for c in name):
            raise AppDbError(f"user name {name!r}: expected 1-64 characters without spaces")
        if role not in ROLES:
            raise AppDbError(f"role {role!r} for user {name!r}: expected one of {', '.join(ROLES)}")
        if not org_no or len(org_no) > 16:
            raise AppDbError(f"org {org_no!r} for user {name!r}: expected an org_no of 1-16 characters")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise AppDbError(f"password for user {name!r}: at least {MIN_PASSWORD_LENGTH} characters")
        with self.engine.begin() as con:
            if con.execute(select(users.c.name).where(users.c.name == name)).first():
                raise AppDbError(f"user {name!r} exists already (disable it, or choose another name)")
            created = self.now_text()
            con.execute(insert(users).values(name=name, password_hash=_hasher.hash(password),
                                             role=role, org_no=org_no, disabled=0,
                                             created_at=created))
        return User(name, role, org_no, False, created)

    def disable_user(self, name: str) -> None:
        """Disable a user: the next request of any open session of theirs is refused."""
        with self.engine.begin() as con:
            done = con.execute(update(users).where(users.c.name == name).values(disabled=1))
            con.execute(sessions.delete().where(sessions.c.user == name))
        if done.rowcount == 0:
            raise AppDbError(f"no user named {name!r}")

    def list_users(self) -> list[User]:
        """Every user, by name."""
        with self.engine.connect() as con:
            rows = con.execute(select(users).order_by(users.c.name)).mappings().all()
        return [_user(r) for r in rows]

    def get_user(self, name: str) -> User | None:
        """The user called `name`, disabled or not; None when unknown."""
        with self.engine.connect() as con:
            row = con.execute(select(users).where(users.c.name == name)).mappings().first()
        return _user(row) if row else None

    def count_users(self) -> int:
        with self.engine.connect() as con:
            return int(con.execute(select(func.count()).select_from(users)).scalar_one())

    def verify(self, name: str, password: str) -> User | None:
        """The enabled user whose password matches, else None (same cost for unknown users)."""
        with self.engine.connect() as con:
            row = con.execute(select(users).where(users.c.name == name)).mappings().first()
        if row is None:
            _burn_a_verify(password)   # an unknown name must not answer faster than a wrong password
            return None
        try:
            _hasher.verify(row["password_hash"], password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row["disabled"]:
            return None
        if _hasher.check_needs_rehash(row["password_hash"]):
            with self.engine.begin() as con:
                con.execute(update(users).where(users.c.name == name)
                            .values(password_hash=_hasher.hash(password)))
        return _user(row)

    # sessions ------------------------------------------------------------------------------

    def start_session(self, name: str) -> str:
        """Record a new login of `name`; returns the session id kept in the signed cookie."""
        sid = secrets.token_urlsafe(32)
        with self.engine.begin() as con:
            con.execute(sessions.delete().where(sessions.c.created_at < self._age_limit()))
            con.execute(insert(sessions).values(sid=sid, user=name, created_at=self.now_text()))
        return sid

    def session_user(self, sid: str | None) -> User | None:
        """The enabled user of a live session id, else None."""
        if not sid or not isinstance(sid, str):
            return None
        q = (select(users).join(sessions, sessions.c.user == users.c.name)
             .where(sessions.c.sid == sid, users.c.disabled == 0,
                    sessions.c.created_at >= self._age_limit()))
        with self.engine.connect() as con:
            row = con.execute(q).mappings().first()
        return _user(row) if row else None

    def _age_limit(self) -> str:
        oldest = datetime.now(self.tz) - timedelta(seconds=SESSION_MAX_AGE_S)
        return oldest.strftime("%Y-%m-%d %H:%M:%S")

    def end_session(self, sid: str | None) -> None:
        """Forget a session id (logout)."""
        if sid:
            with self.engine.begin() as con:
                con.execute(sessions.delete().where(sessions.c.sid == sid))

    # throttling ----------------------------------------------------------------------------

    def throttle_wait(self, keys: Sequence[str], now: float) -> int:
        """Seconds until a login for any of `keys` may be tried again (0 = now)."""
        with self.engine.connect() as con:
            rows = con.execute(select(login_throttle.c.locked_until)
                               .where(login_throttle.c.key.in_(list(keys)))).all()
        return max([0] + [math.ceil(r[0] - now) for r in rows])

    def record_failure(self, keys: Sequence[str], now: float) -> None:
        """Count a failed login against each key and lock it for a doubling time past the free ones."""
        t = float(now)
        with self.engine.begin() as con:
            for key in keys:
                old = con.execute(select(login_throttle).where(login_throttle.c.key == key)
                                  ).mappings().first()
                failures = 1
                if old is not None and t - old["last_failure"] < FORGET_AFTER_S:
                    failures = old["failures"] + 1
                free = FREE_FAILURES.get(key.split(":", 1)[0], 3)
                lock = 0 if failures < free else min(MAX_LOCK_S, LOCK_BASE_S * 2 ** (failures - free))
                stmt = sqlite_insert(login_throttle).values(
                    key=key, failures=failures, last_failure=t, locked_until=t + lock)
                con.execute(stmt.on_conflict_do_update(
                    index_elements=["key"],
                    set_={"failures": failures, "last_failure": t, "locked_until": t + lock}))

    def clear_failures(self, key: str) -> None:
        """Forget failures of one key (after a successful login)."""
        with self.engine.begin() as con:
            con.execute(login_throttle.delete().where(login_throttle.c.key == key))

    # audit ---------------------------------------------------------------------------------

    def audit(self, user: str | None, event: str, detail: Mapping[str, Any] | None = None,
              row_count: int | None = None) -> None:
        """Append one audit row (login_ok, login_fail, logout, export, user_add, ...)."""
        with self.engine.begin() as con:
            con.execute(insert(audit_log).values(
                at=self.now_text(), user=user, event=event,
                detail=json.dumps(dict(detail or {}), ensure_ascii=False, sort_keys=True,
                                  default=str),
                row_count=row_count))

    def audit_rows(self, *, user: str | None = None, event: str | None = None,
                   since: str | None = None, until: str | None = None,
                   limit: int | None = 1000) -> list[dict[str, Any]]:
        """Audit rows, newest first, filtered by user, event and 'YYYY-MM-DD HH:MM:SS' bounds."""
        q = select(audit_log).order_by(audit_log.c.id.desc())
        if user:
            q = q.where(audit_log.c.user == user)
        if event:
            q = q.where(audit_log.c.event == event)
        if since:
            q = q.where(audit_log.c.at >= since)
        if until:
            q = q.where(audit_log.c.at < until)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as con:
            return [dict(r) for r in con.execute(q).mappings().all()]


def _user(row: Mapping[str, Any]) -> User:
    return User(row["name"], row["role"], row["org_no"], bool(row["disabled"]), row["created_at"])


_dummy_hash: str | None = None


def _burn_a_verify(password: str) -> None:
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash(secrets.token_urlsafe(16))
    try:
        _hasher.verify(_dummy_hash, password)
    except VerificationError:
        pass


# secret key and first admin ----------------------------------------------------------------

def secret_key(settings: Settings) -> str:
    """SECRET_KEY if set, else a random key made once and kept in <data_dir>/secret_key (0600)."""
    if settings.secret_key:
        return settings.secret_key
    path = settings.data_dir / "secret_key"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: when two web workers start together, exactly one writes the key, both read it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
    for _ in range(50):
        key = path.read_text().strip()
        if key:
            return key
        time.sleep(0.02)   # the other worker is between create and write
    raise AppDbError(f"{path}: empty secret key file; delete it and restart, or set SECRET_KEY")


def find_root_org(settings: Settings) -> str | None:
    """The root unit: from the current snapshot's dim_org, else from the mis source's mis_org."""
    from kpis.serving import SnapshotReader, SnapshotUnavailable

    reader = SnapshotReader(settings.serving_dir)
    try:
        with reader.cursor() as (_version, cur):
            row = cur.execute("SELECT org_no FROM dim_org WHERE is_root ORDER BY org_no").fetchone()
            if row:
                return str(row[0])
    except (SnapshotUnavailable, duckdb.Error) as exc:
        log.info("root org not in a snapshot (%s); trying the mis source", exc)
    finally:
        reader.close()
    try:
        engine = create_engine(settings.source_url("mis"))
        try:
            with engine.connect() as con:
                row = con.execute(text(
                    "SELECT org_no FROM mis_org WHERE parent_org_no IS NULL AND is_deleted = 0 "
                    "ORDER BY org_no")).first()
        finally:
            engine.dispose()
        return str(row[0]) if row else None
    except SQLAlchemyError as exc:   # no source yet on a very first start: the caller uses ROOT_ORG
        log.info("root org not found in the mis source (%s)", type(exc).__name__)
        return None


def ensure_first_admin(settings: Settings, db: AppDb | None = None) -> str | None:
    """On the embedded default with no users: create `admin` (root org), return its password once."""
    if not settings.embedded:
        return None
    db = db or AppDb(settings.app_db_path, settings.timezone)
    if db.count_users():
        return None
    password = secrets.token_urlsafe(15)
    root = find_root_org(settings) or ROOT_ORG
    try:
        db.add_user("admin", "admin", root, password)
    except AppDbError:
        return None   # another web worker created it a moment ago
    db.audit(None, "user_add", {"name": "admin", "role": "admin", "org_no": root, "by": "first start"})
    return password


# users CLI ---------------------------------------------------------------------------------

def users_cli(argv: Sequence[str], settings: Settings, stdin: TextIO | None = None,
              stdout: TextIO | None = None) -> int:
    """`users add NAME --role R --org ORG --password-stdin | users disable NAME | users list`."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    parser = argparse.ArgumentParser(prog="app.py users", description="Manage dashboard users.")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a user; the password is read from stdin")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--org", required=True, help="org_no the user is bound to (sees it and below)")
    add.add_argument("--password-stdin", action="store_true", required=True,
                     help="read the password from the first line of stdin (never from argv)")
    dis = sub.add_parser("disable", help="disable a user; open sessions stop working")
    dis.add_argument("name")
    sub.add_parser("list", help="list users")
    args = parser.parse_args(list(argv))
    db = AppDb(settings.app_db_path, settings.timezone)
    try:
        if args.command == "add":
            password = stdin.readline().rstrip("\r\n")
            db.add_user(args.name, args.role, args.org, password)
            db.audit(None, "user_add", {"name": args.name, "role": args.role, "org_no": args.org,
                                        "by": "cli"})
            print(f"user {args.name} added ({args.role}, org {args.org})", file=stdout)
        elif args.command == "disable":
            db.disable_user(args.name)
            db.audit(None, "user_disable", {"name": args.name, "by": "cli"})
            print(f"user {args.name} disabled", file=stdout)
        else:
            print(_user_table(db.list_users()), file=stdout)
    except AppDbError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _user_table(rows: Iterable[User]) -> str:
    lines = [f"{'name':<20} {'role':<8} {'org_no':<16} {'status':<8} created_at"]
    for u in rows:
        status = "disabled" if u.disabled else "active"
        lines.append(f"{u.name:<20} {u.role:<8} {u.org_no:<16} {status:<8} {u.created_at}")
    return "\n".join(lines)
