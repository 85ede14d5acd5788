"""Database errors sorted into retriable (keep the data, back off, retry) and permanent (dead-letter)."""

from __future__ import annotations

import asyncio

import asyncpg

# SQLSTATE classes and codes that a retry can outlive: connection trouble, serialization failure
# and deadlock, insufficient resources, operator intervention (shutdown, restart), system errors.
RETRIABLE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
RETRIABLE_SQLSTATES = frozenset({"55P03", "55006", "XX000"})
# Configuration, not data: missing privilege, table or column (schema not migrated, wrong role).
# Dead-lettering would discard good data, so the writer keeps it and retries until an operator fixes
# the setup; the warning it logs on every retry names the SQLSTATE.
CONFIGURATION_SQLSTATES = frozenset({"42501", "42P01", "42703", "3D000", "28000", "28P01"})


class CityKpiError(Exception):
    """Base of citykpi's own errors."""


# Server-side failures that the data itself may cause (an internal error on one odd row): retried a
# few times, then the batch is bisected like a permanent rejection instead of blocking ingestion.
SUSPECT_SQLSTATES = frozenset({"XX000"})
# The server is unreachable or going away: the writer probes it rather than sleeping out its backoff.
UNREACHABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


class RetriableWriteError(CityKpiError):
    """The write failed for a reason that may pass; nothing was committed, so nothing is acked."""

    def __init__(self, message: str, sqlstate: str = "") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate

    @property
    def unreachable(self) -> bool:
        return not self.sqlstate or self.sqlstate[:2] == "08" or self.sqlstate in UNREACHABLE_SQLSTATES

    @property
    def suspect(self) -> bool:
        return self.sqlstate in SUSPECT_SQLSTATES


class PermanentWriteError(CityKpiError):
    """The database rejected the data itself; retrying the same rows would fail again."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate = sqlstate


def is_retriable(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return (
            state[:2] in RETRIABLE_SQLSTATE_CLASSES
            or state in RETRIABLE_SQLSTATES
            or state in CONFIGURATION_SQLSTATES
        )
    return isinstance(exc, OSError | asyncpg.InterfaceError | asyncio.TimeoutError | ConnectionError)


def classify(exc: BaseException) -> CityKpiError:
    """Wrap a database exception as retriable or permanent."""
    state = getattr(exc, "sqlstate", None) or ""
    if is_retriable(exc):
        return RetriableWriteError(f"{type(exc).__name__}: {exc}", state)
    state = state or "XXXXX"
    return PermanentWriteError(state, str(exc))
