"""The alarm state machine as a table of sequences (pure function, no I/O)."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from kpis.alarms import Alarm, Policy, State, breaches, observe, step

T0 = datetime(2026, 10, 15, 8, 0)
# warning 98, critical 95, clear 98.5, higher_better (STYLE.md §12 example)
POLICY = Policy(pending=2, recover_after=2, repeat=timedelta(hours=4), clear="98.5")


def status_of(value: float | None) -> str:
    """The engine's status for the example thresholds, worked by hand."""
    if value is None:
        return "no_data"
    return "critical" if value < 95 else "warning" if value < 98 else "ok"


def run(values: list, minutes: int = 1, policy: Policy = POLICY) -> tuple[list[str], list[tuple]]:
    alarm, states, events = Alarm(), [], []
    for i, v in enumerate(values):
        now = T0 + timedelta(minutes=minutes * i)
        if v == "stale":
            obs = observe("ok", None, None, "higher_better", "98", policy.clear, stale=True)
        elif v == "small":
            obs = observe("insufficient_sample", 50.0, None, "higher_better", "98", policy.clear)
        else:
            obs = observe(status_of(v), v, None, "higher_better", "98", policy.clear)
        alarm, ev = step(alarm, obs, policy, now)
        states.append(str(alarm.state) + ("/held" if alarm.held else ""))
        events.extend((i, e) for e in ev)
    return states, events


@pytest.mark.parametrize(("values", "states", "events"), [
    ([99, 97, 96, 98.2, 98.7, 98.9], ["ok", "pending", "firing", "firing", "recovering", "ok"],
     [(2, "firing"), (5, "resolved")]),
    ([97.9, 98.1, 97.9, 98.1], ["pending", "ok", "pending", "ok"], []),          # a blip never fires
    ([None, 97, 97], ["no_data", "pending", "firing"], [(2, "firing")]),          # no data is not a breach
    ([97, 97, None, None, 99, 99], ["pending", "firing", "firing", "firing", "recovering", "ok"],
     [(1, "firing"), (5, "resolved")]),                                          # nor a recovery
    ([97, 97, 98.7, 97, 98.7, 98.7], ["pending", "firing", "recovering", "firing", "recovering", "ok"],
     [(1, "firing"), (5, "resolved")]),                                          # relapse does not re-fire
    (["small", "small", 97, 97], ["insufficient_sample", "insufficient_sample", "pending", "firing"],
     [(3, "firing")]),                                                           # small sample never fires
    ([97, 97, 94], ["pending", "firing", "firing"], [(1, "firing"), (2, "severity_up")]),
    ([97, "stale", "stale", 97], ["pending", "pending/held", "pending/held", "firing"], [(3, "firing")]),
    ([97, 97, "stale", 99, 99], ["pending", "firing", "firing/held", "recovering", "ok"],
     [(1, "firing"), (4, "resolved")]),                                          # held, then resumes
])
def test_alarm_sequences(values, states, events):
    got_states, got_events = run(values)
    assert got_states == states
    assert got_events == events


def test_oscillation_around_threshold_gives_one_firing_and_one_resolved():
    # 97.9 / 98.1 alternate (98.1 is inside the hysteresis band: not below 98, not past 98.5)
    values = [97.9, 97.9] + [98.1, 97.9] * 10 + [98.6, 98.6]
    _, events = run(values)
    assert [e for _, e in events] == ["firing", "resolved"]


def test_repeat_only_after_repeat_interval():
    # one evaluation every 60 minutes, repeat every 4 hours: fires at 1, repeats at 5 and 9
    _, events = run([97] * 10, minutes=60)
    assert events == [(1, "firing"), (5, "repeat"), (9, "repeat")]


def test_pending_one_fires_at_once_and_clear_defaults_to_warning_level():
    policy = Policy(pending=1, recover_after=1, clear=None)
    states, events = run([97, 98.1], policy=policy)
    assert states == ["firing", "ok"]
    assert events == [(0, "firing"), (1, "resolved")]


@pytest.mark.parametrize(("text", "value", "direction", "baseline", "expected"), [
    ("98", 97.9, "higher_better", None, True),
    ("98", 98, "higher_better", None, False),          # equality never breaches
    ("5", 5.1, "lower_better", None, True),
    ("rel:1.2", 130, "lower_better", 100, True),
    ("rel:1.2", 130, "lower_better", None, None),      # no baseline: cannot compare
    ("rel:0.99..1.01", 100.5, "band", 100, False),
    ("rel:0.99..1.01", 102, "band", 100, True),
    ("10..20", 9.99, "band", None, True),
])
def test_threshold_grammar(text, value, direction, baseline, expected):
    assert breaches(text, value, direction, baseline) is expected
