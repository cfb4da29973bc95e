"""Publish the serving snapshot: an immutable `serving_<v>.duckdb` plus the `CURRENT` pointer.

The web tier never opens the warehouse (ARCHITECTURE.md §2): each cycle the worker copies the
small tables pages read into a new file under a temporary name, renames it, then flips
`CURRENT` by writing a temp file and `os.replace`. A new name per version is mandatory because
DuckDB caches open instances by path; old versions are pruned, readers of a deleted file keep
their inode.

The snapshot also holds the source records detail pages read (2.2 GB at city), so copying the
previous file and checkpointing the copy cost ~1.6 s a cycle whatever little changed. The
newest pruned version is kept as a spare instead of deleted, and the next publish brings that
file up to date (the changes since *its* bookkeeping) under the new name: only the changed
blocks are written. Readers hold a shared `flock` on the file they read (`hold_snapshot`); the
worker takes the spare only with an exclusive one, else it copies as before.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb

from etl.contract import load_contract
from etl.schema import quote_ident

log = logging.getLogger(__name__)

SNAPSHOT_NAME = re.compile(r"^serving_(\d+)\.duckdb$")
KEEP_VERSIONS = 3
# Copied whole when present. kpi_value is the product; the rest explain it.
SMALL_TABLES = ("kpi_value", "kpi_def", "dim_org", "dim_org_ancestor", "etl_freshness",
                "etl_watermark", "worker_event")
# Metering firehose tables (millions of rows at county scale) and the column that dates a row: the
# snapshot holds only the days a KPI detail page can show, so a publish stays within its budget
# (bench/RESULTS.md "## Web") while detail pages of metering KPIs still find their records.
FIREHOSE = {"meter_collection_daily": "data_date", "meter_voltage_daily": "data_date",
            "meter_curve_15min": "data_time"}
DETAIL_DAYS = 15     # the day filter offers today and the 14 days before (dashboards shell)
LOOKBACK_DAYS = 7    # metering facts of day D read back to D-6 (clock deviation, 3-day failures)
# Pages read kpi_value by (grain, period_start): stored in that order, a read of one period skips
# all other row groups by their min/max instead of scanning a million rows.
KPI_ORDER = "grain, period_start, kpi_id, org_no"
RECENT_RUN_DAYS = 7
LOCAL_TZ = "Asia/Shanghai"
# versions between full rebuilds (compacts, drops rows gone upstream): the worker's nightly job
# rebuilds (a minute at city, off the day's cycles); this is the bound when it does not run
FULL_EVERY = 2880
SPARE_NAME = ".spare.duckdb"   # the newest pruned version, for the next publish to bring up to date
# Alarm and alert tables whose every write changes one of these columns (kpis/alerting.py,
# kpis/dispatch.py, kpis/outbox.py: a state is written with a new updated_at, acknowledged or
# escalated; an outbox row's attempts or status move; events and deliveries are appended): an
# incremental publish moves only the rows that differ by them. Copied whole, the alarm states
# of a city (~68 k with their ~1 kB messages) were ~0.45 s of each publish.
SYNCED_BY = {
    "alarm_state": ("kpi_id", "org_no", "updated_at", "acked_at", "escalated_at"),
    "alert_event": ("event_id",),
    "alert_delivery": ("notification_id", "attempt"),
    "alert_outbox": ("notification_id", "status", "attempts"),
    "alert_ack": ("ack_id",),
}


@dataclass(frozen=True)
class PublishResult:
    version: int
    path: Path
    seconds: float
    tables: tuple[str, ...]
    recycled: bool = False     # brought the spare (an older version's file) up to date


def current_version(serving_dir: Path) -> int | None:
    """The version named in CURRENT, or None when nothing was published yet."""
    try:
        text = (serving_dir / "CURRENT").read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def snapshot_path(serving_dir: Path, version: int) -> Path:
    return serving_dir / f"serving_{version}.duckdb"


def hold_snapshot(path: Path) -> int:
    """A reader's shared lock on a published file, held while it reads it (release with
    os.close): the worker brings a pruned file up to date for a later version only when no
    reader holds it. Raises FileNotFoundError when `path` is gone or is being rewritten."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        # the name may have moved on to the spare since it was opened: this inode is not it
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            raise FileNotFoundError(path)
    except BlockingIOError as exc:
        os.close(fd)
        raise FileNotFoundError(path) from exc
    except BaseException:
        os.close(fd)
        raise
    return fd


