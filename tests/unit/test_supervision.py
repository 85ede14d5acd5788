"""The supervisor restarts crashed periodic jobs with backoff and fails the service on a vital crash."""

from __future__ import annotations

import asyncio

from core import telemetry
from ingest.supervision import Supervisor


async def test_a_crashed_job_is_logged_and_restarted_until_it_runs() -> None:
    sup = Supervisor(max_restart_delay_s=0.05)
    runs: list[int] = []
    finished = asyncio.Event()

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("boom")
        finished.set()
        await asyncio.sleep(3600)

    before = telemetry.TASK_RESTARTS.labels("flaky")._value.get()
    sup.restarting("flaky", flaky)
    await asyncio.wait_for(finished.wait(), 10)
    assert len(runs) == 3
    assert telemetry.TASK_RESTARTS.labels("flaky")._value.get() - before == 2
    assert sup.failure is None
    await sup.cancel()


async def test_a_vital_task_that_crashes_fails_the_service() -> None:
    sup = Supervisor()

    async def write_loop() -> None:
        raise ValueError("lost the batch in hand")

    sup.vital("citykpi-write", asyncio.create_task(write_loop()))
    await asyncio.wait_for(sup.failed.wait(), 5)
    assert sup.failure is not None and "citykpi-write" in sup.failure and "lost the batch" in sup.failure


async def test_a_cancelled_vital_task_is_a_stop_not_a_failure() -> None:
    sup = Supervisor()
    task = asyncio.create_task(asyncio.sleep(3600))
    sup.vital("citykpi-decode", task)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert sup.failure is None
