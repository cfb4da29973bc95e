"""Rows that hold a current state rather than an event: repair crews follow their tasks, and
terminals are stamped by the master station's heartbeat."""
from __future__ import annotations

from collections.abc import Iterable

from simulator import heartbeat
from simulator.life import Life, layout
from simulator.territory import Territory, crew_row, terminal_row

# crew status (CREW_STATUS) while one of its tasks is in a given task status
CREW_BY_TASK = {"02": "02", "03": "02", "04": "03", "05": "04", "06": "04"}


class CrewLog:
    """Crew status changes derived from the repair tasks: a crew is on site, travelling or
    dispatched while any of its tasks is, and free once all are replied."""

    def __init__(self, ter: Territory) -> None:
        self.ter = ter
        self.events: dict[str, list[tuple[int, str, str]]] = {}   # crew -> (t, task_id, crew status)
        _, _, pos = layout("dist_repair_task")
        self._crew, self._status, self._task = pos["crew_id"], pos["status_code"], pos["task_id"]

    def add(self, lives: Iterable[Life]) -> None:
        for life in lives:
            if life.table != "dist_repair_task":
                continue
            crew = None
            for t, v in life.versions:
                crew = v[self._crew] or crew
                if crew is not None and v[self._status] not in ("01",):
                    self.events.setdefault(crew, []).append(
                        (t, v[self._task], CREW_BY_TASK.get(v[self._status], "01")))

    def versions(self, crew: str) -> list[tuple[int, str]]:
        """(t, status) each time the crew's status changes."""
        active: dict[str, str] = {}
        out: list[tuple[int, str]] = []
        current = "01"
        events = sorted(self.events.get(crew, ()))
        for k, (t, task, status) in enumerate(events):
            if status == "01":
                active.pop(task, None)
            else:
                active[task] = status
            if k + 1 < len(events) and events[k + 1][0] == t:
                continue                          # several changes in one second: keep the last
            now = max(active.values()) if active else "01"
            if now != current:
                out.append((t, now))
                current = now
        return out

    def rows(self, hi: int, lo: int | None = None) -> list[tuple]:
        """Crew rows whose latest status change is at or before hi (and after lo, when given)."""
        out = []
        for station, crews in self.ter.crews.items():
            for k, crew in enumerate(crews):
                last = [v for v in self.versions(crew) if v[0] <= hi]
                if last and (lo is None or last[-1][0] > lo):
                    t, status = last[-1]
                    out.append(crew_row(self.ter, station, k, status, t))
        return out


def terminal_rows(ter: Territory, seed: int, lo: int, hi: int) -> list[tuple]:
    """meter_terminal rows of the terminals heard in (lo, hi], stamped with their last heartbeat."""
    k, beat = heartbeat.beats_in(seed, len(ter.tgs), lo, hi)
    return [terminal_row(ter, int(i), int(b)) for i, b in zip(k.tolist(), beat.tolist())]

