"""Simulator speed: history build time, and live throughput against city-scale daily volumes.

Run: .venv/bin/python bench/bench_simulator.py [--scale county] [--days 90] [--live-hours 24]
Writes into a temporary folder (never data/) and prints the figures for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import simulator  # noqa: E402
from simulator import live  # noqa: E402
from simulator.config import SYSTEMS  # noqa: E402
from simulator.territory import SCALES  # noqa: E402


def cpu_parts() -> tuple[float, float]:
    """CPU seconds of this process and of finished children (the build's meter process)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def cpu() -> float:
    return sum(cpu_parts())


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scale", default="county", choices=sorted(SCALES))
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--live-hours", type=int, default=24)
    p.add_argument("--step-minutes", type=int, default=10)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        urls = {s: f"sqlite:///{Path(tmp) / f'source_{s}.db'}" for s in SYSTEMS}
        print(f"load average before: {loadavg()}")
        w0, (own0, kids0) = time.perf_counter(), cpu_parts()
        counts = simulator.build(urls, scale=args.scale, seed=42, days=args.days, start=date(2026, 9, 1))
        wall = time.perf_counter() - w0
        own, kids = (a - b for a, b in zip(cpu_parts(), (own0, kids0)))
        size = sum(f.stat().st_size for f in Path(tmp).glob("source_*.db")) / 1e6
        # the two processes run side by side: on an idle 2-core machine the wall time is about
        # the larger of their CPU times
        print(f"build {args.scale} {args.days} days: {sum(counts.values()):,} rows, wall {wall:.1f} s, "
              f"cpu {own + kids:.1f} s (mis/cs/dist process {own:.1f} s, meter process {kids:.1f} s), "
              f"{size:.0f} MB; load average after: {loadavg()}")
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:6]
        print("  largest tables: " + ", ".join(f"{t} {n:,}" for t, n in top))
        runner = live.Live(urls)
        steps = args.live_hours * 60 // args.step_minutes
        rows = 0
        w0, c0 = time.perf_counter(), cpu()
        worst = 0.0
        for _ in range(steps):
            s0 = time.perf_counter()
            rows += sum(runner.step(args.step_minutes * 60).values())
            worst = max(worst, time.perf_counter() - s0)
        wall, cpu_s = time.perf_counter() - w0, cpu() - c0
        runner.close()
        sim_s = args.live_hours * 3600
        factor = SCALES["city"]["customers"] / SCALES[args.scale]["customers"]
        print(f"live {args.scale}: {args.live_hours} simulated h in {steps} steps of {args.step_minutes} min: "
              f"{rows:,} rows, wall {wall:.1f} s, cpu {cpu_s:.1f} s, slowest step {worst:.2f} s")
        print(f"  = {sim_s / wall:.0f}x real time at {args.scale}; city volumes are {factor:.0f}x larger, "
              f"so city needs {wall * factor / sim_s:.2f} wall s per simulated s (< 1 keeps up)")
    print("reproduce: .venv/bin/python bench/bench_simulator.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
