"""The citykpi service: lifecycle of writer, pipeline, sources, health endpoint and periodic jobs.

Start order: HTTP endpoints (they answer from the first second; /readyz says 503 until the end) ->
database (waits until it answers) -> kernels warmed -> writer -> pipeline -> sources -> periodic
jobs. A step that fails undoes the ones before it. Every long-running task is supervised
(ingest/supervision.py).
Stop order (SIGTERM/Ctrl-C): sources stop receiving -> pipeline writes and acknowledges what it
holds, within `shutdown_timeout_s` -> sources disconnect -> writer closes. What is not committed by
the deadline stays unacknowledged, and the broker redelivers it. Nothing acknowledged is unwritten.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from core import telemetry
from core.config import Settings
from ingest.database import prepare_database
from ingest.endpoints import HealthServer
from ingest.kafka.dead_letters import DeadLetterTopic
from ingest.kafka.workers import KafkaWorkers
from ingest.pipeline import Pipeline
from ingest.sources import Source, enabled_sources
from ingest.supervision import Supervisor
from processors.kernels import warm_up
from processors.registration import RegistrationBudget
from processors.writer import TimescaleWriter, WriteResult

log = logging.getLogger(__name__)


class Service:
    def __init__(self, settings: Settings, on_write: Callable[[WriteResult], None] | None = None) -> None:
        self.settings = settings
        registration = RegistrationBudget(  # one budget, whichever connection registers
            settings.validation.max_new_devices_per_message,
            settings.validation.max_new_devices_per_city_minute,
        )
        self.writers = [
            TimescaleWriter(
                settings.database.url.get_secret_value(),
                unknown_device=settings.validation.unknown_device,
                registration=registration,
                max_backoff_s=settings.writer.retry_max_backoff_s,
                connect_timeout_s=settings.database.connect_timeout_s,
                command_timeout_s=settings.database.command_timeout_s,
                probe_interval_s=settings.writer.probe_interval_s,
                max_attempts=settings.writer.max_attempts,
            )
            for _ in range(settings.writer.connections)
        ]
        self.dead_letter_topic: DeadLetterTopic | None = None
        if settings.kafka.dead_letter_topic:
            self.dead_letter_topic = DeadLetterTopic(settings.kafka, settings.kafka.dead_letter_topic)
        self.pipeline = Pipeline(
            settings,
            self.writers,
            on_write,
            self.dead_letter_topic.publish if self.dead_letter_topic else None,
        )
        self.sources: list[Source] = []
        self.supervisor = Supervisor()
        self._http: HealthServer | None = None
        self.kafka_workers: KafkaWorkers | None = None  # worker processes 1..N-1 (kafka.workers)
        self._started = False
        self.warm_up_s = 0.0

    @property
    def failure(self) -> str | None:
        return self.supervisor.failure

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            log.error("start-up failed; undoing what was started")
            await self._undo()
            raise

    async def _start(self) -> None:
        if self.settings.http.enabled:
            self._http = HealthServer(
                self.settings.http.host, self.settings.http.port, self._why_unhealthy, self.ready
            )
            self._http.start()
        await prepare_database(self.settings, self.settings.database.migrate_on_start)
        kafka = self.settings.kafka
        if kafka.enabled and kafka.workers > 1 and kafka.worker_index == 0:
            self.kafka_workers = KafkaWorkers(self.settings, self.supervisor, Service)
            self.kafka_workers.spawn()  # they start while this process warms up
        self.warm_up_s = await asyncio.to_thread(warm_up)
        log.info("numba kernels ready in %.2f s", self.warm_up_s)
        for writer in self.writers:
            await writer.start()
        if self.dead_letter_topic is not None:
            await self.dead_letter_topic.start()
        await self.pipeline.start()
        for task in self.pipeline.tasks:
            self.supervisor.vital(task.get_name(), task)
        self.sources.extend(enabled_sources(self.settings, self.pipeline))
        if self.kafka_workers is not None:
            await self.kafka_workers.ready()
        for s in self.sources:
            await s.start()
        self._start_jobs()
        self._started = True

    def _start_jobs(self) -> None:
        from ingest.alert_notify import AlertNotifier
        from ingest.rebirths import asks_for_rebirths, rebirth_loop
        from kpi_rollups.refresh import kpi_refresh_process
        from processors.alerts import alerts_loop
        from processors.quality import quality_loop
        from processors.retention import retention_loop

        settings, sup, mqtt = self.settings, self.supervisor, self.settings.mqtt
        sup.restarting("citykpi-monitor", self._monitor)
        if settings.kafka.worker_index > 0:
            return  # a Kafka worker process: the service that started it runs the jobs once for all
        notifier = AlertNotifier(settings.alerts, settings.mqtt)
        notify = notifier if notifier.enabled else None
        sessions = self.pipeline.sparkplug
        jobs: list[tuple[str, bool, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("citykpi-retention", True, lambda: retention_loop(settings)),
            ("citykpi-quality", settings.quality.enabled, lambda: quality_loop(settings)),
            (
                "citykpi-kpi-refresh",
                settings.kpi_refresh_interval_s > 0,
                lambda: kpi_refresh_process(settings),
            ),
            ("citykpi-sparkplug-rebirth", asks_for_rebirths(mqtt), lambda: rebirth_loop(mqtt, sessions)),
            ("citykpi-alerts", settings.alerts.enabled, lambda: alerts_loop(settings, notify)),
        ]
        for name, enabled, job in jobs:
            if enabled:
                sup.restarting(name, job)

    async def _monitor(self) -> None:
        """Every second: each source's gauges, and whether its background work is still alive."""
        while True:
            telemetry.WRITE_BLOCKED_SECONDS.set(self.write_blocked_s)
            for s in self.sources:
                await s.report()
                if (why := s.failure()) is not None:
                    self.supervisor.fail(f"{s.name} source: {why}")
            await asyncio.sleep(1)

    @property
    def write_blocked_s(self) -> float:
        """How long the longest-waiting write has gone without a commit (0 when none waits)."""
        return max(w.blocked_s for w in self.writers)

    def ready(self) -> bool:
        """Started, not failed, database connected and no write waiting too long, a source connected."""
        return (
            self._started
            and self.failure is None
            and all(w.connected for w in self.writers)
            and self.write_blocked_s < self.settings.writer.unready_after_s
            and any(s.connected for s in self.sources)
        )

    def healthy(self) -> bool:
        """Alive: not failed, and the write loop is not stuck (the liveness probe restarts it if so)."""
        return self.failure is None and self.write_blocked_s < self.settings.writer.stalled_after_s

    def _why_unhealthy(self) -> str | None:
        if self.healthy():
            return None
        return self.failure or f"no commit for {self.write_blocked_s:.0f} s"

    def held_messages(self) -> int:
        return sum(s.held_messages for s in self.sources)

    async def stop(self) -> None:
        await self.supervisor.cancel()
        deadline = self.settings.shutdown_timeout_s
        progress = asyncio.create_task(self._log_drain_progress())
        try:
            await asyncio.wait_for(self._drain(), deadline)
        except TimeoutError:
            log.warning(
                "drain deadline of %.0f s passed: %d messages stay unacknowledged and will be redelivered",
                deadline,
                self.held_messages(),
            )
            await self.pipeline.abort()
        except Exception:
            log.exception("draining failed; what was not committed stays unacknowledged")
            await self.pipeline.abort()
        finally:
            progress.cancel()
        await self._close()
        log.info(
            "stopped: %d readings stored, %d duplicates ignored, %d dead letters",
            self.pipeline.stats.stored,
            self.pipeline.stats.duplicates,
            self.pipeline.stats.dead_letters,
        )

    async def _drain(self) -> None:
        if self.kafka_workers is not None:
            self.kafka_workers.signal_stop()  # they drain alongside
        for s in self.sources:
            await s.stop()
        await self.pipeline.drain_and_stop()

    async def _log_drain_progress(self) -> None:
        while True:
            log.info(
                "draining: %d messages held, writer waiting %.0f s",
                self.held_messages(),
                self.write_blocked_s,
            )
            await asyncio.sleep(5)

    async def _undo(self) -> None:
        await self.supervisor.cancel()
        await self.pipeline.abort()
        await self._close()

    async def _close(self) -> None:
        """Disconnect everything; each step runs even if one before it fails."""
        closers = [s.close for s in self.sources] + [w.stop for w in self.writers]
        if self.kafka_workers is not None:
            closers.insert(0, self.kafka_workers.stop)
        if self.dead_letter_topic is not None:
            closers.append(self.dead_letter_topic.stop)
        for close in closers:
            try:
                await close()
            except Exception as e:
                log.warning("closing %s failed: %s", close, e)
        if self._http is not None:
            await self._http.stop()
            self._http = None
