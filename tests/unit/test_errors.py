"""SQLSTATE classification: what the writer retries (keeping the data) and what it dead-letters."""

from __future__ import annotations

import asyncpg
import pytest

from processors.errors import PermanentWriteError, RetriableWriteError, classify, is_retriable


def pg_error(sqlstate: str) -> asyncpg.PostgresError:
    e = asyncpg.PostgresError("boom")
    e.sqlstate = sqlstate  # type: ignore[attr-defined]
    return e


@pytest.mark.parametrize("state", ["08006", "40001", "40P01", "53300", "57P01", "57P03", "42501", "42P01"])
def test_connection_shutdown_deadlock_and_setup_errors_are_retried(state: str) -> None:
    assert is_retriable(pg_error(state))
    assert isinstance(classify(pg_error(state)), RetriableWriteError)


@pytest.mark.parametrize("state", ["22003", "22P02", "23502", "23514", "22021"])
def test_data_errors_are_permanent(state: str) -> None:
    err = classify(pg_error(state))
    assert isinstance(err, PermanentWriteError)
    assert err.sqlstate == state


def test_socket_errors_are_retried() -> None:
    assert is_retriable(ConnectionResetError())
    assert is_retriable(TimeoutError())
    assert not is_retriable(ValueError())