def published_versions(serving_dir: Path) -> list[int]:
    """Versions present on disk, oldest first."""
    if not serving_dir.exists():
        return []
    found = (SNAPSHOT_NAME.match(p.name) for p in serving_dir.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def _tables(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    rows = con.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = 'main' "
        "ORDER BY table_name, ordinal_position").fetchall()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        out.setdefault(table, []).append(column)
    return out


def _stats_sql(present: dict[str, list[str]], only: set[str] | None = None) -> str | None:
    """One UNION ALL over every contract table in the warehouse (or those in `only`): rows,
    deleted, newest updated_at."""
    parts = []
    for table in load_contract().tables.values():
        cols = present.get(table.name)
        if not cols or "updated_at" not in cols or (only is not None and table.name not in only):
            continue
        deleted = "SUM(CASE WHEN is_deleted = 1 THEN 1 ELSE 0 END)" if "is_deleted" in cols else "0"
        parts.append(
            f"SELECT '{table.system}' AS source, '{table.name}' AS table_name, "
            f"COUNT(*)::BIGINT AS row_count, COALESCE({deleted}, 0)::BIGINT AS deleted_count, "
            f"MAX(updated_at)::TIMESTAMP AS max_updated_at FROM {quote_ident(table.name)}")
    return " UNION ALL ".join(parts) if parts else None


def _reject_sql(cols: list[str]) -> str:
    keys = [c for c in ("source", "table_name", "reason") if c in cols]
    resolved = "WHERE resolved_at IS NULL" if "resolved_at" in cols else ""
    group = ", ".join(keys) if keys else "1"
    select = ", ".join(keys) + ", " if keys else ""
    return f"SELECT {select}COUNT(*)::BIGINT AS reject_count FROM etl_reject {resolved} GROUP BY {group}"


def publish(con: duckdb.DuckDBPyConnection, serving_dir: Path, keep: int = KEEP_VERSIONS,
            core_tables: bool = True, published_at: datetime | None = None,
            full_every: int = FULL_EVERY, full: bool = False) -> PublishResult:
    """Write the next snapshot from the worker's connection and make it current.

    Incremental when possible: the spare (or else a copy of the previous file) is brought up to
    date: small tables are rewritten, and only kpi_value rows computed since it was published
    and core-table rows inside the ETL windows run since then are replaced. When `full`, every
    `full_every` versions, or when the previous file is missing or the ETL restarted its run
    ids, the snapshot is rebuilt from scratch.
    `published_at` is naive local time like the sources (default: now in Asia/Shanghai)."""
    started = time.perf_counter()
    published_at = published_at or datetime.now(ZoneInfo(LOCAL_TZ)).replace(tzinfo=None, microsecond=0)
    serving_dir.mkdir(parents=True, exist_ok=True)
    previous = current_version(serving_dir)
    version = max([*published_versions(serving_dir), previous or 0]) + 1
    final = snapshot_path(serving_dir, version)
    tmp = serving_dir / f".serving_{version}.duckdb.tmp"
    for stale in (tmp, Path(f"{tmp}.wal")):
        stale.unlink(missing_ok=True)
    present = _tables(con)
    base = snapshot_path(serving_dir, previous) if previous else None
    info = _read_info(con, base) if base is not None and base.exists() else None
    run_now = _max_run(con, present)
    full = (full or info is None or version - int(info["full_version"]) >= full_every
            or run_now < int(info["etl_run_id"]) or info["kpi_columns"] != present.get("kpi_value"))
    spare_lock, recycled = None, False
    if full:
        (serving_dir / SPARE_NAME).unlink(missing_ok=True)
    else:
        spare_lock, spare_info = _take_spare(con, serving_dir, tmp, info, run_now, present)
        if spare_lock is None:
            shutil.copyfile(base, tmp)    # immutable once published: a plain copy is consistent
        else:
            info, recycled = spare_info, True     # the increments run from what the spare holds
    try:
        copied = _write(con, tmp, present, info, full, version, published_at, run_now, core_tables)
    finally:
        if spare_lock is not None:
            os.close(spare_lock)          # before the rename: readers of the new name lock it
    os.replace(tmp, final)
    _write_current(serving_dir, version)
    _prune(serving_dir, keep)
    seconds = time.perf_counter() - started
    kind = "full" if full else "incremental" + (" on the spare" if recycled else "")
    log.info("published snapshot %s (%s, %d tables) in %.3f s", version, kind, len(copied), seconds)
    return PublishResult(version, final, seconds, tuple(copied), recycled=recycled)


def _take_spare(con: duckdb.DuckDBPyConnection, serving_dir: Path, tmp: Path, info: dict[str, object],
                run_now: int, present: dict[str, list[str]]) -> tuple[int | None, dict[str, object] | None]:
    """Move the spare to `tmp` under an exclusive lock, when no reader holds it and it belongs to
    the previous version's lineage (the same full rebuild: rows a rebuild dropped stay dropped).
    Returns (the lock's fd, the spare's bookkeeping), or (None, None) with no spare left."""
    spare = serving_dir / SPARE_NAME
    try:
        os.replace(spare, tmp)
    except FileNotFoundError:
        return None, None
    fd = os.open(tmp, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        tmp.unlink()                      # its reader keeps the inode; the next prune makes another
        return None, None
    try:
        got = _read_info(con, tmp)
    except duckdb.Error as exc:           # not a file this code published: copy instead
        log.warning("spare snapshot unreadable (%s): copying the previous one", exc)
        got = None
    if (got is None or got["full_version"] != info["full_version"] or int(got["etl_run_id"]) > run_now
            or got["kpi_columns"] != present.get("kpi_value") or got["kpi_computed_at"] is None
            or not _writable(con, tmp)):
        os.close(fd)
        tmp.unlink()
        return None, None
    return fd, got


def _writable(con: duckdb.DuckDBPyConnection, path: Path) -> bool:
    """Whether DuckDB can open `path` for writing: a reader outside the lock protocol
    (`python -m etl status` opens a version briefly) holds DuckDB's own lock on it."""
    try:
        con.execute("ATTACH '" + str(path).replace("'", "''") + "' AS spare_probe")
    except duckdb.IOException as exc:
        log.info("spare snapshot in use (%s): copying the previous one", exc)
        return False
    con.execute("DETACH spare_probe")
    return True


def _write(con: duckdb.DuckDBPyConnection, tmp: Path, present: dict[str, list[str]],
           info: dict[str, object] | None, full: bool, version: int, published_at: datetime,
           run_now: int, core_tables: bool) -> list[str]:
    """Fill `tmp` (empty for a full publish, else a published file `info` describes) and
    checkpoint it; the tables written, `+` for those brought up to date by key."""
    copied: list[str] = []
    con.execute("ATTACH '" + str(tmp).replace("'", "''") + "' AS snap")
    # one transaction: one WAL commit for the whole snapshot instead of one per statement
    con.execute("BEGIN TRANSACTION")
    committed = False
    try:
        def copy(name: str, select: str) -> None:
            con.execute(f"DROP TABLE IF EXISTS snap.{quote_ident(name)}")
            con.execute(f"CREATE TABLE snap.{quote_ident(name)} AS {select}")
            copied.append(name)

        for name in SMALL_TABLES:
            if name in present and name != "kpi_value":
                copy(name, f"SELECT * FROM {quote_ident(name)}")
        for name in sorted(present):
            if not name.startswith(("alarm_", "alert_")):
                continue
            version_cols = SYNCED_BY.get(name)
            if (full or version_cols is None or not set(version_cols) <= set(present[name])
                    or _columns(con, "snap", name) != present[name]):
                copy(name, f"SELECT * FROM {quote_ident(name)}")
            else:
                _sync_rows(con, name, version_cols)
                copied.append(name + "+")
        if "etl_run" in present:
            cols = present["etl_run"]
            time_col = next((c for c in ("started_at", "finished_at", "run_at") if c in cols), None)
            where = (f"WHERE {time_col} >= (SELECT MAX({time_col}) FROM etl_run) - INTERVAL {RECENT_RUN_DAYS} DAY"
                     if time_col else "")
            copy("etl_run", f"SELECT * FROM etl_run {where}")
        if "etl_reject" in present:
            copy("etl_reject_count", _reject_sql(present["etl_reject"]))
        changed = None if full else _merged_since(con, present, info["etl_run_id"])
        if changed is None or "source_table_stats" not in _snap_tables(con):
            stats = _stats_sql(present)
            if stats:
                copy("source_table_stats", stats)
        elif changed:
            # a table's row count, deletions and newest update move only when the ETL merges
            # into it: counting the 36 M metering rows again each cycle was 0.1-0.2 s at city
            stats = _stats_sql(present, changed)
            if stats:
                con.execute("DELETE FROM snap.source_table_stats WHERE list_contains($t, table_name)",
                            {"t": sorted(changed)})
                con.execute(f"INSERT INTO snap.source_table_stats {stats}")
                copied.append("source_table_stats+")
        kpi_mark = None
        detail_windows: dict[str, object] = {}
        if "kpi_value" in present:
            kpi_mark = con.execute("SELECT MAX(computed_at) FROM kpi_value").fetchone()[0]
            if full or info is None or info["kpi_computed_at"] is None:
                copy("kpi_value", f"SELECT * FROM kpi_value ORDER BY {KPI_ORDER}")
            else:
                _refresh_rows(con, "kpi_value", ("kpi_id", "org_no", "grain", "period_start"),
                              "computed_at > ?", [info["kpi_computed_at"]], order=KPI_ORDER)
                _drop_thinned(con, info["kpi_computed_at"])
                copied.append("kpi_value+")
        if core_tables:
            in_snap = set(_snap_tables(con))
            windows = {"run_id", "window_low", "rows_merged", "table_name"} <= set(present.get("etl_run", ()))
            windows_held = {} if full or "detail_window" not in in_snap else _detail_windows(con)
            for table in load_contract().tables.values():
                if table.name not in present:
                    continue
                low = "all" if full or not windows else _window_low(con, table.name, info["etl_run_id"])
                if table.name in FIREHOSE:
                    first = _publish_firehose(con, table.name, table.key, present[table.name], low,
                                              windows_held.get(table.name), table.name in in_snap)
                    detail_windows[table.name] = first
                    copied.append(table.name + "~")
                    continue
                if (table.name not in in_snap or low == "all"
                        or (low is not None and _mostly_merged(con, table.name, info["etl_run_id"]))):
                    copy(table.name, f"SELECT * FROM {quote_ident(table.name)}")
                elif low is not None:
                    _refresh_rows(con, table.name, table.key, "updated_at > ?", [low])
                    copied.append(table.name + "+")
        _write_detail_windows(con, detail_windows)
        full_version = version if full else info["full_version"]
        con.execute("DROP TABLE IF EXISTS snap.snapshot_info")
        con.execute("CREATE TABLE snap.snapshot_info AS SELECT ?::BIGINT AS version, ?::TIMESTAMP AS "
                    "published_at, ?::BIGINT AS etl_run_id, ?::TIMESTAMP AS kpi_computed_at, "
                    "?::BIGINT AS full_version", [version, published_at, run_now, kpi_mark, full_version])
        con.execute("COMMIT")
        committed = True
        con.execute("CHECKPOINT snap")
    except BaseException:
        if not committed:
            con.execute("ROLLBACK")
        raise
    finally:
        con.execute("DETACH snap")
    return copied


def _snap_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                      "WHERE table_catalog = 'snap'").fetchall()]


