"""The catalogue's threshold grammar: 99.5 | a..b | rel:r | rel:a..b, and its comparison."""
from __future__ import annotations

import re
from dataclasses import dataclass

_NUM = r"-?\d+(?:\.\d+)?"
_GRAMMAR = re.compile(rf"^(?P<rel>rel:)?(?P<a>{_NUM})(?:\.\.(?P<b>{_NUM}))?$")


@dataclass(frozen=True)
class Threshold:
    relative: bool          # compare value / baseline instead of value
    low: float              # the single value, or the band's lower bound
    high: float | None      # band upper bound; None for a single value

    @property
    def is_band(self) -> bool:
        return self.high is not None


def parse_threshold(text: str | float | int) -> Threshold:
    """Parse one threshold; ValueError names the text and the accepted forms."""
    m = _GRAMMAR.match(str(text).strip())
    if m is None:
        raise ValueError(f"`{text}` is not a threshold; expected 99.5 | 0..7 | rel:1.3 | rel:0.9..1.1")
    low, high = float(m["a"]), (float(m["b"]) if m["b"] else None)
    if high is not None and high < low:
        raise ValueError(f"`{text}`: band runs from {low} down to {high}")
    return Threshold(relative=m["rel"] is not None, low=low, high=high)


def breached(t: Threshold, value: float, baseline: float | None, direction: str) -> bool | None:
    """True/False; None when a relative threshold has no usable baseline. Equality never breaches."""
    if t.relative:
        if not baseline:
            return None
        value = value / baseline
    if t.high is not None:
        return value < t.low or value > t.high
    return value < t.low if direction == "higher_better" else value > t.low


def breach_sql(t: Threshold, direction: str, value: str = "value", baseline: str = "baseline") -> str:
    """The same comparison as SQL over the named columns (NULL when no usable baseline)."""
    x = f"({value} / NULLIF({baseline}, 0))" if t.relative else value
    if t.high is not None:
        return f"({x} < {t.low!r} OR {x} > {t.high!r})"
    op = "<" if direction == "higher_better" else ">"
    return f"({x} {op} {t.low!r})"
