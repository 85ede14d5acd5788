"""Waiting for the database at start-up: jittered retries, then a clear error at the deadline."""

from __future__ import annotations

import logging
import time

import pytest

from bench.stack import free_port
from ingest.database import wait_for_database


async def test_an_unreachable_database_is_retried_with_backoff_then_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dsn = f"postgresql://nobody@127.0.0.1:{free_port()}/citykpi"  # nothing listens there
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(ConnectionError, match="not reachable after 2 s"):
        await wait_for_database(dsn, 2)
    assert 2 <= time.monotonic() - started < 10
    waits = [
        float(r.getMessage().rsplit(" ", 2)[-2]) for r in caplog.records if "retrying in" in r.getMessage()
    ]
    assert len(waits) >= 3 and waits[2] > waits[0]  # growing waits