def _columns(con: duckdb.DuckDBPyConnection, catalog: str, table: str) -> list[str] | None:
    """Column names of catalog.table, None when it does not exist (read from an empty result,
    not information_schema, which goes through every catalog attached to the worker's connection)."""
    try:
        cur = con.execute(f"SELECT * FROM {quote_ident(catalog)}.{quote_ident(table)} LIMIT 0")
    except duckdb.CatalogException:
        return None
    return [d[0] for d in cur.description] or None


def _read_info(con: duckdb.DuckDBPyConnection, base: Path) -> dict[str, object] | None:
    """What the previous snapshot was built from (None for files without the bookkeeping)."""
    con.execute("ATTACH '" + str(base).replace("'", "''") + "' AS prevsnap (READ_ONLY)")
    try:
        cols = _columns(con, "prevsnap", "snapshot_info") or []
        if not {"etl_run_id", "kpi_computed_at", "full_version"} <= set(cols):
            return None
        if _columns(con, "prevsnap", "detail_window") is None:
            return None     # written before kpi_value was ordered and the firehose windowed
        row = con.execute("SELECT etl_run_id, kpi_computed_at, full_version FROM prevsnap.snapshot_info"
                          ).fetchone()
        if row is None:
            return None
        return {"etl_run_id": row[0] or 0, "kpi_computed_at": row[1], "full_version": row[2] or 0,
                "kpi_columns": _columns(con, "prevsnap", "kpi_value")}
    finally:
        con.execute("DETACH prevsnap")


