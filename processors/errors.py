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


class RetriableWriteError(CityKpiError):
    """The write failed for a reason that may pass; nothing was committed, so nothing is acked."""


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
    if is_retriable(exc):
        return RetriableWriteError(f"{type(exc).__name__}: {exc}")
    state = getattr(exc, "sqlstate", None) or "XXXXX"
    return PermanentWriteError(state, str(exc))
