"""Bulk writing into one source system: SQLite through sqlite3, PostgreSQL through psycopg COPY."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from simulator import schema


class SourceStore:
    """One open connection to one system's database, written in explicit transactions."""

    def __init__(self, system: str, url: str) -> None:
        self.system = system
        self.url = make_url(url)
        self.kind = self.url.get_backend_name()
        if self.kind not in ("sqlite", "postgresql"):
            raise ValueError(f"SOURCE_{system.upper()}_URL: backend `{self.kind}` is not supported "
                             "(use sqlite:///file.db or postgresql+psycopg://user@host/db)")
        if self.kind == "postgresql" and self.url.drivername != "postgresql+psycopg":
            self.url = self.url.set(drivername="postgresql+psycopg")
        self._engine = create_engine(self.url, poolclass=NullPool)
        self._fairy = self._engine.raw_connection()
        self.con = self._fairy.driver_connection
        if self.kind == "sqlite":
            self.con.isolation_level = None          # explicit BEGIN/COMMIT below
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("PRAGMA busy_timeout=30000")
        self.ph = "?" if self.kind == "sqlite" else "%s"

    def close(self) -> None:
        """Release the connection."""
        try:
            self._fairy.close()
        finally:
            self._engine.dispose()

    def begin(self) -> None:
        if self.kind == "sqlite":
            self.con.execute("BEGIN")

    def commit(self) -> None:
        if self.kind == "sqlite":
            self.con.execute("COMMIT")
        else:
            self.con.commit()

    def fast_build(self, on: bool) -> None:
        """SQLite: no fsync while the history is written (the build is redone if it dies)."""
        if self.kind == "sqlite":
            # no rollback journal while building: a WAL would hold the whole history a second time
            self.con.execute(f"PRAGMA journal_mode={'OFF' if on else 'WAL'}")
            self.con.execute(f"PRAGMA synchronous={'OFF' if on else 'NORMAL'}")
            # the primary-key B-trees of the daily tables are hit at random places: keep them in memory
            self.con.execute(f"PRAGMA cache_size={-200_000 if on else -2000}")
            self.con.execute(f"PRAGMA temp_store={'MEMORY' if on else 'DEFAULT'}")

    def create_schema(self, defer_indexes: bool = False) -> None:
        """Drop this system's contract tables (if any) and create them from the contract DDL.

        With defer_indexes the secondary indexes wait for create_indexes(): building them once
        after a bulk load is several times faster than maintaining them row by row."""
        contract = schema.load()
        names = [t.name for t in contract.tables.values() if t.system == self.system]
        cur = self.con.cursor()
        self.begin()
        for name in reversed(names):
            cur.execute(f"DROP TABLE IF EXISTS {name}" + (" CASCADE" if self.kind == "postgresql" else ""))
        self._deferred = []
        for stmt in contract.statements[self.system]:
            if defer_indexes and stmt.startswith("CREATE INDEX"):
                self._deferred.append(stmt)
            else:
                cur.execute(stmt)
        self.commit()

    def create_indexes(self) -> None:
        """Create the indexes held back by create_schema(defer_indexes=True)."""
        cur = self.con.cursor()
        for stmt in getattr(self, "_deferred", []):
            cur.execute(stmt)
        self._deferred = []

    def insert(self, table: str, rows: Sequence[Sequence[object]]) -> None:
        """Append rows (full column tuples in contract order) inside the open transaction."""
        if not rows:
            return
        cols = schema.load().tables[table].columns
        if self.kind == "sqlite":
            marks = ",".join("?" * len(cols))
            self.con.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
            return
        with self.con.cursor() as cur, cur.copy(f"COPY {table} ({','.join(cols)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def upsert(self, table: str, rows: Iterable[Sequence[object]]) -> None:
        """Insert rows or overwrite the existing row with the same primary key."""
        rows = list(rows)
        if not rows:
            return
        t = schema.load().tables[table]
        marks = ",".join([self.ph] * len(t.columns))
        sets = ",".join(f"{c}=excluded.{c}" for c in t.columns if c not in t.key and c != "created_at")
        sql = (f"INSERT INTO {table} ({','.join(t.columns)}) VALUES ({marks}) "
               f"ON CONFLICT ({','.join(t.key)}) DO UPDATE SET {sets}")
        cur = self.con.cursor()
        cur.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """Small read helper (the SQL must use this store's placeholder)."""
        cur = self.con.cursor()
        cur.execute(sql, params)
        return cur.fetchall()
