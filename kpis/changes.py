"""What the ETL changed after a given run, column by column: results kept between passes (stored
days, kpis/day_store.py; the kept table k_settle_mp, kpis/prelude.py) stay valid while no run
after the one they were computed at changed a column they read.

The ETL's own record: etl_run names every table a run merged rows into (rows_merged > 0),
etl_dirty the tables with business dates, and etl_changed, for those, the columns in which a
merged row differs from the version it replaced, with a marker '' when it compared them and
'*' when a row was new or the versions were not compared. A run without the marker (a table
without business dates, a run whose markers were dropped after CHANGED_KEEP_RUNS, a full load)
counts as having changed every column. etl_dirty also names, per date, the columns changed in
the rows carrying it (`dirty_dates`): an ordinary pass opens a KPI's past day only for those it
reads (`touches`). A warehouse without the ETL's tables (a test database
filled by hand) has no record: then nothing counts as known (`top_run` is None, `Changes.known`
false) and whatever is kept is read again; one with dirty marks but no run log is read from the
marks alone.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping

import duckdb

Columns = frozenset[str] | None     # None: any column (a star, the org tree, an unknown change)


def top_run(con: duckdb.DuckDBPyConnection) -> int | None:
    """The newest ETL run whose merges the warehouse holds (None: no ETL record)."""
    try:
        return con.execute("SELECT GREATEST((SELECT MAX(run_id) FROM etl_run), "
                           "(SELECT MAX(run_id) FROM etl_dirty), 0)").fetchone()[0]
    except duckdb.CatalogException:
        return None


class Changes:
    """The runs after `since` that merged rows into `tables`, with the columns each changed."""

    def __init__(self, con: duckdb.DuckDBPyConnection, since: int, tables: Collection[str]) -> None:
        self.since = since
        self.known = True      # False: the ETL's record is missing; every table counts as changed
        self._runs: dict[str, list[tuple[int, frozenset[str] | None]]] = {}
        try:
            rows = self._read(con, since, tables, with_runs=True)
        except duckdb.CatalogException:
            try:    # a warehouse with the dirty marks but no run log (a test filled by hand)
                rows = self._read(con, since, tables, with_runs=False)
            except duckdb.CatalogException:
                self.known = False
                return
        for table, run, marks in rows:
            marks = set(marks or ())
            cols = None if "" not in marks or "*" in marks else frozenset(marks - {""})
            self._runs.setdefault(table, []).append((run, cols))

    @staticmethod
    def _read(con: duckdb.DuckDBPyConnection, since: int, tables: Collection[str],
              with_runs: bool) -> list[tuple]:
        merged = ("""SELECT run_id, table_name FROM etl_run
                     WHERE run_id > $since AND rows_merged > 0 AND list_contains($t, table_name)
                     UNION """ if with_runs else "")
        return con.execute(f"""
            WITH runs AS (
                {merged}SELECT run_id, table_name FROM etl_dirty
                WHERE run_id > $since AND list_contains($t, table_name))
            SELECT r.table_name, r.run_id,
                   list(c.column_name) FILTER (WHERE c.column_name IS NOT NULL)
            FROM runs r LEFT JOIN etl_changed c ON c.run_id = r.run_id AND c.table_name = r.table_name
            GROUP BY r.table_name, r.run_id""", {"since": since, "t": sorted(tables)}).fetchall()

    def last_touch(self, reads: Mapping[str, Columns]) -> int | None:
        """The newest run after `since` that changed a column of `reads` (table -> the columns
        read, None: any), or None when no run did. Without the record (not known): a run after
        any other."""
        if not self.known:
            return 2 ** 62
        out = None
        for table, cols in reads.items():
            for run, changed in self._runs.get(table, ()):
                if (changed is None or cols is None or changed & cols) and (out is None or run > out):
                    out = run
        return out


def touches(changed: Columns, read: Columns) -> bool:
    """Whether a change of `changed` columns (None: any) reaches a reader of `read` (None: any)."""
    return changed is None or read is None or bool(changed & read)


def dirty_dates(con: duckdb.DuckDBPyConnection, since: int | None,
                tables: Collection[str] | None = None) -> list[tuple[str, object, Columns]]:
    """(table, business date, the columns changed in its rows carrying the date; None: any) that
    the runs after `since` (None: every run) marked dirty, one entry per table and date. A mark
    without the column record (etl_dirty of an older warehouse, a test's hand-made table) counts
    as any column. Raises duckdb.CatalogException when there is no etl_dirty."""
    where = "($since IS NULL OR run_id > $since)"
    params: dict[str, object] = {"since": since}
    if tables is not None:
        where += " AND list_contains($t, table_name)"
        params["t"] = sorted(tables)
    try:
        rows = con.execute(f"""
            SELECT table_name, business_date,
                   CASE WHEN bool_or(changed_columns IS NULL) THEN NULL
                        ELSE list_distinct(flatten(list(changed_columns))) END
            FROM etl_dirty WHERE {where} GROUP BY table_name, business_date""", params).fetchall()
    except duckdb.BinderException:
        rows = con.execute(f"SELECT DISTINCT table_name, business_date, NULL FROM etl_dirty "
                           f"WHERE {where}", params).fetchall()
    return [(t, d, None if cols is None else frozenset(cols)) for t, d, cols in rows]
