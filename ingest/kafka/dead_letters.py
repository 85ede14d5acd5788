"""Optional Kafka dead-letter topic: rejected payloads, with their reason, for other consumers.

Published after the database commit and before the source's acknowledgement, so a crash in
between publishes a record twice rather than never (the database table stays the record of truth).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging

from aiokafka import AIOKafkaProducer

from core import telemetry
from core.config import KafkaSettings
from ingest.kafka.source import kafka_security_kwargs
from processors.writer import DeadLetter

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT_S = 10.0  # the write loop waits at most this long for an unreachable topic


def dead_letter_record(d: DeadLetter) -> bytes:
    return json.dumps(
        {
            "source": d.source,
            "reason": d.reason,
            "detail": d.detail,
            "topic": d.topic,
            "partition": d.partition,
            "offset": d.offset,
            "city_id": d.city_id,
            "device_id": d.device_id,
            "payload_size": d.payload_size,
            "received_at": d.received_at.isoformat() if d.received_at is not None else None,
            "sent_at": d.sent_at.isoformat() if d.sent_at is not None else None,
            "message_id": str(d.message_id) if d.message_id is not None else None,
            "payload_base64": base64.b64encode(d.payload).decode() if d.payload is not None else None,
        }
    ).encode()


def _key(d: DeadLetter) -> bytes | None:
    return (d.device_id or "").encode("utf-8", "backslashreplace") or None


class DeadLetterTopic:
    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        self.topic = topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            acks="all",
            request_timeout_ms=5000,
            **kafka_security_kwargs(settings),
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish(self, dead_letters: list[DeadLetter]) -> None:
        """Publish; a failure is logged and counted, never raised: the table already holds them."""
        try:
            await asyncio.wait_for(self._send(dead_letters), PUBLISH_TIMEOUT_S)
        except Exception as e:
            telemetry.DEAD_LETTER_PUBLISH_FAILURES.inc(len(dead_letters))
            log.warning(
                "%d dead letters not published to %s (%s: %s); they are in the dead_letters table",
                len(dead_letters),
                self.topic,
                type(e).__name__,
                e,
            )

    async def _send(self, dead_letters: list[DeadLetter]) -> None:
        futures = [
            await self._producer.send(self.topic, dead_letter_record(d), key=_key(d)) for d in dead_letters
        ]
        for f in futures:
            await f
