"""More Kafka consumers in the consumer group, one process each (`kafka.workers`): past one GIL.

Decoding, validating and writing a message costs CPU in Python, so one process tops out at one
core. With `kafka.workers = N` the service (worker 0: MQTT, HTTP, the periodic jobs and its own
Kafka consumer) starts N - 1 worker processes. Each is the same service cut down to a Kafka
consumer in the same group, its own pipeline and its own database connection: Kafka splits the
partitions among them (so use at least as many partitions as workers), and every guarantee holds
per process unchanged: offsets are committed only after the database commit, at most
`kafka.max_held_messages` are held by each, and a rebalance replays what was not committed.

A worker that exits while the service runs fails the service (it stops and exits non-zero, and
systemd or Kubernetes restart it); a worker whose parent is gone stops on its own. On SIGTERM the
service stops its workers with SIGTERM too; each drains within `shutdown_timeout_s`.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from core.config import Settings
from core.logs import setup_logging
from ingest.supervision import Supervisor

log = logging.getLogger(__name__)

POLL_S = 0.5
READY_TIMEOUT_S = 120.0


class Runnable(Protocol):
    """What a worker runs: the service (passed in, as the service layer sits above this one)."""

    supervisor: Supervisor

    @property
    def failure(self) -> str | None: ...

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


ServiceFactory = Callable[[Settings], Runnable]  # module-level, so a spawned process can import it


def worker_settings(settings: Settings, index: int) -> Settings:
    """The settings of worker `index` (>= 1): only its Kafka consumer, no migrations, no endpoint,
    no periodic jobs (worker 0 runs those once for all)."""
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"worker_index": index, "client_id": f"{settings.kafka.client_id}-{index}"}
            ),
            "mqtt": settings.mqtt.model_copy(update={"enabled": False}),
            "http": settings.http.model_copy(update={"enabled": False}),
            "quality": settings.quality.model_copy(update={"enabled": False}),
            "database": settings.database.model_copy(update={"migrate_on_start": False}),
            "kpi_refresh_interval_s": 0.0,
        }
    )


class KafkaWorkers:
    """The worker processes 1..N-1 of worker 0, watched by its supervisor."""

    def __init__(self, settings: Settings, supervisor: Supervisor, service: ServiceFactory) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self._service = service
        self._processes: list[BaseProcess] = []
        self._ready: list[Any] = []  # one multiprocessing Event per worker, set once it consumes
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def spawn(self) -> None:
        """Start the worker processes (they take seconds to import and warm up: see `ready`)."""
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited loop or sockets
        level = logging.getLevelName(logging.getLogger().level)
        for i in range(1, self.settings.kafka.workers):
            ready = context.Event()
            p = context.Process(
                target=run_worker,
                args=(self._service, worker_settings(self.settings, i), level, os.getpid(), ready),
                name=f"citykpi-kafka-worker-{i}",
            )
            p.start()
            self._processes.append(p)
            self._ready.append(ready)

    async def ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until every worker consumes, so that the group forms once rather than rebalancing
        as each joins; then watch them. A worker that exits first fails the service start-up."""
        deadline = time.monotonic() + timeout_s
        while not all(r.is_set() for r in self._ready):
            if dead := [p for p in self._processes if not p.is_alive()]:
                raise RuntimeError(f"{dead[0].name} exited with {dead[0].exitcode} while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kafka workers not ready after {timeout_s:.0f} s")
            await asyncio.sleep(0.1)
        log.info("Kafka workers consuming: pids %s", self.pids)
        self._watch = asyncio.create_task(self._watch_workers(), name="citykpi-kafka-workers")

    async def _watch_workers(self) -> None:
        while not self._stopping:
            for p in self._processes:
                if not p.is_alive() and not self._stopping:
                    self.supervisor.fail(f"{p.name} (pid {p.pid}) exited with {p.exitcode}")
                    return
            await asyncio.sleep(POLL_S)

    def signal_stop(self) -> None:
        """SIGTERM to every worker: each starts draining what it holds."""
        self._stopping = True
        for p in self._processes:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)

    async def stop(self) -> None:
        """Stop the workers and wait for them to drain (a margin past their own deadline, then killed)."""
        self.signal_stop()
        if self._watch is not None:
            self._watch.cancel()
        deadline = self.settings.shutdown_timeout_s + 10
        for p in self._processes:
            await asyncio.to_thread(p.join, deadline)
            if p.is_alive():
                log.warning(
                    "%s did not stop in %.0f s; killed (its batches are redelivered)", p.name, deadline
                )
                p.kill()
                await asyncio.to_thread(p.join, 5)
        self._processes.clear()


def run_worker(service: ServiceFactory, settings: Settings, log_level: str, parent: int, ready: Any) -> None:
    """A worker process: the service with only its Kafka consumer, until SIGTERM or its parent is gone."""
    setup_logging(log_level, json_logs=True)
    if asyncio.run(_serve(service(settings), parent, ready)):
        raise SystemExit(1)


async def _serve(service: Runnable, parent: int, ready: Any) -> bool:
    await service.start()
    ready.set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def orphaned() -> None:
        while os.getppid() == parent:
            await asyncio.sleep(POLL_S)
        service.supervisor.fail("the service that started this Kafka worker is gone")

    watchers = [
        asyncio.ensure_future(stop.wait()),
        asyncio.ensure_future(service.supervisor.failed.wait()),
        asyncio.ensure_future(orphaned()),
    ]
    await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
    for w in watchers:
        w.cancel()
    await service.stop()
    return service.failure is not None
