"""Exceptions raised by the ETL; every message names the object and what to do."""
from __future__ import annotations


class EtlError(Exception):
    """Base of every ETL error."""


class SourceUnavailable(EtlError):
    """A source system cannot be reached, or did not answer within the timeout."""


class SchemaDrift(EtlError):
    """A contract column is missing at the source."""


class WriterBusy(EtlError):
    """Another process (normally the worker) holds the warehouse writer lock."""
