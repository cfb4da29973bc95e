"""Simulator speed: history build time, and live throughput against city-scale daily volumes.

Run: .venv/bin/python bench/bench_simulator.py [--scale county] [--days 90] [--live-hours 24]
Writes into a temporary folder (never data/) and prints the figures for bench/RESULTS.md.

City live, on an existing build (a city build takes half an hour; the folder is written to,
so give it a copy):
  .venv/bin/python bench/bench_simulator.py --from COPY --realtime-minutes 10 --speed 1 \\
      --live-hours 24 --step-minutes 30
prints the start-up (generating the days still open), a run following wall time x speed (one
step per wall second, with how many steps overran their second and the lag at the end), then an
accelerated run in fixed steps (with the step that crosses midnight), and the peak RSS.
"""
from __future__ import annotations

import argparse
import gc
import resource
import shutil
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


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def rss_now_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1e6


def build(args: argparse.Namespace, folder: Path) -> dict[str, str]:
    urls = {s: f"sqlite:///{folder / f'source_{s}.db'}" for s in SYSTEMS}
    print(f"load average before: {loadavg()}")
    w0, (own0, kids0) = time.perf_counter(), cpu_parts()
    counts = simulator.build(urls, scale=args.scale, seed=42, days=args.days, start=date(2026, 9, 1))
    wall = time.perf_counter() - w0
    own, kids = (a - b for a, b in zip(cpu_parts(), (own0, kids0)))
    size = sum(f.stat().st_size for f in folder.glob("source_*.db")) / 1e6
    # the two processes run side by side: on an idle 2-core machine the wall time is about
    # the larger of their CPU times
    print(f"build {args.scale} {args.days} days: {sum(counts.values()):,} rows, wall {wall:.1f} s, "
          f"cpu {own + kids:.1f} s (mis/cs/dist process {own:.1f} s, meter process {kids:.1f} s), "
          f"{size:.0f} MB; load average after: {loadavg()}")
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:6]
    print("  largest tables: " + ", ".join(f"{t} {n:,}" for t, n in top))
    return urls


def start_up(runner: "live.Live") -> None:
    """Generate the days still open (what the first step used to do), timed on its own."""
    w0, c0 = time.perf_counter(), cpu()
    if hasattr(runner, "prepare"):
        runner.prepare()
    print(f"start-up (days still open generated): wall {time.perf_counter() - w0:.1f} s, cpu {cpu() - c0:.1f} s, "
          f"RSS now {rss_now_mb():,.0f} MB, peak {rss_peak_mb():,.0f} MB; load average {loadavg()}")
    if hasattr(runner, "generate_ahead"):
        runner.generate_ahead()


def accelerated(runner: "live.Live", scale: str, hours: float, step_minutes: float, verbose: bool) -> None:
    steps = int(hours * 60 // step_minutes)
    rows = 0
    w0, c0, l0 = time.perf_counter(), cpu(), loadavg()
    worst = 0.0
    for k in range(steps):
        s0 = time.perf_counter()
        day = runner.state.clock // 86400
        rows += sum(runner.step(int(step_minutes * 60)).values())
        took = time.perf_counter() - s0
        worst = max(worst, took)
        if runner.state.clock // 86400 != day:
            print(f"  midnight step: {took:.2f} s wall", flush=True)
        if verbose and (k + 1) % max(1, int(60 // step_minutes)) == 0:
            print(f"  {(k + 1) * step_minutes / 60:g} h: {rows:,} rows, wall {time.perf_counter() - w0:.0f} s, "
                  f"cpu {cpu() - c0:.0f} s, RSS {rss_now_mb():,.0f} MB, load {loadavg()}", flush=True)
    wall, cpu_s = time.perf_counter() - w0, cpu() - c0
    sim_s = steps * step_minutes * 60
    print(f"live {scale}: {sim_s / 3600:g} simulated h in {steps} steps of {step_minutes:g} min: "
          f"{rows:,} rows, wall {wall:.1f} s, cpu {cpu_s:.1f} s, slowest step {worst:.2f} s, "
          f"{sim_s / wall:.0f} simulated s per wall s ({sim_s / cpu_s:.0f} per CPU s); "
          f"RSS peak {rss_peak_mb():,.0f} MB; load average {l0} -> {loadavg()}")
    if scale != "city":
        factor = SCALES["city"]["customers"] / SCALES[scale]["customers"]
        print(f"  city volumes are {factor:.0f}x larger: by proportion city needs {wall * factor / sim_s:.2f} "
              f"wall s per simulated s (< 1 keeps up)")


def realtime(runner: "live.Live", scale: str, minutes: float, speed: float) -> None:
    """As `simulator live --speed F` runs: every wall second, a step of the simulated time elapsed."""
    began = time.perf_counter()
    c0, l0 = cpu(), loadavg()
    clock0 = runner.state.clock
    rows, steps, over, worst, durations = 0, 0, 0, 0.0, []
    for whole in live.paced(speed, minutes * 60, 1.0):    # the pacing of `simulator live`
        s0 = time.perf_counter()
        rows += sum(runner.step(whole).values())
        took = time.perf_counter() - s0
        durations.append(took)
        steps += 1
        over += took > 1.0
        worst = max(worst, took)
    wall = time.perf_counter() - began
    sim = runner.state.clock - clock0
    durations.sort()
    median = durations[len(durations) // 2] if durations else 0.0
    print(f"real time {scale} at speed {speed:g}: {wall:.0f} wall s, {sim:,} simulated s "
          f"({sim / wall:.2f} simulated s per wall s; lag at the end {wall * speed - sim:.0f} simulated s), "
          f"{rows:,} rows in {steps} steps; step wall median {median:.3f} s, slowest {worst:.2f} s, "
          f"{over} of {steps} over their 1 s slot; cpu {cpu() - c0:.1f} s; RSS peak {rss_peak_mb():,.0f} MB; "
          f"load average {l0} -> {loadavg()}")
    pending = getattr(runner, "_pending", {})
    if pending:
        ready = sum(job.done() for job in pending.values())
        print(f"  next day generated ahead in the background: {ready} of {len(pending)} generator-days ready")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scale", default="county", choices=sorted(SCALES))
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--live-hours", type=float, default=24)
    p.add_argument("--step-minutes", type=float, default=10)
    p.add_argument("--from", dest="source", type=Path, default=None,
                   help="run live on this existing build (written to: give a copy) instead of building")
    p.add_argument("--realtime-minutes", type=float, default=0, help="then follow wall time x --speed")
    p.add_argument("--speed", type=float, default=1.0)
    args = p.parse_args()
    tmp = tempfile.mkdtemp()
    try:
        if args.source is not None:
            urls = {s: f"sqlite:///{args.source / f'source_{s}.db'}" for s in SYSTEMS}
        else:
            urls = build(args, Path(tmp))
        gc.disable()                     # as `python -m simulator live` runs
        runner = live.Live(urls)
        scale = runner.state.scale
        print(f"live from {runner.state.clock} (simulated second), scale {scale}; territory built, "
              f"RSS {rss_now_mb():,.0f} MB")
        try:
            start_up(runner)
            # real time first: its minutes are the hardest, the next day being generated meanwhile
            if args.realtime_minutes:
                realtime(runner, scale, args.realtime_minutes, args.speed)
            if args.live_hours:
                accelerated(runner, scale, args.live_hours, args.step_minutes, args.source is not None)
        finally:
            runner.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("reproduce: .venv/bin/python bench/bench_simulator.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
