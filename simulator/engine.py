"""Turns generated row lives into writes: the history build (last version before the end) and live windows."""
from __future__ import annotations

import csv
import random
from collections.abc import Callable, Iterable
from pathlib import Path

from simulator import acd, marketing, metering, network, schema, service
from simulator.clock import DAY, ts
from simulator.life import SPOILS, Life, layout
from simulator.territory import Territory

Generator = Callable[[Territory, int, int], list[Life]]
# (name, function, horizon in days: no version of a row starts more than this after its day)
GENERATORS: tuple[tuple[str, Generator, int], ...] = (
    ("service", service.day, 25), ("network", network.day, 14), ("acd", acd.day, 1),
    ("marketing", marketing.day, 100), ("apps", marketing.apps, 120), ("arrears", marketing.arrears, 115),
    ("bills", marketing.bills, 110), ("metering", metering.day, 5), ("cases", metering.cases, 30))
# Days before the history start a generator also runs, so that the sources open as systems long in
# service: 业扩 applications already in progress, and arrears carried from earlier bills.
LEAD = {"apps": 90, "arrears": 1}
# systems each generator writes to (the history build runs the meter system in its own process)
WRITES = {"service": {"cs", "dist"}, "network": {"cs", "dist"}, "acd": {"cs"}, "marketing": {"mis"},
          "apps": {"mis", "cs"}, "arrears": {"mis"}, "bills": {"mis"}, "metering": {"meter"}, "cases": {"meter"}}
SELF_REF = {"cs_work_order", "dist_repair_task", "mis_payment", "mis_bill", "mis_org"}
BADROWS_HEADER = ("written_at", "source", "table_name", "key", "kind")


def table_order() -> dict[str, int]:
    """Contract order, which is also the order that satisfies the declared foreign keys."""
    return {name: k for k, name in enumerate(schema.load().tables)}


def generate(ter: Territory, seed: int, name: str, fn: Generator, d: int, bad_rate: float) -> list[Life]:
    """One generator's lives for day d, with bad rows spoiled by their own random stream."""
    lives = fn(ter, seed, d)
    if bad_rate > 0:
        rng = random.Random(f"{seed}:bad:{name}:{d}")
        for life in lives:
            if life.table in SPOILS and rng.random() < bad_rate:
                life.spoil(rng.choice(life.kinds()), rng)
    return lives


def row_at(life: Life, k: int) -> tuple:
    """Version k of a life as a full row: created_at = first write, updated_at = this write."""
    t, v = life.versions[k]
    if v[-2] is not None and k == 0:               # bulk rows arrive with both stamps filled in
        return v
    return v[:-3] + (v[-3] if v[-3] is not None else ts(life.versions[0][0]), ts(t), v[-1])


def key_text(table: str, row: tuple) -> str:
    cols, _, pos = layout(table)
    return "|".join(str(row[pos[c]]) for c in schema.load().tables[table].key)


def bad_line(life: Life) -> tuple:
    """The side-file line of a bad row: written_at, source, table_name, key, kind."""
    k = next(k for k, (t, _) in enumerate(life.versions) if t >= life.bad_at)
    row = row_at(life, k)
    return (ts(life.bad_at), life.table.split("_", 1)[0], life.table, key_text(life.table, row), life.bad)


class BadRowLog:
    """Side file listing every bad row written and its kind (CSV next to the databases)."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        new = fresh or not path.exists()
        self.f = path.open("w" if new else "a", newline="", encoding="utf-8")
        self.w = csv.writer(self.f)
        if new:
            self.w.writerow(BADROWS_HEADER)

    def add(self, life: Life) -> None:
        self.w.writerow(bad_line(life))

    def add_line(self, line: tuple) -> None:
        self.w.writerow(line)

    def close(self) -> None:
        self.f.close()


def final_rows(lives: Iterable[Life], end: int, bad: BadRowLog | None) -> dict[str, list[tuple]]:
    """For the history: each row as last written at or before `end`, grouped by table."""
    out: dict[str, list[tuple[int, tuple]]] = {}
    for life in lives:
        vs = life.versions
        if vs[0][0] > end:
            continue
        k = len(vs) - 1
        while vs[k][0] > end:
            k -= 1
        out.setdefault(life.table, []).append((vs[0][0], row_at(life, k)))
        if bad is not None and life.bad and life.bad_at <= end:
            bad.add(life)
    result = {}
    for table, rows in out.items():
        if table in SELF_REF:
            rows.sort(key=lambda r: r[0])
        result[table] = [r for _, r in rows]
    return result


def first_day(name: str, start_day: int) -> int:
    """First day a generator runs for a history starting on start_day."""
    return start_day - LEAD.get(name, 0)


def day_range(start_day: int, lo: int, hi: int, horizon: int) -> range:
    """Days whose rows may have a version in (lo, hi]."""
    return range(max(start_day, lo // DAY - horizon - 1), hi // DAY + 1)
