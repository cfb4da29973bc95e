"""A row's life: the successive versions a source writes for one primary key, and bad-row spoiling."""
from __future__ import annotations

import random
from functools import lru_cache

from simulator import schema
from simulator.clock import parse_ts, ts

BAD_KINDS = ("unknown_code", "unknown_org", "end_before_start", "missing_required",
             "negative_energy", "soft_delete")
UNKNOWN_ORG = "X00000000"
# How each kind spoils a table (column, value or the start column it is put before).
# Tables whose org_no has a declared foreign key get no unknown_org: the source itself refuses it.
SPOILS: dict[str, dict[str, tuple[str, object]]] = {
    "cs_work_order": {"unknown_code": ("accept_channel", "ZZ"), "unknown_org": ("org_no", UNKNOWN_ORG),
                      "end_before_start": ("close_time", "accept_time"),
                      "missing_required": ("accept_channel", "")},
    "cs_call": {"unknown_code": ("call_result", "ZZ"), "unknown_org": ("org_no", UNKNOWN_ORG),
                "end_before_start": ("end_time", "arrive_time"), "missing_required": ("call_direction", "")},
    "dist_repair_task": {"unknown_code": ("fault_type", "ZZZZ"), "unknown_org": ("org_no", UNKNOWN_ORG),
                         "end_before_start": ("arrive_time", "receive_time"),
                         "missing_required": ("org_no", "")},
    "meter_collection_daily": {"unknown_code": ("coll_status", "ZZ"), "unknown_org": ("org_no", UNKNOWN_ORG),
                               "end_before_start": ("success_time", "first_try_time"),
                               "missing_required": ("org_no", ""), "negative_energy": ("day_kwh", None)},
    "mis_payment": {"unknown_code": ("pay_channel", "ZZZZ"), "end_before_start": ("acct_time", "pay_time"),
                    "missing_required": ("pay_channel", "")},
}


@lru_cache(maxsize=None)
def layout(table: str) -> tuple[tuple[str, ...], tuple[object, ...], dict[str, int]]:
    """Columns, per-column defaults and column positions of a contract table."""
    t = schema.load().tables[table]
    defaults = tuple(t.defaults.get(c) for c in t.columns)
    return t.columns, defaults, {c: i for i, c in enumerate(t.columns)}


class Life:
    """Versions (simulated second, full row tuple) of one row, oldest first."""
    __slots__ = ("table", "row", "versions", "bad", "bad_at")

    def __init__(self, table: str, t: int, row: dict[str, object] | None = None,
                 versions: list[tuple[int, tuple]] | None = None) -> None:
        self.table = table
        self.bad: str | None = None
        self.bad_at = -1
        if versions is not None:            # pre-built tuples (bulk tables)
            self.row = None
            self.versions = versions
            return
        self.row = row or {}
        self.versions = []
        self._snap(t)

    def _snap(self, t: int) -> None:
        cols, defaults, _ = layout(self.table)
        self.versions.append((t, tuple(map(self.row.get, cols, defaults))))

    def set(self, t: int, **changes: object) -> "Life":
        """Write a new version at simulated second t (never before the previous one)."""
        t = max(t, self.versions[-1][0])
        self.row.update(changes)
        self._snap(t)
        return self

    @property
    def start(self) -> int:
        return self.versions[0][0]

    def spoil(self, kind: str, rng: random.Random) -> None:
        """Make this row a bad row of `kind` (every version, or a later soft delete)."""
        _, _, pos = layout(self.table)
        last_t, last = self.versions[-1]
        if kind == "soft_delete":
            t = last_t + rng.randint(3600, 6 * 3600)
            self.versions.append((t, last[:-1] + (1,)))
            self.bad, self.bad_at = kind, t
            return
        col, value = SPOILS[self.table][kind]
        i = pos[col]
        shift = rng.randint(60, 3600)
        out = []
        for t, v in self.versions:
            v = list(v)
            if kind == "end_before_start":
                start = v[pos[str(value)]]
                if v[i] is not None and start is not None:
                    v[i] = ts(_sec(start) - shift)
            elif kind == "negative_energy":
                v[i] = -round(abs(v[i] or 0.0) + 1.0, 4)
            else:
                v[i] = value
            out.append((t, tuple(v)))
        changed = [t for (t, new), (_, old) in zip(out, self.versions) if new != old]
        self.versions = out
        if changed:
            self.bad, self.bad_at = kind, changed[0]

    def kinds(self) -> tuple[str, ...]:
        """Bad kinds that apply to this row's table."""
        return tuple(SPOILS.get(self.table, {})) + ("soft_delete",)


def _sec(text: object) -> int:
    return parse_ts(str(text))
