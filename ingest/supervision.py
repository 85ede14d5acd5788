"""Every long-running task of the service, watched.

A periodic job (retention, quality, alerts, Sparkplug B rebirths, KPI refresh, telemetry) that
crashes is logged with its name and restarted with jittered exponential backoff (tenacity). A task
that holds messages it cannot hand back (the pipeline's decode and write loops, the sources) is not
restarted in process: its crash marks the service failed, so /healthz and /readyz answer 503 and
`citykpi run` exits non-zero, and systemd or Kubernetes restart it; the broker then redelivers what
was not acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import tenacity

from core import telemetry

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, max_restart_delay_s: float = 60.0) -> None:
        self.failure: str | None = None
        self.failed = asyncio.Event()
        self._max_delay = max_restart_delay_s
        self._tasks: list[asyncio.Task[None]] = []

    def fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why
            log.error("service failed: %s; stopping so that systemd or Kubernetes restart it", why)
            self.failed.set()

    def restarting(self, name: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `job()`; after a crash, log it and run it again with backoff."""
        self._tasks.append(asyncio.create_task(self._restarting(name, job), name=name))

    async def _restarting(self, name: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        def log_crash(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            log.error(
                "task %s crashed; restart %d in %.1f s", name, state.attempt_number, delay, exc_info=error
            )
            telemetry.TASK_RESTARTS.labels(name).inc()

        retrying = tenacity.AsyncRetrying(
            wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=self._max_delay, jitter=1.0),
            before_sleep=log_crash,
        )

        async def run() -> None:  # a coroutine function, so tenacity awaits it
            await job()

        await retrying(run)

    def vital(self, name: str, task: asyncio.Task[Any]) -> None:
        """Watch a task that must not end on an error: its crash fails the service."""

        def done(t: asyncio.Task[Any]) -> None:
            if not t.cancelled() and (error := t.exception()) is not None:
                log.error("task %s crashed", name, exc_info=error)
                self.fail(f"{name} crashed: {type(error).__name__}: {error}")

        task.add_done_callback(done)

    async def cancel(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
