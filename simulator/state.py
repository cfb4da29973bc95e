"""The simulator's persisted clock (state file next to the SQLite files, or in DATA_DIR)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "simulator_state.json"
BADROWS_FILE = "simulator_badrows.csv"


@dataclass
class State:
    """What a live run needs to continue exactly where the build or the last run stopped."""
    scale: str
    seed: int
    start_day: int
    days: int
    clock: int                                   # simulated second reached
    written: dict[str, int] = field(default_factory=dict)   # per system: rows written up to
    bad_rates: list[list[float]] = field(default_factory=list)  # [[from_day, rate], ...]

    def bad_rate(self, day: int) -> float:
        rate = 0.0
        for first, r in self.bad_rates:
            if day >= first:
                rate = r
        return rate


def load(side: Path) -> State:
    path = side / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no simulator state; run `python -m simulator build` first")
    return State(**json.loads(path.read_text(encoding="utf-8")))


def save(side: Path, st: State) -> None:
    """Write atomically so a killed run never leaves half a file."""
    side.mkdir(parents=True, exist_ok=True)
    tmp = side / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(st), indent=1), encoding="utf-8")
    os.replace(tmp, side / STATE_FILE)
