"""Web side of the snapshots: one read-only connection per version, a cursor per request.

Opening a DuckDB file per request costs about 60 ms against 23 ms on a kept connection
(ARCHITECTURE.md D2c), so each web process keeps one read-only connection per published
version and hands out cursors (one per thread, D2). When the version just read from CURRENT
was pruned before it could be opened, CURRENT is read once more and the open retried.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from kpis.publish import current_version, hold_snapshot, snapshot_path

log = logging.getLogger(__name__)
# the current version, the one a web process still serves while its cache warmer renders the
# current one (dashboards/_warm.py), and one before, for requests still running on it
KEEP_OPEN = 3


class SnapshotUnavailable(RuntimeError):
    """No snapshot has been published yet, or the published one cannot be opened."""


class SnapshotReader:
    """Read-only access to the current serving snapshot of one web process."""

    def __init__(self, serving_dir: Path, threads: int = 1, memory_limit: str = "1GB") -> None:
        self.serving_dir = Path(serving_dir)
        self._config = {"threads": threads, "memory_limit": memory_limit,
                        "access_mode": "READ_ONLY"}
        self._lock = threading.Lock()
        self._open: dict[int, duckdb.DuckDBPyConnection] = {}
        self._held: dict[int, int] = {}     # version -> the fd of its shared lock (publish.hold_snapshot)

    def version(self) -> int | None:
        """The published version named in CURRENT (a small file read; no DuckDB work)."""
        return current_version(self.serving_dir)

    def exists(self, version: int) -> bool:
        """True while the file of `version` is on disk (not yet pruned by the worker)."""
        return snapshot_path(self.serving_dir, version).exists()

    def _connection(self, version: int) -> duckdb.DuckDBPyConnection:
        with self._lock:
            con = self._open.get(version)
            if con is not None:
                return con
            path = snapshot_path(self.serving_dir, version)
            # locked before it is opened: the worker rewrites a pruned file for a later version
            # only when no reader holds it (kpis/publish.py)
            fd = hold_snapshot(path)
            try:
                con = duckdb.connect(str(path), read_only=True, config=dict(self._config))
            except BaseException:
                os.close(fd)
                raise
            self._open[version], self._held[version] = con, fd
            others = sorted(v for v in self._open if v != version)
            for old in others[:max(0, len(others) - (KEEP_OPEN - 1))]:
                # a request that took its cursor from an old connection finished long ago:
                # publishes are a cycle (about a minute) apart. The version asked for stays open
                # even when it is the oldest (a page still showing it asks again).
                self._open.pop(old).close()
                os.close(self._held.pop(old))
            return con

    def resolve(self, version: int | None = None) -> tuple[int, duckdb.DuckDBPyConnection]:
        """A connection to `version` (default: current), re-reading CURRENT once if it was pruned."""
        for attempt in (1, 2):
            wanted = version if version is not None and attempt == 1 else self.version()
            if wanted is None:
                raise SnapshotUnavailable(
                    f"no snapshot published yet in `{self.serving_dir}` (is the worker running?)")
            try:
                return wanted, self._connection(wanted)
            except (FileNotFoundError, duckdb.IOException) as exc:
                if attempt == 2:
                    raise SnapshotUnavailable(
                        f"snapshot {wanted} in `{self.serving_dir}` cannot be opened: {exc}") from exc
                log.info("snapshot %s gone before it was opened; re-reading CURRENT", wanted)
        raise AssertionError("unreachable")

    @contextmanager
    def cursor(self, version: int | None = None) -> Iterator[tuple[int, duckdb.DuckDBPyConnection]]:
        """(version, cursor) for one request; the cursor is closed afterwards."""
        got, con = self.resolve(version)
        cur = con.cursor()
        try:
            yield got, cur
        finally:
            cur.close()

    def close(self) -> None:
        with self._lock:
            for con in self._open.values():
                con.close()
            for fd in self._held.values():
                os.close(fd)
            self._open.clear()
            self._held.clear()
