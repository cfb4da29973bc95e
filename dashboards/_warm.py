"""Warm the page cache for each new snapshot before anyone is served it.

Page bodies are cached under the snapshot version (kpis/queries.py), so every publish (about one
a minute) would make the next request of every page pay a cold render, and under load many
requests pay it at once. Instead each web process keeps serving the version it has warmed: a
background thread notices a new CURRENT, renders the views in use for it (page, user, filters
seen in the last HOT_TTL_S, most recent first), then switches the process over. After
WARM_BUDGET_S the new version is served even if not every view is warm yet, so a slow or broken
warm pass delays fresh data by at most that long.

The views in use are files in `<CACHE_DIR>/hot/` shared by all web processes (like the cache
itself); a process renders them one process at a time (`warm.lock`), so the second process finds
the first one's results in the shared cache. Views are rendered with the scope the user has now
(disabled or unknown users are skipped), in the warmer's thread only (deps.scope_in_this_thread),
and land under the same cache key a request of that user would compute: the version, the
authorised units and the filters.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dashboards._components import deps

log = logging.getLogger(__name__)
HOT_TTL_S = 1800         # a view nobody opened for 30 minutes is not warmed any more
MAX_VIEWS = 120          # most recently used views warmed per snapshot
WARM_BUDGET_S = 20.0     # a new snapshot is served after this even if not every view is warm
POLL_S = 1.0             # how often CURRENT is looked at
NOTE_EVERY_S = 60.0      # a view's file is rewritten at most once a minute per process

Render = Callable[[int | None, dict[str, Any]], Any]


class Warmer:
    """Holds back new snapshot versions in one web process until its views in use are warm."""

    def __init__(self, server: Any, service: Any, hot_dir: Path,
                 renders: Callable[[str], Render | None]) -> None:
        self.server = server
        self.service = service
        self.hot_dir = Path(hot_dir)
        self.renders = renders
        self._served: int | None = None
        self._first_seen: dict[int, float] = {}
        self._noted: dict[str, float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the version a request is served -----------------------------------------------------
    def gate(self, newest: int) -> int:
        """The version to serve while `newest` is the published one."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return newest
        now = time.monotonic()
        with self._lock:
            served = self._served
            if served is None or newest <= served:
                # nothing older to keep showing (first snapshot of this process), or CURRENT
                # moved back (a rebuilt data directory): follow it
                self._served = newest
                return newest
            first = self._first_seen.setdefault(newest, now)
            if now - first >= WARM_BUDGET_S or not self._on_disk(served):
                self._served = newest
                return newest
        self._wake.set()
        return served

    def _on_disk(self, version: int) -> bool:
        """False once the worker pruned `version` (several publishes during one warm pass)."""
        return bool(self.service.reader.exists(version))

    # -- the views in use ---------------------------------------------------------------------
    def note(self, page: str, scope: Any, filters: dict[str, Any]) -> None:
        """Record that `scope`'s user rendered `page` with `filters` (a file per view)."""
        user = getattr(scope, "user", None)
        if not user:
            return
        clean = {k: v for k, v in sorted(filters.items()) if not str(k).startswith("_")}
        text = json.dumps({"page": page, "user": user, "filters": clean}, ensure_ascii=False,
                          sort_keys=True, default=str)
        name = hashlib.sha1(text.encode("utf-8")).hexdigest() + ".json"
        now = time.monotonic()
        if now - self._noted.get(name, -NOTE_EVERY_S) < NOTE_EVERY_S:
            return
        self._noted[name] = now
        try:
            self.hot_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.hot_dir / f".{name}.{threading.get_ident()}.tmp"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(self.hot_dir / name)      # also refreshes the file time: last use
        except OSError as exc:      # warming is an optimisation: never fail a page for it
            log.warning("could not record view in use: %s", exc)

    def views(self) -> list[dict[str, Any]]:
        """Views used in the last HOT_TTL_S, most recent first; older files are removed."""
        now = time.time()
        found: list[tuple[float, Path]] = []
        for path in self.hot_dir.glob("*.json") if self.hot_dir.exists() else []:
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            if now - mtime > HOT_TTL_S:
                path.unlink(missing_ok=True)
            else:
                found.append((mtime, path))
        out = []
        for _mtime, path in sorted(found, reverse=True)[:MAX_VIEWS]:
            try:
                out.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return out

    # -- the warming thread -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cache-warmer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        warmed: int | None = None
        while not self._stop.is_set():
            self._wake.wait(POLL_S)
            self._wake.clear()
            try:
                newest = self.service.reader.version()
                if newest is None or newest == warmed:
                    continue
                self.warm(newest)
                warmed = newest
                with self._lock:
                    if self._served is None or newest > self._served:
                        self._served = newest
            except Exception:   # keep warming later snapshots; requests render cold meanwhile
                log.exception("cache warming failed")
                time.sleep(POLL_S)

    def warm(self, version: int) -> int:
        """Render every view in use for `version` into the shared cache; returns views rendered."""
        from dashboards._components.auth import _state
        from dashboards._components.shell import safe_render
        deadline = time.monotonic() + WARM_BUDGET_S
        done = 0
        self.hot_dir.mkdir(parents=True, exist_ok=True)
        with open(self.hot_dir / "warm.lock", "w") as lock_file, self.server.app_context():
            fcntl.flock(lock_file, fcntl.LOCK_EX)      # one process at a time; the next one hits
            state = _state()
            for view in self.views():
                if time.monotonic() > deadline:
                    break
                render = self.renders(str(view.get("page")))
                user = state.db.get_user(str(view.get("user")))
                if render is None or user is None or user.disabled:
                    continue
                scope = state.scope(user)
                if not scope.org_nos:
                    continue
                try:
                    with deps.scope_in_this_thread(scope):
                        safe_render(render, version, dict(view.get("filters") or {}))
                    done += 1
                except Exception as exc:   # one broken view must not stop the others
                    log.warning("warming %s for %s failed: %s", view.get("page"), user.name, exc)
        log.info("snapshot %s: %d views warmed in %.2f s", version, done,
                 WARM_BUDGET_S - max(0.0, deadline - time.monotonic()))
        return done
