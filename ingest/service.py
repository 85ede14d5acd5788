"""The citykpi service: lifecycle of writer, pipeline, sources, health endpoint and periodic jobs.

Start order: database (waits until it answers) -> kernels warmed -> writer -> pipeline -> sources.
Stop order (SIGTERM/Ctrl-C): sources stop receiving -> pipeline writes and acknowledges what it
holds -> sources disconnect -> writer closes. Nothing acknowledged is left unwritten.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from prometheus_client import generate_latest

from ingest.config import Settings
from ingest.database import prepare_database
from ingest.kafka.dead_letters import DeadLetterTopic
from ingest.pipeline import Pipeline
from processors.kernels import warm_up
from processors.registration import RegistrationBudget
from processors.writer import TimescaleWriter, WriteResult

log = logging.getLogger(__name__)


class Source(Protocol):
    name: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def close(self) -> None: ...


class Service:
    def __init__(self, settings: Settings, on_write: Callable[[WriteResult], None] | None = None) -> None:
        self.settings = settings
        self.writer = TimescaleWriter(
            settings.database.url.get_secret_value(),
            unknown_device=settings.validation.unknown_device,
            registration=RegistrationBudget(
                settings.validation.max_new_devices_per_message,
                settings.validation.max_new_devices_per_city_minute,
            ),
            max_backoff_s=settings.writer.retry_max_backoff_s,
            connect_timeout_s=settings.database.connect_timeout_s,
            command_timeout_s=settings.database.command_timeout_s,
            probe_interval_s=settings.writer.probe_interval_s,
            max_attempts=settings.writer.max_attempts,
        )
        self.dead_letter_topic: DeadLetterTopic | None = None
        if settings.kafka.dead_letter_topic:
            self.dead_letter_topic = DeadLetterTopic(settings.kafka, settings.kafka.dead_letter_topic)
        self.pipeline = Pipeline(
            settings,
            self.writer,
            on_write,
            self.dead_letter_topic.publish if self.dead_letter_topic else None,
        )
        self.sources: list[Source] = []
        self._http: asyncio.Server | None = None
        self._jobs: list[asyncio.Task[None]] = []
        self.warm_up_s = 0.0

    async def start(self) -> None:
        await prepare_database(self.settings, self.settings.database.migrate_on_start)
        self.warm_up_s = await asyncio.to_thread(warm_up)
        log.info("numba kernels ready in %.2f s", self.warm_up_s)
        await self.writer.start()
        if self.dead_letter_topic is not None:
            await self.dead_letter_topic.start()
        await self.pipeline.start()
        if self.settings.mqtt.enabled:
            from ingest.mqtt.source import MqttSource

            self.sources.append(MqttSource(self.settings.mqtt, self.pipeline))
        if self.settings.kafka.enabled:
            from ingest.kafka.source import KafkaSource

            self.sources.append(KafkaSource(self.settings.kafka, self.pipeline))
        for s in self.sources:
            await s.start()
        if self.settings.http.enabled:
            self._http = await asyncio.start_server(
                self._serve_http, self.settings.http.host, self.settings.http.port
            )
        from processors.retention import retention_loop

        self._jobs.append(asyncio.create_task(retention_loop(self.settings), name="citykpi-retention"))
        if self.settings.quality.enabled:
            from processors.quality import quality_loop

            self._jobs.append(asyncio.create_task(quality_loop(self.settings), name="citykpi-quality"))
        if self.settings.kpi_refresh_interval_s > 0:
            from kpi_rollups.refresh import kpi_refresh_loop

            refresh = kpi_refresh_loop(self.settings)
            self._jobs.append(asyncio.create_task(refresh, name="citykpi-kpi-refresh"))

    def ready(self) -> bool:
        return self.writer.connected and any(getattr(s, "connected", False) for s in self.sources)

    async def stop(self) -> None:
        for job in self._jobs:
            job.cancel()
        for s in self.sources:
            await s.stop()
        await self.pipeline.drain_and_stop()
        for s in self.sources:
            await s.close()
        await self.writer.stop()
        if self.dead_letter_topic is not None:
            await self.dead_letter_topic.stop()
        if self._http is not None:
            self._http.close()
        log.info(
            "stopped cleanly: %d readings stored, %d duplicates ignored, %d dead letters",
            self.pipeline.stats.stored,
            self.pipeline.stats.duplicates,
            self.pipeline.stats.dead_letters,
        )

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """/healthz (alive), /readyz (database and a source connected), /metrics (Prometheus)."""
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            if path == "/healthz":
                status, body, ctype = "200 OK", b"ok\n", "text/plain"
            elif path == "/readyz":
                ok = self.ready()
                status = "200 OK" if ok else "503 Service Unavailable"
                body, ctype = (b"ready\n" if ok else b"not ready\n"), "text/plain"
            elif path == "/metrics":
                status, body, ctype = "200 OK", generate_latest(), "text/plain; version=0.0.4"
            else:
                status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
