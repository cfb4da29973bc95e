"""Command line: python -m kpis check | list | evaluate."""
from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

from kpis.errors import KpiError
from kpis.registry import RegistryError, load_registry

OUTPUT_COLUMNS = ("kpi_id", "org_no", "org_level", "grain", "period_start", "period_end", "value",
                  "numerator", "denominator", "baseline", "status", "is_final", "computed_at")


def _check(_args: argparse.Namespace) -> int:
    registry = load_registry(check_sql=True)
    print(f"{len(registry.kpis)} KPIs in {len(registry.themes())} themes: all definitions valid "
          "and every query binds against the warehouse schema.")
    return 0


def _list(args: argparse.Namespace) -> int:
    registry = load_registry()
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(("id", "name_zh", "name_en", "theme", "unit", "direction", "grain", "warning",
                  "critical", "tier"))
    for k in registry.kpis.values():
        if args.theme and k.theme != args.theme:
            continue
        out.writerow((k.id, k.name_zh, k.name_en, k.theme, k.unit, k.direction, k.grain,
                      k.warning, k.critical, k.tier))
    return 0


def _fmt(v: object) -> object:
    if isinstance(v, datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, bool):
        return int(v)
    return v


def _evaluate(args: argparse.Namespace) -> int:
    from etl.errors import WriterBusy
    from etl.lock import acquire_writer_lock
    from etl.settings import load_settings
    from etl.warehouse import Warehouse
    from kpis.evaluate import ensure_schema, evaluate_kpi, periods_for, select_kpis
    from kpis.periods import parse_period
    from kpis.prelude import apply_prelude

    settings = load_settings()
    tz = ZoneInfo(settings.timezone)
    as_of = (datetime.fromisoformat(args.as_of) if args.as_of
             else datetime.now(tz).replace(tzinfo=None, microsecond=0))
    period = parse_period(args.period, as_of)
    registry = load_registry()
    kpis = select_kpis(registry, args.kpi)
    if not kpis:
        print(f"no KPI matches `{args.kpi}`; see `python -m kpis list`", file=sys.stderr)
        return 2
    try:
        lock = acquire_writer_lock(settings.data_dir)
    except WriterBusy as exc:
        print(f"kpis evaluate: {exc}", file=sys.stderr)
        return 3
    with lock:
        wh = Warehouse(settings.warehouse_path)
        con = wh.cursor()
        ensure_schema(con)
        apply_prelude(con)
        computed_at = datetime.now(tz).replace(tzinfo=None, microsecond=0)
        rows = []
        for k in kpis:
            for r in evaluate_kpi(con, k, periods_for(k, [period], as_of), as_of, args.level):
                rows.append(dict(zip(OUTPUT_COLUMNS, (*r, computed_at))))
    if args.format == "json":
        json.dump([{c: _fmt(v) for c, v in r.items()} for r in rows], sys.stdout,
                  ensure_ascii=False, indent=1)
        print()
    else:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(OUTPUT_COLUMNS)
        for r in rows:
            out.writerow([_fmt(r[c]) for c in OUTPUT_COLUMNS])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kpis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="validate every definition and bind its SQL").set_defaults(fn=_check)
    p_list = sub.add_parser("list", help="list the registry as CSV")
    p_list.add_argument("--theme")
    p_list.set_defaults(fn=_list)
    p_eval = sub.add_parser("evaluate", help="evaluate KPIs for a period and print them")
    p_eval.add_argument("--period", required=True, help="today | YYYY-MM-DD | YYYY-MM")
    p_eval.add_argument("--as-of", help="'YYYY-MM-DD HH:MM:SS' (default: now, Asia/Shanghai)")
    p_eval.add_argument("--level", choices=("province", "city", "county", "station", "grid"))
    p_eval.add_argument("--kpi", help="id or glob, e.g. 'repair.*'")
    p_eval.add_argument("--format", choices=("csv", "json"), default="csv")
    p_eval.set_defaults(fn=_evaluate)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except RegistryError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KpiError as exc:
        print(f"kpis: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
