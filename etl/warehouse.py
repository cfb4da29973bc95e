"""The DuckDB warehouse: one read-write connection, explicit resources, migrations."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from etl.dims import DIM_STATEMENTS
from etl.schema import ods_statements

BOOKKEEPING = [
    """CREATE TABLE IF NOT EXISTS etl_pass (run_id BIGINT, started_at TIMESTAMP,
       finished_at TIMESTAMP, ok BOOLEAN)""",
    """CREATE TABLE IF NOT EXISTS etl_run (run_id BIGINT, source VARCHAR, table_name VARCHAR,
       window_low TIMESTAMP, window_high TIMESTAMP, rows_read BIGINT, rows_merged BIGINT,
       rows_rejected BIGINT, rejected_by_reason VARCHAR, duration_ms BIGINT, status VARCHAR,
       error VARCHAR, started_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS etl_watermark (source VARCHAR, table_name VARCHAR,
       high TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS etl_reject (run_id BIGINT, source VARCHAR, table_name VARCHAR,
       row_key VARCHAR, reason VARCHAR, raw VARCHAR, rejected_at TIMESTAMP,
       resolved_at TIMESTAMP, resolved_run_id BIGINT)""",
    """CREATE TABLE IF NOT EXISTS etl_dq (run_id BIGINT, source VARCHAR, table_name VARCHAR,
       row_key VARCHAR, rule VARCHAR, detail VARCHAR, flagged_at TIMESTAMP,
       resolved_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS etl_dirty (run_id BIGINT, source VARCHAR, table_name VARCHAR,
       business_date DATE)""",
    # the columns changed in the rows of the table that carry the date (NULL: any column, a new
    # row or versions not compared): a KPI reads a past day again only when a column it reads
    # changed there (kpis/changes.py dirty_dates)
    "ALTER TABLE etl_dirty ADD COLUMN IF NOT EXISTS changed_columns VARCHAR[]",
    # per dirty table of a run: '' (tracked), '*' (rows added or not compared) and each column
    # in which a merged row differs from the version it replaced (etl/load.py _changed_sql)
    """CREATE TABLE IF NOT EXISTS etl_changed (run_id BIGINT, source VARCHAR, table_name VARCHAR,
       column_name VARCHAR)""",
    # per merged table with a one-column key: the keys a run merged, or one NULL key when it
    # merged more than etl/load.py KEYS_MAX_ROWS (not recorded); the KPI worker re-derives the
    # rows of its kept prelude tables for these keys (kpis/prelude.py)
    """CREATE TABLE IF NOT EXISTS etl_keys (run_id BIGINT, source VARCHAR, table_name VARCHAR,
       key VARCHAR)""",
    # per merged table with a one-column key whose batch was over KEYS_MAX_ROWS (etl_keys holds
    # its NULL key): the keys the batch added, or one NULL key when they are unknown or as many
    # (etl/load.py _record_added); a kept table that reads none of the columns the run changed
    # re-derives the added keys alone (kpis/prelude.py)
    """CREATE TABLE IF NOT EXISTS etl_added_keys (run_id BIGINT, source VARCHAR, table_name VARCHAR,
       key VARCHAR)""",
    # per batch of a dated table a run merged: whether it kept the batch's images (etl/load.py
    # IMAGE_MAX_ROWS), every version replaced and every version merged, in etl_image__<table>
    # (_run_id, _after, the table's columns); an ordinary KPI pass compares a past day's facts
    # over both and leaves the day alone when they agree (kpis/images.py). A nightly table is
    # merged in several batches a run: the run's images are whole only when every one kept them.
    """CREATE TABLE IF NOT EXISTS etl_image_run (run_id BIGINT, source VARCHAR, table_name VARCHAR,
       kept BOOLEAN)""",
    # per nightly metering table: the window high of its last full re-read of the long overlap
    """CREATE TABLE IF NOT EXISTS etl_reread (source VARCHAR, table_name VARCHAR, high TIMESTAMP)""",
    # per nightly metering table: how far the sweep in progress has re-read the long overlap
    """CREATE TABLE IF NOT EXISTS etl_reread_sweep (source VARCHAR, table_name VARCHAR,
       sweep_cursor TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS etl_freshness (source VARCHAR, last_good_high TIMESTAMP,
       last_pass_at TIMESTAMP, last_status VARCHAR, last_error VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS etl_dim_state (name VARCHAR, signature VARCHAR,
       built_at TIMESTAMP)""",
]


# The WAL size at which a commit folds it into the file on its own (a backstop), and the size
# above which the worker folds it after a cycle (Warehouse.fold_wal).
AUTO_CHECKPOINT = "512MB"
FOLD_WAL_BYTES = 64 * 1024 * 1024


class Warehouse:
    """The warehouse file opened read-write once; cursors per thread, transactions per load."""

    def __init__(self, path: Path | str, threads: int = 2, memory_limit: str = "4GB",
                 temp_directory: Path | None = None, extension_dir: Path | None = None,
                 read_only: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.extension_dir = Path(extension_dir or self.path.parent / "duckdb_extensions")
        self.temp_directory = Path(temp_directory or self.path.parent / "duckdb_tmp")
        self.read_only = read_only
        config = {
            "threads": threads,
            "memory_limit": memory_limit,
            "temp_directory": str(self.temp_directory),
            "extension_directory": str(self.extension_dir),
            # no internet on the target machines: an implicit download would hang, not help
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        }
        if not read_only:
            # DuckDB folds the WAL into the file inside whichever commit crosses the threshold
            # (16 MB by default): every few minute passes an ETL or KPI commit paid 1-1.5 s for
            # it at county. A high threshold leaves the folding to fold_wal(), which the worker
            # calls after it has published, off the path from the sources to the dashboards.
            config["checkpoint_threshold"] = AUTO_CHECKPOINT
        self._con = duckdb.connect(str(self.path), read_only=read_only, config=config)

    def wal_bytes(self) -> int:
        wal = self.path.with_name(self.path.name + ".wal")
        return wal.stat().st_size if wal.exists() else 0

    def fold_wal(self, above: int = FOLD_WAL_BYTES) -> bool:
        """CHECKPOINT when the WAL holds more than `above` bytes; False when it did not (small
        WAL, or another thread's transaction open: the next call or the threshold does it)."""
        if self.read_only or self.wal_bytes() <= above:
            return False
        cur = self.cursor()
        try:
            cur.execute("CHECKPOINT")
            return True
        except duckdb.Error:
            return False
        finally:
            cur.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor on the one connection; use one per thread."""
        return self._con.cursor()

    @contextmanager
    def transaction(self, cur: duckdb.DuckDBPyConnection | None = None
                    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """BEGIN … COMMIT on a cursor, ROLLBACK on any exception."""
        cur = cur or self.cursor()
        cur.execute("BEGIN TRANSACTION")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def migrate(self) -> None:
        """Create the core tables and the ETL bookkeeping tables if absent (idempotent)."""
        with self.transaction() as cur:
            for stmt in ods_statements() + BOOKKEEPING + DIM_STATEMENTS:
                cur.execute(stmt)

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        self._con.close()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
