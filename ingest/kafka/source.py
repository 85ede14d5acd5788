"""Kafka source (aiokafka): a consumer group, auto-commit off, offsets committed after the write.

Each `getmany` batch becomes one `Delivery`; its ack commits the next offset of every partition in
it. While the pipeline is full the assigned partitions are paused, so nothing is fetched that
cannot be held. After a rebalance the new owner starts from the last committed offset; whatever it
replays is already stored and ignored as a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from ingest import telemetry
from ingest.config import KafkaSettings
from ingest.pipeline import Delivery, Message, Pipeline
from ingest.routing import Router

log = logging.getLogger(__name__)


def kafka_security_kwargs(s: KafkaSettings) -> dict[str, object]:
    """aiokafka keyword arguments for SASL/SSL, shared by the consumer, producer and simulator."""
    kw: dict[str, object] = {"security_protocol": s.security_protocol}
    if s.security_protocol in ("SSL", "SASL_SSL"):
        kw["ssl_context"] = ssl.create_default_context(cafile=str(s.ssl_cafile) if s.ssl_cafile else None)
    if s.security_protocol.startswith("SASL"):
        kw["sasl_mechanism"] = s.sasl_mechanism
        kw["sasl_plain_username"] = s.sasl_username
        kw["sasl_plain_password"] = s.sasl_password.get_secret_value() if s.sasl_password else None
    return kw


class KafkaSource:
    name = "kafka"

    def __init__(self, settings: KafkaSettings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.router = Router(settings.topics)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.connected = False

    async def start(self) -> None:
        s = self.settings
        self._consumer = AIOKafkaConsumer(
            *[t.filter for t in s.topics],
            bootstrap_servers=s.bootstrap_servers,
            group_id=s.group_id,
            client_id=s.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.max_poll_records,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            **kafka_security_kwargs(s),
        )
        await self._consumer.start()
        self.connected = True
        self._task = asyncio.create_task(self._consume(), name="citykpi-kafka-consume")
        log.info(
            "Kafka consumer started: group %s, topics %s on %s",
            s.group_id,
            [t.filter for t in s.topics],
            s.bootstrap_servers,
        )

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping:
            try:
                data = await consumer.getmany(timeout_ms=200, max_records=self.settings.max_poll_records)
            except KafkaError as e:
                log.warning("Kafka fetch failed (%s); retrying", e)
                await asyncio.sleep(1)
                continue
            if not data:
                continue
            messages: list[Message] = []
            offsets: dict[TopicPartition, int] = {}
            for tp, records in data.items():
                for r in records:
                    headers = {k: v.decode("utf-8", "replace") for k, v in (r.headers or ())}
                    received = (
                        datetime.fromtimestamp(r.timestamp / 1000, UTC) if r.timestamp else datetime.now(UTC)
                    )
                    messages.append(
                        Message(r.value or b"", tp.topic, received, headers, tp.partition, r.offset)
                    )
                offsets[tp] = records[-1].offset + 1
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    telemetry.KAFKA_LAG.labels(tp.topic, str(tp.partition)).set(highwater - offsets[tp])

            async def commit(offsets: dict[TopicPartition, int] = offsets) -> None:
                await consumer.commit(offsets)

            position = {f"{tp.topic}/{tp.partition}": off for tp, off in offsets.items()}
            paused = False
            if self.pipeline.is_full():
                consumer.pause(*consumer.assignment())
                paused = True
            await self.pipeline.submit(Delivery(self.name, self.router, messages, commit, position))
            if paused:
                consumer.resume(*consumer.assignment())

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await self._task

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        self.connected = False
