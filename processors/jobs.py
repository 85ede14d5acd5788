"""The periodic jobs' loop (quality flags, alert evaluation): one run every N seconds, off the
ingestion loop.

Each run gets a thread and an event loop of its own: a run decodes a window of readings and runs the
kernels for seconds at high rates, and must not stall ingestion meanwhile. A database or network
error is a warning and the next run tries again; anything else crashes the loop, which the service's
supervisor logs and restarts (ingest/supervision.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg


async def every(
    interval_s: float,
    run_once: Callable[[], Coroutine[Any, Any, int]],
    log: logging.Logger,
    *,
    done: str,
    failed: str,
) -> None:
    """Forever: wait `interval_s`, run `run_once()` in a thread; log `done % n` when the run
    returned n > 0, and `failed` (a warning) when the database or the network failed it."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            n = await asyncio.to_thread(lambda: asyncio.run(run_once()))
            if n:
                log.info(done, n)
        except (OSError, asyncpg.PostgresError) as e:
            log.warning("%s failed (%s); will retry", failed, e)
