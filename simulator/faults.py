"""A source that goes down for a while: SQLite file moved away, or PostgreSQL refusing connections."""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from sqlalchemy.engine import make_url

DOWN_MARK = "simulator_down_{}"


def is_down(side: Path, system: str) -> bool:
    """The live simulator stops writing to a source while its down marker exists."""
    return (side / DOWN_MARK.format(system)).exists()


@contextlib.contextmanager
def source_down(urls: Mapping[str, str], system: str, side: Path) -> Iterator[None]:
    """Make one source unreachable for the duration of the block, then restore it unchanged."""
    if system not in urls:
        raise ValueError(f"--source: expected one of {', '.join(urls)}, got {system!r}")
    url = make_url(urls[system])
    mark = side / DOWN_MARK.format(system)
    mark.touch()
    time.sleep(0.2)                  # let a live run see the marker and close its connection
    try:
        if url.get_backend_name() == "sqlite":
            with _sqlite_moved(Path(url.database)):
                yield
        else:
            with _pg_closed(url):
                yield
    finally:
        mark.unlink(missing_ok=True)


@contextlib.contextmanager
def _sqlite_moved(path: Path) -> Iterator[None]:
    """Move the database (and its WAL files) aside: a read-only open then fails."""
    import sqlite3
    con = sqlite3.connect(path, timeout=30)
    con.execute("BEGIN IMMEDIATE")       # wait for a writer in progress to finish
    con.execute("ROLLBACK")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    parts = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
    for p in parts:
        os.replace(p, f"{p}.down")
    try:
        yield
    finally:
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if p.exists():           # created empty by a read-write open while down: discard it
                p.unlink()
        for p in parts:
            os.replace(f"{p}.down", p)


@contextlib.contextmanager
def _pg_closed(url) -> Iterator[None]:
    """ALLOW_CONNECTIONS false and terminate the backends; restore on exit."""
    import psycopg
    from psycopg import sql
    db = url.database
    admin = psycopg.connect(host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username,
                            password=url.password, dbname="postgres", autocommit=True)
    try:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(db)))
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                      "AND pid <> pg_backend_pid()", (db,))
        yield
    finally:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(db)))
        admin.close()


def outage(urls: Mapping[str, str], system: str, seconds: float, side: Path) -> None:
    """Keep one source down for `seconds` wall seconds."""
    with source_down(urls, system, side):
        time.sleep(seconds)
