"""`python -m etl status`: freshness, last run and row counts, from the warehouse or the snapshot."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from etl.contract import load_contract
from etl.settings import Settings


def current_snapshot(settings: Settings) -> Path | None:
    """The published serving_<v>.duckdb named by serving/CURRENT, None when there is none."""
    current = settings.serving_dir / "CURRENT"
    if not current.exists():
        return None
    version = current.read_text().strip()
    path = settings.serving_dir / f"serving_{version}.duckdb"
    return path if path.exists() else None


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, (v.isoformat(sep=" ") if hasattr(v, "isoformat") else v for v in r)))
            for r in cur.fetchall()]


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def collect(con: duckdb.DuckDBPyConnection, origin: str) -> dict[str, Any]:
    """Freshness, the last pass's run rows and row counts per source table."""
    have = _tables(con)
    out: dict[str, Any] = {"origin": origin, "freshness": [], "last_run": [], "tables": [], "sweeps": []}
    if "etl_freshness" in have:
        out["freshness"] = _rows(con, "SELECT * FROM etl_freshness ORDER BY source")
    if "etl_run" in have:
        out["last_run"] = _rows(con, """SELECT source, table_name, status, rows_read, rows_merged,
            rows_rejected, duration_ms, error FROM etl_run
            WHERE run_id = (SELECT max(run_id) FROM etl_run) ORDER BY source, table_name""")
    if {"etl_reread", "etl_reread_sweep"} <= have:
        # the long metering overlap: when its last sweep ended, and how far the running one got
        out["sweeps"] = _rows(con, """SELECT r.source, r.table_name, max(r.high) AS last_sweep_end,
                max(s.sweep_cursor) AS sweep_cursor
            FROM etl_reread r LEFT JOIN etl_reread_sweep s USING (source, table_name)
            GROUP BY ALL ORDER BY 1, 2""")
    if "source_table_stats" in have:
        out["tables"] = _rows(con, "SELECT source, table_name, row_count, max_updated_at "
                                   "FROM source_table_stats ORDER BY source, table_name")
    else:
        parts = [f"SELECT '{t.system}' AS source, '{t.name}' AS table_name, count(*) AS row_count, "
                 f"max(updated_at) AS max_updated_at FROM {t.name}"
                 for t in load_contract().tables.values() if t.name in have]
        if parts:
            out["tables"] = _rows(con, " UNION ALL ".join(parts))
    return out


def render_text(status: dict[str, Any]) -> str:
    """Plain-text report for a terminal."""
    lines = [f"read from: {status['origin']}", "", "freshness:"]
    for f in status["freshness"]:
        lines.append(f"  {f['source']:6} {f['last_status']:7} data up to {f['last_good_high']}  "
                     f"last pass {f['last_pass_at']}" + (f"  error: {f['last_error']}" if f["last_error"] else ""))
    failed = [r for r in status["last_run"] if r["status"] != "ok"]
    lines += ["", f"last run: {len(status['last_run'])} table loads, {len(failed)} failed"]
    lines += [f"  {r['source']}.{r['table_name']}: {r['error']}" for r in failed]
    if status["sweeps"]:
        lines += ["", "re-read of the long metering overlap:"]
        lines += [f"  {w['source']}.{w['table_name']}: last sweep ended at {w['last_sweep_end']}"
                  + (f", the next one has re-read up to {w['sweep_cursor']}" if w["sweep_cursor"] else "")
                  for w in status["sweeps"]]
    lines += ["", "rows per table:"]
    lines += [f"  {t['source']:6} {t['table_name']:28} {t['row_count']:>12}  newest {t['max_updated_at']}"
              for t in status["tables"]]
    return "\n".join(lines)