def _max_run(con: duckdb.DuckDBPyConnection, present: dict[str, list[str]]) -> int:
    if "etl_run" not in present or "run_id" not in present["etl_run"]:
        return 0
    return int(con.execute("SELECT COALESCE(MAX(run_id), 0) FROM etl_run").fetchone()[0])


def _merged_since(con: duckdb.DuckDBPyConnection, present: dict[str, list[str]],
                  since_run: object) -> set[str] | None:
    """The tables an ETL run after `since_run` merged rows into (None: the run log cannot say)."""
    if not {"run_id", "table_name", "rows_merged"} <= set(present.get("etl_run", ())):
        return None
    return {r[0] for r in con.execute("SELECT DISTINCT table_name FROM etl_run WHERE run_id > ? "
                                      "AND rows_merged > 0", [since_run]).fetchall()}


def _mostly_merged(con: duckdb.DuckDBPyConnection, table: str, since_run: object) -> bool:
    """Whether the runs after `since_run` merged at least as many rows into `table` as it holds
    (the terminals' heartbeats: every row, every minute): copied whole, not deleted and inserted
    back by key."""
    merged = con.execute("SELECT COALESCE(SUM(rows_merged), 0) FROM etl_run WHERE run_id > ? "
                         "AND table_name = ?", [since_run, table]).fetchone()[0]
    if not merged:
        return False
    held = con.execute("SELECT estimated_size FROM duckdb_tables() WHERE database_name = current_database() "
                       "AND schema_name = 'main' AND table_name = ?", [table]).fetchone()
    return held is not None and merged >= held[0]


