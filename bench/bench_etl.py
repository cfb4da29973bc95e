"""ETL speed: initial load (rows/s end to end) and one incremental pass with a one-minute delta.

Usage: python bench/bench_etl.py [--scale county] [--days 30] [--dir DIR] [--kind scanner|sqlalchemy]
Builds the simulator's SQLite sources in DIR (reused when present), loads a fresh warehouse, then
restamps a one-minute share of every table's daily volume (what live mode writes in a minute) and
times one incremental pass. Prints the figures and the command that reproduces them.
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from etl.contract import load_contract  # noqa: E402
from etl.pipeline import run_pass  # noqa: E402
from etl.settings import SOURCE_NAMES, load_settings  # noqa: E402
from etl.sources import TS_FORMAT, local_now  # noqa: E402
from etl.warehouse import Warehouse  # noqa: E402


def build(root: Path, scale: str, days: int) -> float:
    import simulator
    urls = {s: f"sqlite:///{root / f'source_{s}.db'}" for s in SOURCE_NAMES}
    if all((root / f"source_{s}.db").exists() for s in SOURCE_NAMES):
        return 0.0
    t = time.monotonic()
    simulator.build(urls, scale=scale, seed=42, days=days, side=root / "side")
    return time.monotonic() - t


def restamp_minute(root: Path, days: int) -> int:
    """Give a one-minute share of each table's rows a fresh updated_at (at least one row)."""
    stamp = (local_now() - timedelta(seconds=1)).strftime(TS_FORMAT)
    total = 0
    for t in load_contract().tables.values():
        con = sqlite3.connect(root / f"source_{t.system}.db")
        n = con.execute(f"SELECT count(*) FROM {t.name}").fetchone()[0]
        share = max(1, n // (days * 1440))
        con.execute(f"UPDATE {t.name} SET updated_at = ? WHERE rowid IN "
                    f"(SELECT rowid FROM {t.name} ORDER BY random() LIMIT ?)", [stamp, share])
        con.commit()
        con.close()
        total += share
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="county", choices=("small", "county", "city"))
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--kind", default="scanner", choices=("scanner", "sqlalchemy"))
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench_etl_"))
    root.mkdir(parents=True, exist_ok=True)
    built = build(root, args.scale, args.days)
    env = {"DATA_DIR": str(root / f"data_{args.kind}"), "ETL_SAFETY_LAG_S": "0",
           **{f"SOURCE_{s.upper()}_URL": f"sqlite:///{root / f'source_{s}.db'}" for s in SOURCE_NAMES}}
    settings = load_settings(env)
    for p in settings.warehouse_path.parent.glob("warehouse.duckdb*"):
        p.unlink()
    force = "sqlalchemy" if args.kind == "sqlalchemy" else None
    with Warehouse(settings.warehouse_path, threads=2, memory_limit="4GB") as wh:
        t = time.monotonic()
        r = run_pass(settings, wh, force_kind=force)
        initial = time.monotonic() - t
        rows = sum(x.rows_read for s in r for x in s.tables)
        print(f"build ({args.scale}, {args.days} d): {built:.1f} s (0 = reused)")
        print(f"initial load [{args.kind}]: {rows:,} rows in {initial:.2f} s = {rows / initial:,.0f} rows/s, ok={r.ok}")
        slow = sorted(((x.duration_ms, x.table_name, x.rows_read) for s in r for x in s.tables), reverse=True)[:5]
        print("  slowest tables: " + ", ".join(f"{n} {ms} ms ({rr:,} rows)" for ms, n, rr in slow))
        delta = restamp_minute(root, args.days)
        t = time.monotonic()
        r2 = run_pass(settings, wh, force_kind=force)
        inc = time.monotonic() - t
        read = sum(x.rows_read for s in r2 for x in s.tables)
        merged = sum(x.rows_merged for s in r2 for x in s.tables)
        print(f"incremental pass [{args.kind}]: {inc:.2f} s, one-minute delta {delta:,} rows restamped, "
              f"{read:,} rows read (overlap incl.), {merged:,} merged, ok={r2.ok}")
        slow = sorted(((x.duration_ms, x.table_name, x.rows_read) for s in r2 for x in s.tables), reverse=True)[:5]
        print("  slowest tables: " + ", ".join(f"{n} {ms} ms ({rr:,} rows)" for ms, n, rr in slow))
    print(f"reproduce: python bench/bench_etl.py --scale {args.scale} --days {args.days} --kind {args.kind}"
          + (f" --dir {root}" if args.dir else ""))


if __name__ == "__main__":
    main()
