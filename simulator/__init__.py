"""Simulator of the four source systems (mis, cs, dist, meter): history build, live mode, faults."""
from __future__ import annotations

from simulator.history import build

__all__ = ["build"]