def _window_low(con: duckdb.DuckDBPyConnection, table: str, since_run: int) -> object:
    """The lowest updated_at window start the ETL read for `table` after `since_run`:
    None = nothing loaded since, 'all' = a full load (no lower bound)."""
    row = con.execute("SELECT COUNT(*), COUNT(window_low), MIN(window_low) FROM etl_run "
                      "WHERE run_id > ? AND table_name = ? AND rows_merged > 0", [since_run, table]).fetchone()
    if not row or row[0] == 0:
        return None
    return "all" if row[1] < row[0] else row[2]


def _refresh_rows(con: duckdb.DuckDBPyConnection, table: str, key: tuple[str, ...], where: str,
                  params: list[object], order: str | None = None) -> None:
    """Replace in the snapshot the rows of `table` matching `where` (by key)."""
    t = quote_ident(table)
    match = " AND ".join(f"s.{quote_ident(k)} = n.{quote_ident(k)}" for k in key)
    keys = ", ".join(quote_ident(k) for k in key)
    con.execute(f"DELETE FROM snap.{t} AS s USING (SELECT {keys} FROM {t} WHERE {where}) AS n "
                f"WHERE {match}", params)
    con.execute(f"INSERT INTO snap.{t} SELECT * FROM {t} WHERE {where}"
                + (f" ORDER BY {order}" if order else ""), params)


def _sync_rows(con: duckdb.DuckDBPyConnection, table: str, version_cols: tuple[str, ...]) -> None:
    """Make snap's `table` equal to the warehouse's where rows are told apart by `version_cols`
    (SYNCED_BY): the snapshot's rows without a match leave, the warehouse's without one enter."""
    t = quote_ident(table)
    same = " AND ".join(f"s.{quote_ident(c)} IS NOT DISTINCT FROM w.{quote_ident(c)}" for c in version_cols)
    con.execute(f"DELETE FROM snap.{t} WHERE rowid IN "
                f"(SELECT s.rowid FROM snap.{t} s ANTI JOIN {t} w ON {same})")
    con.execute(f"INSERT INTO snap.{t} SELECT w.* FROM {t} w ANTI JOIN snap.{t} s ON {same}")


