"""Component ids with a per-page prefix, so two pages never collide."""
from __future__ import annotations

from typing import Any


class PageIds:
    """`ids("org")` -> "repair-org"; `ids.match("tile", kpi)` -> a pattern-matching id."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def match(self, kind: str, key: Any) -> dict[str, Any]:
        return {"type": f"{self.prefix}-{kind}", "key": key}
