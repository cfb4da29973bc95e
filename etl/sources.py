"""Source systems by kind: SQLite and PostgreSQL through DuckDB's scanners, others via SQLAlchemy.

One code path per kind, driven by the contract: a source knows its clock, the columns it
really has, and how to stage `low < updated_at <= high` of one table into a DuckDB temp
table with the contract's column names (raw values; typing happens in `etl.load`).
"""
from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from etl.contract import Table
from etl.errors import SourceUnavailable
from etl.extensions import load_scanner

TS_FORMAT = "%Y-%m-%d %H:%M:%S"
CHUNK_ROWS = 50_000


def local_now(tz: str = "Asia/Shanghai") -> datetime:
    """Wall clock as naive local time, whole seconds (the sources' convention)."""
    return datetime.now(timezone.utc).astimezone(ZoneInfo(tz)).replace(tzinfo=None, microsecond=0)


def ts_literal(value: datetime) -> str:
    """A window bound as SQL text. Only our own datetimes pass here, formatted, never user text."""
    return "'" + value.strftime(TS_FORMAT) + "'"


def _ident(name: str) -> str:
    # contract names are plain lower-case words (checked by the contract parser's \w+)
    if not name.replace("_", "").isalnum():
        raise ValueError(f"`{name}` is not a plain identifier")
    return name


@contextmanager
def deadline(cur: duckdb.DuckDBPyConnection, seconds: float, what: str) -> Iterator[None]:
    """Interrupt a DuckDB statement that runs past the source timeout."""
    fired = threading.Event()

    def _fire() -> None:
        fired.set()
        cur.interrupt()

    timer = threading.Timer(seconds, _fire)
    timer.start()
    try:
        yield
    except duckdb.Error as exc:
        if fired.is_set():
            raise SourceUnavailable(f"{what}: no answer within {seconds:g} s (SOURCE_TIMEOUT_S)") from exc
        raise
    finally:
        timer.cancel()