def _drop_thinned(con: duckdb.DuckDBPyConnection, since: object) -> None:
    """Remove from the snapshot the near-real-time rows the store thinned since the last publish
    (kpis/retention.py): they lie in the clock hours of the snapshots computed since, where the
    warehouse's rows are few (the newest, one per hour or per 5 minutes), so the snapshot's rows
    there are made exactly the warehouse's."""
    first = con.execute("SELECT MIN(date_trunc('hour', period_start)) FROM kpi_value "
                        "WHERE grain = 'near-real-time' AND computed_at > ?", [since]).fetchone()[0]
    if first is None:
        return
    con.execute("""DELETE FROM snap.kpi_value s
                   WHERE s.grain = 'near-real-time' AND s.period_start >= $first
                     AND NOT EXISTS (SELECT 1 FROM kpi_value v
                                     WHERE v.grain = 'near-real-time' AND v.period_start >= $first
                                       AND v.kpi_id = s.kpi_id AND v.org_no = s.org_no
                                       AND v.period_start = s.period_start)""", {"first": first})


def _publish_firehose(con: duckdb.DuckDBPyConnection, table: str, key: tuple[str, ...],
                      columns: list[str], etl_low: object, held_from: object, in_snap: bool) -> object:
    """Copy the last DETAIL_DAYS + LOOKBACK_DAYS days of a metering firehose table (by its date
    column, counted back from its newest day); incrementally, drop the days that left the window
    and replace the rows loaded since the last publish. Returns the first day whose detail is
    complete (None for an empty table)."""
    t, col = quote_ident(table), FIREHOSE[table]
    if col not in columns:
        return None
    newest = con.execute(f"SELECT MAX({quote_ident(col)})::DATE FROM {t}").fetchone()[0]
    low = None if newest is None else newest - timedelta(days=DETAIL_DAYS + LOOKBACK_DAYS - 1)
    if low is not None and held_from is not None:
        # never widen a window incrementally (rows below it are gone); a full publish resets it
        low = max(low, held_from - timedelta(days=LOOKBACK_DAYS))
    day = f"{quote_ident(col)}::DATE"
    if not in_snap or etl_low == "all":
        con.execute(f"DROP TABLE IF EXISTS snap.{t}")
        con.execute(f"CREATE TABLE snap.{t} AS SELECT * FROM {t} WHERE {day} >= ? ORDER BY {quote_ident(col)}",
                    [low])
    else:
        con.execute(f"DELETE FROM snap.{t} WHERE {day} < ? OR ?::DATE IS NULL", [low, low])
        if etl_low is not None and low is not None:
            _refresh_rows(con, table, key, f"updated_at > ? AND {day} >= ?", [etl_low, low])
    return None if low is None else low + timedelta(days=LOOKBACK_DAYS)


def _detail_windows(con: duckdb.DuckDBPyConnection) -> dict[str, object]:
    """First complete detail day per firehose table, as the previous snapshot (now `snap`) held it."""
    return dict(con.execute("SELECT table_name, first_day FROM snap.detail_window").fetchall())


def _write_detail_windows(con: duckdb.DuckDBPyConnection, windows: dict[str, object]) -> None:
    """detail_window(table_name, first_day): the web side says so instead of showing partial
    records for periods that begin before a firehose table's window."""
    con.execute("DROP TABLE IF EXISTS snap.detail_window")
    con.execute("CREATE TABLE snap.detail_window (table_name VARCHAR, first_day DATE)")
    for name, first in sorted(windows.items()):
        con.execute("INSERT INTO snap.detail_window VALUES (?, ?)", [name, first])


def _write_current(serving_dir: Path, version: int) -> None:
    tmp = serving_dir / ".CURRENT.tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(f"{version}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, serving_dir / "CURRENT")


def _prune(serving_dir: Path, keep: int) -> None:
    versions = published_versions(serving_dir)
    dropped = versions[:-keep] if keep > 0 else []
    for old in dropped:
        # an open reader keeps its inode; new readers re-read CURRENT (kpis/serving.py)
        path = snapshot_path(serving_dir, old)
        try:
            if old == dropped[-1]:
                os.replace(path, serving_dir / SPARE_NAME)    # the next publish brings it up to date
            else:
                path.unlink()
        except FileNotFoundError:
            pass
