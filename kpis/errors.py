"""Errors of the KPI layer."""
from __future__ import annotations


class KpiError(Exception):
    """Base error of the KPI layer."""


class PeriodError(KpiError, ValueError):
    """A period argument that is not today, YYYY-MM-DD or YYYY-MM."""
