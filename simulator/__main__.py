"""Command line: `python -m simulator build|live|outage ...` against the configured source URLs."""
from __future__ import annotations

import argparse
import logging
import sys
from datetime import date

from simulator import faults, history, live
from simulator.config import SYSTEMS, side_dir, source_urls
from simulator.territory import SCALES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="replace the source tables and write the history")
    b.add_argument("--scale", choices=sorted(SCALES), default="county")
    b.add_argument("--seed", type=int, default=42)
    b.add_argument("--days", type=int, default=90)
    b.add_argument("--start", type=date.fromisoformat, default=None, help="YYYY-MM-DD (default: today - days)")
    b.add_argument("--bad-rows", type=float, default=0.0)
    lv = sub.add_parser("live", help="keep the sources moving from the saved clock")
    lv.add_argument("--speed", type=float, default=1.0)
    lv.add_argument("--bad-rows", type=float, default=None)
    lv.add_argument("--seconds", type=float, default=None, help="stop after this many wall seconds")
    lv.add_argument("--follow-wall-clock", action="store_true",
                    help="first catch up with the wall clock (Asia/Shanghai) when the saved clock is behind")
    o = sub.add_parser("outage", help="make one source unreachable for a while")
    o.add_argument("--source", choices=SYSTEMS, required=True)
    o.add_argument("--seconds", type=float, default=60)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    urls = source_urls()
    if args.cmd == "build":
        counts = history.build(urls, args.scale, args.seed, args.days, args.start, args.bad_rows)
        print(f"built {args.scale}: {sum(counts.values())} rows in {len(counts)} tables")
    elif args.cmd == "live":
        live.run(urls, speed=args.speed, seconds=args.seconds, bad_rows=args.bad_rows,
                 follow_wall_clock=args.follow_wall_clock)
    else:
        faults.outage(urls, args.source, args.seconds, side_dir(urls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
