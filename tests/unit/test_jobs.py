"""The periodic jobs' loop (processors/jobs.py): each run in a thread of its own, logged, retried."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from processors.jobs import every

log = logging.getLogger("tests.jobs")


async def test_runs_off_the_callers_thread_log_what_they_did_and_retry_after_a_network_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Runs return 2, raise OSError, return 0, return 3: the loop logs 2 and 3 at INFO, the error
    as a warning, keeps going, and never runs on the event loop's thread; any other error ends it."""
    results: list[int | Exception] = [2, OSError("connection refused"), 0, 3, RuntimeError("bug")]
    threads: set[int] = set()

    async def run_once() -> int:
        threads.add(threading.get_ident())
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    caplog.set_level(logging.INFO, logger="tests.jobs")
    with pytest.raises(RuntimeError, match="bug"):
        await asyncio.wait_for(every(0.01, run_once, log, done="did %d things", failed="test job"), 10)
    assert threading.get_ident() not in threads
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "tests.jobs"] == [
        ("INFO", "did 2 things"),
        ("WARNING", "test job failed (connection refused); will retry"),
        ("INFO", "did 3 things"),
    ]
