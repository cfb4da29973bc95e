"""Command line: `python -m etl run --once | status [--format json] | rebuild | reconcile [--days N]`."""
from __future__ import annotations

import argparse
import json
import logging
import sys

import duckdb

from etl.errors import EtlError, WriterBusy
from etl.lock import acquire_writer_lock
from etl.settings import SettingsError, load_settings


def _summary(result) -> str:  # noqa: ANN001 (PassResult; imported lazily)
    lines = [f"run {result.run_id}: {'ok' if result.ok else 'FAILED'}"]
    for s in result:
        merged = sum(t.rows_merged for t in s.tables)
        rejected = sum(t.rows_rejected for t in s.tables)
        lines.append(f"  {s.source:6} {s.status:7} high={s.high} merged={merged} rejected={rejected}"
                     + (f"  error: {s.error}" if s.error else ""))
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    """One pass over the four sources; exit 0 only when every source succeeded."""
    from etl.pipeline import run_pass
    from etl.warehouse import Warehouse
    settings = load_settings()
    with acquire_writer_lock(settings.data_dir), Warehouse(settings.warehouse_path) as wh:
        result = run_pass(settings, wh)
    print(_summary(result))
    return 0 if result.ok else 1


def cmd_rebuild(args: argparse.Namespace) -> int:
    """Drop the warehouse file and load everything again."""
    from etl.pipeline import run_pass
    from etl.warehouse import Warehouse
    settings = load_settings()
    with acquire_writer_lock(settings.data_dir):
        for suffix in ("", ".wal"):
            path = settings.warehouse_path.with_name(settings.warehouse_path.name + suffix)
            path.unlink(missing_ok=True)
        with Warehouse(settings.warehouse_path) as wh:
            result = run_pass(settings, wh)
    print(_summary(result))
    return 0 if result.ok else 1


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Compare source and warehouse per creation day over the last N days; reload differences."""
    from etl.reconcile import reconcile
    from etl.warehouse import Warehouse
    settings = load_settings()
    with acquire_writer_lock(settings.data_dir), Warehouse(settings.warehouse_path) as wh:
        results = reconcile(settings, wh, days=args.days)
    bad = 0
    for r in results:
        if r.error or r.days_differing:
            bad += bool(r.error)
            print(f"{r.source}.{r.table_name}: {len(r.days_differing)} day(s) differed, {r.rows_merged} rows "
                  f"reloaded, {r.missing_at_source} missing at source" + (f"  error: {r.error}" if r.error else ""))
    print(f"reconciled {len(results)} tables over {args.days} days, {bad} failed")
    return 0 if not bad else 1


def cmd_status(args: argparse.Namespace) -> int:
    """Report freshness; reads the published snapshot when the worker holds the warehouse."""
    from etl.status import collect, current_snapshot, render_text
    settings = load_settings()
    try:
        lock = acquire_writer_lock(settings.data_dir)
    except WriterBusy:
        snap = current_snapshot(settings)
        if snap is None:
            print(f"The worker holds the warehouse and no snapshot is published yet under "
                  f"{settings.serving_dir} (CURRENT missing); try again after its first publish.",
                  file=sys.stderr)
            return 2
        con = duckdb.connect(str(snap), read_only=True, config={"threads": 1, "memory_limit": "512MB"})
        status = collect(con, f"snapshot {snap}")
    else:
        with lock:
            if not settings.warehouse_path.exists():
                print(f"No warehouse at {settings.warehouse_path}; run `python -m etl run --once` first.",
                      file=sys.stderr)
                return 2
            con = duckdb.connect(str(settings.warehouse_path), read_only=True,
                                 config={"threads": 1, "memory_limit": "512MB"})
            status = collect(con, f"warehouse {settings.warehouse_path}")
    con.close()
    print(json.dumps(status, ensure_ascii=False, indent=2, default=str) if args.format == "json"
          else render_text(status))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one ETL pass over the four sources")
    run.add_argument("--once", action="store_true", required=True,
                     help="one pass then exit (the worker schedules repeated passes)")
    run.set_defaults(func=cmd_run)
    sub.add_parser("rebuild", help="drop the warehouse and reload everything").set_defaults(func=cmd_rebuild)
    rc = sub.add_parser("reconcile", help="nightly: compare per day with the sources, reload differences")
    rc.add_argument("--days", type=int, default=7)
    rc.set_defaults(func=cmd_reconcile)
    st = sub.add_parser("status", help="freshness, last run, row counts")
    st.add_argument("--format", choices=("text", "json"), default="text")
    st.set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return args.func(args)
    except (WriterBusy, SettingsError, EtlError) as exc:
        print(str(exc), file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