class Source:
    """Base: a named source reached by URL."""

    kind = "base"

    def __init__(self, name: str, url: str, timeout_s: float, tz: str = "Asia/Shanghai") -> None:
        self.name = name
        self.url = url
        self.timeout_s = timeout_s
        self.tz = tz
        self.alias = f"src_{name}"
        self._columns: dict[str, set[str]] | None = None

    def describe(self) -> str:
        """The URL without password, for messages."""
        return make_url(self.url).render_as_string(hide_password=True)

    def open(self, cur: duckdb.DuckDBPyConnection, extension_dir: Path) -> None:
        """Make the source reachable from `cur`; raise SourceUnavailable when it is down."""

    def close(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Release what open() took."""

    def clock(self, tables: Sequence[Table]) -> datetime:
        raise NotImplementedError

    def columns(self, table: str) -> set[str] | None:
        """Column names present at the source (lower case), None when the table is missing."""
        raise NotImplementedError

    # the scanner kinds read a window lazily and can probe it by key first (etl.pipeline)
    can_probe = False

    def select_sql(self, table: Table, low: datetime | None, high: datetime,
                   columns: Sequence[str] | None = None, from_incl: bool = False) -> str:
        """DuckDB SQL reading the window's rows with the contract's column names (raw values);
        `columns` a subset, `from_incl`: `low <= updated_at` instead of `low < updated_at`."""
        raise NotImplementedError

    # SQLite refuses a compound SELECT of more than 500 terms
    COUNT_TERMS = 400

    def window_counts(self, windows: Sequence[tuple[Table, datetime, datetime]],
                      labels: Sequence[str] | None = None) -> dict[str, int]:
        """Rows in `low < updated_at <= high` per window, counted at the source (on its updated_at
        index) in one query per COUNT_TERMS windows, keyed by `labels` (default: the table
        names): a pass reads and merges only the tables whose count is not 0."""
        names = list(labels or [t.name for t, _, _ in windows])
        out: dict[str, int] = {}
        for i in range(0, len(windows), self.COUNT_TERMS):
            out.update(self._count(windows[i:i + self.COUNT_TERMS], names[i:i + self.COUNT_TERMS]))
        return out

    def _count(self, windows: Sequence[tuple[Table, datetime, datetime]], names: Sequence[str]) -> dict[str, int]:
        raise NotImplementedError

    def prepare(self, cur: duckdb.DuckDBPyConnection, table: Table, low: datetime | None,
                high: datetime) -> str:
        """Return the SQL to read the window from (scanner kinds read the source lazily)."""
        return self.select_sql(table, low, high)

    def where_sql(self, table: Table, where: str) -> str:
        """DuckDB SQL reading the rows matching a source-side condition (reconciliation)."""
        raise NotImplementedError(f"source `{self.name}`: reconciliation needs a scanner source (sqlite, postgresql)")

    COLUMNS_SQL = ""    # a metadata query of (table, column) pairs, for _all_columns

    def _all_columns(self) -> dict[str, set[str]]:
        """Every table's columns (lower case) in one metadata query, cached for this pass."""
        if self._columns is None:
            self._columns = {}
            for t, c in self._meta(self.COLUMNS_SQL):
                self._columns.setdefault(t, set()).add(c.lower())
        return self._columns

    def _where(self, low: datetime | None, high: datetime, from_incl: bool = False) -> str:
        where = f"updated_at <= {ts_literal(high)}"
        return where if low is None else f"updated_at {'>=' if from_incl else '>'} {ts_literal(low)} AND {where}"


class SqliteSource(Source):
    """A SQLite file: metadata through sqlite3, rows through DuckDB's sqlite scanner."""

    kind = "sqlite"

    def __init__(self, name: str, url: str, timeout_s: float, tz: str = "Asia/Shanghai") -> None:
        super().__init__(name, url, timeout_s, tz)
        database = make_url(url).database
        if not database:
            raise SourceUnavailable(f"source `{name}`: URL {url!r} names no SQLite file")
        self.path = Path(database)

    def _connect(self) -> sqlite3.Connection:
        try:
            return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=self.timeout_s)
        except sqlite3.Error as exc:
            raise SourceUnavailable(f"source `{self.name}`: cannot open {self.path}: {exc}") from exc

    def _meta(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        con = self._connect()
        try:
            return con.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise SourceUnavailable(f"source `{self.name}` ({self.path}): {exc}") from exc
        finally:
            con.close()

    def open(self, cur: duckdb.DuckDBPyConnection, extension_dir: Path) -> None:
        if not self.path.exists():
            raise SourceUnavailable(f"source `{self.name}`: SQLite file {self.path} does not exist")
        self._meta("SELECT count(*) FROM sqlite_master")     # fails fast if locked or corrupt
        load_scanner(cur, "sqlite_scanner", extension_dir)
        # SQLite types are loose: read text, cast in DuckDB so a bad value is a reject, not a crash
        cur.execute("SET sqlite_all_varchar = true")
        self.close(cur)
        path = str(self.path).replace("'", "''")
        cur.execute(f"ATTACH '{path}' AS {self.alias} (TYPE sqlite, READ_ONLY)")

    def close(self, cur: duckdb.DuckDBPyConnection) -> None:
        cur.execute(f"DETACH DATABASE IF EXISTS {self.alias}")

    def clock(self, tables: Sequence[Table]) -> datetime:
        # SQLite has no server clock. The newest updated_at written is the writer's clock as far
        # as we can know it: a simulator may run ahead of the wall clock (accelerated) or behind
        # it (live mode continuing from its saved clock); taking the wall clock when it is ahead
        # would move the window past rows the writer has yet to stamp, losing them for good.
        # The wall clock is used only for a source with no rows at all. See docs/etl.md.
        existing = {r[0] for r in self._meta("SELECT name FROM sqlite_master WHERE type = 'table'")}
        parts = [f"SELECT max(updated_at) FROM {_ident(t.name)}" for t in tables if t.name in existing]
        newest = None
        if parts:
            values = [r[0] for r in self._meta(" UNION ALL ".join(parts)) if r[0] is not None]
            parsed = [parse_ts(v) for v in values]
            newest = max((p for p in parsed if p is not None), default=None)
        return newest.replace(microsecond=0) if newest else local_now(self.tz)

    # (table, column) of every table, read once per pass by Source._all_columns
    COLUMNS_SQL = ("SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p "
                   "WHERE m.type = 'table'")

    def columns(self, table: str) -> set[str] | None:
        return self._all_columns().get(table)

    def _count(self, windows: Sequence[tuple[Table, datetime, datetime]], names: Sequence[str]) -> dict[str, int]:
        sql = " UNION ALL ".join(f"SELECT ?, count(*) FROM {_ident(t.name)} WHERE updated_at > ? AND updated_at <= ?"
                                 for t, _, _ in windows)
        params = [v for n, (_, low, high) in zip(names, windows)
                  for v in (n, low.strftime(TS_FORMAT), high.strftime(TS_FORMAT))]
        return dict(self._meta(sql, params))

    can_probe = True

    def select_sql(self, table: Table, low: datetime | None, high: datetime,
                   columns: Sequence[str] | None = None, from_incl: bool = False) -> str:
        cols = ", ".join(_ident(c) for c in columns or table.column_names)
        if low is None:
            # full load: the attached-table scan runs on all threads (2.3x sqlite_query, measured)
            return f"SELECT {cols} FROM {self.alias}.{_ident(table.name)} WHERE {self._where(low, high)}"
        # a window: sqlite_query runs the statement inside SQLite, on its updated_at index
        # (a filter on the attached table is applied in DuckDB after reading the whole table)
        inner = f"SELECT {cols} FROM {_ident(table.name)} WHERE {self._where(low, high, from_incl)}"
        return f"SELECT * FROM sqlite_query('{self.alias}', '{inner.replace(chr(39), chr(39) * 2)}')"

    def where_sql(self, table: Table, where: str) -> str:
        cols = ", ".join(_ident(c) for c in table.column_names)
        return f"SELECT {cols} FROM {self.alias}.{_ident(table.name)} WHERE {where}"


class _EngineSource(Source):
    """A source also reached through a SQLAlchemy engine (`self._engine`) for small queries."""

    _engine: sa.engine.Engine

    def _meta(self, sql: str, params: dict[str, object] | None = None) -> list[tuple]:
        try:
            with self._engine.connect() as con:
                return [tuple(r) for r in con.execute(sa.text(sql), params or {})]
        except sa.exc.SQLAlchemyError as exc:
            raise SourceUnavailable(f"source `{self.name}` ({self.describe()}): {exc.__class__.__name__}: "
                                    f"{str(exc).splitlines()[0]}") from exc

    def _bound(self, value: datetime) -> object:
        return value

    def _count(self, windows: Sequence[tuple[Table, datetime, datetime]], names: Sequence[str]) -> dict[str, int]:
        sql = " UNION ALL ".join(f"SELECT CAST(:t{i} AS VARCHAR(64)) AS t, count(*) AS n FROM {_ident(t.name)} "
                                 f"WHERE updated_at > :lo{i} AND updated_at <= :hi{i}"
                                 for i, (t, _, _) in enumerate(windows))
        params: dict[str, object] = {}
        for i, (n, (_, low, high)) in enumerate(zip(names, windows)):
            params.update({f"t{i}": n, f"lo{i}": self._bound(low), f"hi{i}": self._bound(high)})
        return {t: int(n) for t, n in self._meta(sql, params)}


# PostgreSQL compiles a query whose estimated cost passes jit_above_cost: the window counts of the
# metering guard (hundreds of cheap index range counts in one UNION ALL, each estimated high on
# unanalysed tables) took 60 s there, 55 s of it compiling; our reads are index ranges, never
# worth a compile. A session setting any user may make.
NO_JIT = "-c jit=off"


class PostgresSource(_EngineSource):
    """A PostgreSQL database: metadata through SQLAlchemy, rows through DuckDB's postgres scanner."""

    kind = "postgres"

    def __init__(self, name: str, url: str, timeout_s: float, tz: str = "Asia/Shanghai") -> None:
        super().__init__(name, url, timeout_s, tz)
        self._engine = sa.create_engine(
            url, pool_pre_ping=True, poolclass=sa.pool.NullPool,
            connect_args={"connect_timeout": max(1, int(timeout_s)),
                          "options": f"-c statement_timeout={int(timeout_s * 1000)} {NO_JIT}"})

    def _dsn(self) -> str:
        u: URL = make_url(self.url)
        parts = {"host": u.host or "localhost", "port": u.port or 5432, "user": u.username,
                 "password": u.password, "dbname": u.database,
                 "connect_timeout": max(1, int(self.timeout_s)), "options": f"'{NO_JIT}'"}
        return " ".join(f"{k}={v}" for k, v in parts.items() if v not in (None, ""))

    def open(self, cur: duckdb.DuckDBPyConnection, extension_dir: Path) -> None:
        self._meta("SELECT 1")
        load_scanner(cur, "postgres_scanner", extension_dir)
        self.close(cur)
        dsn = self._dsn().replace("'", "''")
        with deadline(cur, self.timeout_s, f"source `{self.name}`"):
            cur.execute(f"ATTACH '{dsn}' AS {self.alias} (TYPE postgres, READ_ONLY)")

    def close(self, cur: duckdb.DuckDBPyConnection) -> None:
        cur.execute(f"DETACH DATABASE IF EXISTS {self.alias}")

    def clock(self, tables: Sequence[Table]) -> datetime:
        (now,), = self._meta("SELECT (now() AT TIME ZONE :tz)", {"tz": self.tz})
        return now.replace(microsecond=0)

    COLUMNS_SQL = ("SELECT table_name, column_name FROM information_schema.columns "
                   "WHERE table_schema = current_schema()")

    def columns(self, table: str) -> set[str] | None:
        return self._all_columns().get(table)

    can_probe = True

    def select_sql(self, table: Table, low: datetime | None, high: datetime,
                   columns: Sequence[str] | None = None, from_incl: bool = False) -> str:
        return self.where_sql(table, self._where(low, high, from_incl), columns)

    def where_sql(self, table: Table, where: str, columns: Sequence[str] | None = None) -> str:
        cols = ", ".join(_ident(c) for c in columns or table.column_names)
        inner = f"SELECT {cols} FROM {_ident(table.name)} WHERE {where}"
        return f"SELECT * FROM postgres_query('{self.alias}', '{inner.replace(chr(39), chr(39) * 2)}')"


class SqlAlchemySource(_EngineSource):
    """Any other SQLAlchemy URL (Oracle in production): chunked streaming into Arrow, as text."""

    kind = "sqlalchemy"

    def __init__(self, name: str, url: str, timeout_s: float, tz: str = "Asia/Shanghai") -> None:
        super().__init__(name, url, timeout_s, tz)
        self._engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.dialect = self._engine.dialect.name

    def _bound(self, value: datetime) -> object:
        return value.strftime(TS_FORMAT) if self.dialect == "sqlite" else value   # text compares as text there

    def open(self, cur: duckdb.DuckDBPyConnection, extension_dir: Path) -> None:
        if self.dialect == "sqlite":
            path = Path(make_url(self.url).database or "")
            if not path.exists():
                raise SourceUnavailable(f"source `{self.name}`: SQLite file {path} does not exist")
        self._meta("SELECT 1 FROM dual" if self.dialect == "oracle" else "SELECT 1")

    def clock(self, tables: Sequence[Table]) -> datetime:
        if self.dialect == "oracle":
            # LOCALTIMESTAMP depends on the session zone; SYSTIMESTAMP converted is explicit
            (now,), = self._meta("SELECT CAST(SYSTIMESTAMP AT TIME ZONE 'Asia/Shanghai' AS TIMESTAMP) FROM dual")
            return now.replace(microsecond=0)
        if self.dialect == "postgresql":
            (now,), = self._meta("SELECT (now() AT TIME ZONE :tz)", {"tz": self.tz})
            return now.replace(microsecond=0)
        newest = None
        insp_tables = set(sa.inspect(self._engine).get_table_names())
        for t in tables:
            if t.name in insp_tables:
                (v,), = self._meta(f"SELECT max(updated_at) FROM {_ident(t.name)}")
                p = parse_ts(v) if isinstance(v, str) else v
                if p is not None and (newest is None or p > newest):
                    newest = p
        return newest.replace(microsecond=0) if newest else local_now(self.tz)   # as SqliteSource

    def columns(self, table: str) -> set[str] | None:
        try:
            cols = sa.inspect(self._engine).get_columns(table)
        except sa.exc.NoSuchTableError:
            return None
        except sa.exc.SQLAlchemyError as exc:
            raise SourceUnavailable(f"source `{self.name}` ({self.describe()}): {exc}") from exc
        return {c["name"].lower() for c in cols} or None

    def prepare(self, cur: duckdb.DuckDBPyConnection, table: Table, low: datetime | None,
                high: datetime) -> str:
        self.stage(cur, table, low, high, "_raw")
        return "SELECT * FROM _raw"

    def stage(self, cur: duckdb.DuckDBPyConnection, table: Table, low: datetime | None,
              high: datetime, into: str) -> int:
        """Stream the window in chunks into temp table `into`; return the row count."""
        names = list(table.column_names)
        where = "updated_at <= :high" if low is None else "updated_at > :low AND updated_at <= :high"
        sql = sa.text(f"SELECT {', '.join(_ident(c) for c in names)} FROM {_ident(table.name)} WHERE {where}")
        params: dict[str, object] = {"high": high}
        if low is not None:
            params["low"] = low
        if self.dialect == "sqlite":     # text timestamps compare as text there
            params = {k: v.strftime(TS_FORMAT) for k, v in params.items()}
        schema = pa.schema([(c, pa.string()) for c in names])
        cur.execute(f"CREATE OR REPLACE TEMP TABLE {into} ({', '.join(f'{c} VARCHAR' for c in names)})")
        total = 0
        try:
            with self._engine.connect() as con:
                result = con.execution_options(stream_results=True, max_row_buffer=CHUNK_ROWS).execute(sql, params)
                while rows := result.fetchmany(CHUNK_ROWS):
                    arrays = [pa.array([_text(r[i]) for r in rows], pa.string()) for i in range(len(names))]
                    chunk = pa.Table.from_arrays(arrays, schema=schema)   # noqa: F841 (read by DuckDB)
                    cur.execute(f"INSERT INTO {into} SELECT * FROM chunk")
                    total += len(rows)
        except sa.exc.SQLAlchemyError as exc:
            raise SourceUnavailable(f"source `{self.name}` table `{table.name}`: {exc.__class__.__name__}: "
                                    f"{str(exc).splitlines()[0]}") from exc
        return total


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value)


def parse_ts(value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None      # a garbage updated_at is the loader's reject, not the clock's problem


def open_source(name: str, url: str, timeout_s: float, tz: str = "Asia/Shanghai",
                force_kind: str | None = None) -> Source:
    """The Source for a URL: scanner kinds for sqlite/postgresql, SQLAlchemy for the rest."""
    backend = make_url(url).get_backend_name()
    kind = force_kind or {"sqlite": "sqlite", "postgresql": "postgres"}.get(backend, "sqlalchemy")
    cls = {"sqlite": SqliteSource, "postgres": PostgresSource, "sqlalchemy": SqlAlchemySource}[kind]
    return cls(name, url, timeout_s, tz)


