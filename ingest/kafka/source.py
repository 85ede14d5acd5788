"""Kafka source (aiokafka): a consumer group, auto-commit off, offsets committed after the write.

Each `getmany` batch becomes one `Delivery`; its ack commits the next offset of every partition in
it. While the source holds `max_held_messages` uncommitted messages, or the pipeline is full, the
assigned partitions are paused (and still polled), so nothing is fetched that cannot be held. When
partitions are revoked (a rebalance), the listener waits up to `rebalance_wait_s` for the batches
in flight to be committed; past that it abandons them: their commit fails harmlessly, and the new
owner replays them from the last committed offset, stored once because writes are idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import tenacity
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from core import telemetry
from core.config import KafkaSettings, Settings
from ingest.pipeline import Delivery, Message, Pipeline
from ingest.routing import Router

log = logging.getLogger(__name__)

LAG_EVERY_S = 5.0
FETCH_RETRY_MAX_S = 5.0

Unreadable = tuple[TopicPartition, int, str]  # a record aiokafka cannot decode: where, and why


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


class _MissingTopicErrors(logging.Filter):
    """aiokafka logs an ERROR on every metadata refresh for a subscribed topic that does not exist
    yet; the source says so once, at INFO, instead."""

    MESSAGE = "Topic %s not found in cluster metadata"

    def __init__(self, topics: set[str]) -> None:
        super().__init__()
        self.topics = topics

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.msg == self.MESSAGE and args and args[0] in self.topics)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if revoked:
            await self.source.settle(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("Kafka partitions assigned: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))


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
        self.held_messages = 0
        self.held_bytes = 0
        self._unacked_since: deque[datetime] = deque()
        self._committed: dict[TopicPartition, int] = {}
        self._lag_at = 0.0
        self._missing_topic_errors = _MissingTopicErrors({t.filter for t in settings.topics})

    async def start(self) -> None:
        s = self.settings
        self._consumer = AIOKafkaConsumer(
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
        self._consumer.subscribe([t.filter for t in s.topics], listener=_Rebalance(self))
        logging.getLogger("aiokafka.cluster").addFilter(self._missing_topic_errors)
        await self._consumer.start()
        await self._note_missing_topics()
        self.connected = True
        telemetry.SOURCE_CONNECTED.labels(self.name).set(1)
        self._task = asyncio.create_task(self._consume(), name="citykpi-kafka-consume")
        log.info(
            "Kafka consumer started: group %s, topics %s on %s",
            s.group_id,
            [t.filter for t in s.topics],
            s.bootstrap_servers,
        )

    async def _note_missing_topics(self) -> None:
        """Say once, at INFO, which configured topics do not exist yet (they are used once created)."""
        assert self._consumer is not None
        existing = await self._consumer.topics()
        missing = sorted(t.filter for t in self.settings.topics if t.filter not in existing)
        if missing:
            log.info("Kafka topics not created yet (consumed once they exist): %s", ", ".join(missing))

    def _set_connected(self, up: bool) -> None:
        if up != self.connected:
            self.connected = up
            telemetry.SOURCE_CONNECTED.labels(self.name).set(int(up))
            if up:
                telemetry.RECONNECTS.labels(self.name).inc()

    def _full(self) -> bool:
        return self.held_messages >= self.settings.max_held_messages or self.pipeline.is_full()

    async def _consume(self) -> None:
        # A failed fetch is retried with jittered exponential backoff (tenacity), forever while running.
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(KafkaError),
            wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=FETCH_RETRY_MAX_S, jitter=0.5),
            stop=lambda _: self._stopping,
            before_sleep=self._fetch_failed,
            reraise=True,
        )
        while not self._stopping:
            unreadable: list[Unreadable] = []
            try:
                data: dict[TopicPartition, list[Any]] = await retrying(self._poll)
            except KafkaError:  # only when stopping
                return
            except UnicodeDecodeError:  # e.g. a header key that is not UTF-8
                data, unreadable = await self._isolate_unreadable()
            self._set_connected(True)
            if data or unreadable:
                await self._submit(data, unreadable)

    async def _poll(self) -> dict[TopicPartition, list[Any]]:
        consumer = self._consumer
        assert consumer is not None
        # Paused, `getmany` fetches nothing but still counts as a poll, so a long database stall
        # does not exceed max_poll_interval_ms and evict this consumer from its group.
        if self._full():
            consumer.pause(*consumer.assignment())
        else:
            consumer.resume(*consumer.paused())
        return await consumer.getmany(timeout_ms=200, max_records=self.settings.max_poll_records)

    async def _isolate_unreadable(
        self,
    ) -> tuple[dict[TopicPartition, list[Any]], list[Unreadable]]:
        """A fetch failed to decode a record: read each partition one record at a time up to the
        unreadable one, and seek past it. It becomes a dead letter, and its offset is committed only
        with that dead letter, so it cannot stop the partition nor crash-loop the service. (aiokafka
        decodes a whole producer batch, so the records after it in its batch are dead-lettered too.)"""
        consumer = self._consumer
        assert consumer is not None
        data: dict[TopicPartition, list[Any]] = {}
        unreadable: list[Unreadable] = []
        for tp in consumer.assignment() - consumer.paused():
            for _ in range(self.settings.max_poll_records):
                try:
                    got = await consumer.getmany(tp, timeout_ms=500, max_records=1)
                except UnicodeDecodeError as e:
                    offset = await consumer.position(tp)
                    log.warning(
                        "Kafka record %s/%d@%d unreadable (%s); dead-lettered",
                        tp.topic,
                        tp.partition,
                        offset,
                        e,
                    )
                    unreadable.append((tp, offset, f"{type(e).__name__}: {e}"))
                    consumer.seek(tp, offset + 1)
                    break
                if not got:
                    break
                data.setdefault(tp, []).extend(got[tp])
        return data, unreadable

    def _fetch_failed(self, state: tenacity.RetryCallState) -> None:
        self._set_connected(False)
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("Kafka fetch failed (%s); retry %d in %.1f s", error, state.attempt_number, wait)

    async def _submit(
        self,
        data: dict[TopicPartition, list[Any]],
        unreadable: list[Unreadable],
    ) -> None:
        consumer = self._consumer
        assert consumer is not None
        messages: list[Message] = []
        offsets: dict[TopicPartition, int] = {}
        now = datetime.now(UTC)
        stamp, sent = None, None  # records of one producer batch mostly share their timestamp
        for tp, records in data.items():
            topic, partition = tp.topic, tp.partition
            for r in records:
                headers = {k: v.decode("utf-8", "replace") for k, v in r.headers} if r.headers else None
                if r.timestamp != stamp:
                    stamp = r.timestamp
                    sent = datetime.fromtimestamp(stamp / 1000, UTC) if stamp else None
                messages.append(
                    Message(r.value or b"", topic, now, headers, partition, r.offset, sent_at=sent)
                )
            offsets[tp] = records[-1].offset + 1
        for tp, offset, detail in unreadable:
            messages.append(Message(b"", tp.topic, now, None, tp.partition, offset, unreadable=detail))
            offsets[tp] = max(offsets.get(tp, 0), offset + 1)
        n, nbytes = len(messages), sum(len(m.payload) for m in messages)
        self.held_messages += n
        self.held_bytes += nbytes
        self._unacked_since.append(now)

        async def commit(offsets: dict[TopicPartition, int] = offsets) -> None:
            try:
                await consumer.commit(offsets)
                self._committed.update(offsets)
            finally:
                self.held_messages -= n
                self.held_bytes -= nbytes
                self._unacked_since.popleft()

        position = {f"{tp.topic}/{tp.partition}": off for tp, off in offsets.items()}
        await self.pipeline.submit(Delivery(self.name, self.router, messages, commit, position))

    async def settle(self, revoked: list[TopicPartition]) -> None:
        """Before giving partitions up: wait (bounded) for the batches in flight to be committed."""
        deadline = time.monotonic() + self.settings.rebalance_wait_s
        while self.held_messages and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for tp in revoked:
            self._committed.pop(tp, None)
            with contextlib.suppress(KeyError):  # never measured
                telemetry.KAFKA_LAG.remove(tp.topic, str(tp.partition))
        if self.held_messages:
            log.warning(
                "Kafka partitions revoked with %d messages uncommitted after %.0f s; the new owner "
                "replays them (stored once)",
                self.held_messages,
                self.settings.rebalance_wait_s,
            )

    async def report(self) -> None:
        telemetry.HELD_MESSAGES.labels(self.name).set(self.held_messages)
        telemetry.HELD_BYTES.labels(self.name).set(self.held_bytes)
        oldest = self._unacked_since[0] if self._unacked_since else None
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
        telemetry.OLDEST_UNACKED_SECONDS.labels(self.name).set(age)
        if self._consumer is not None and time.monotonic() - self._lag_at >= LAG_EVERY_S:
            self._lag_at = time.monotonic()
            await self._measure_lag()

    async def _measure_lag(self) -> None:
        """Lag = log end offset - committed offset, asked of the broker (true while paused too)."""
        consumer = self._consumer
        assert consumer is not None
        assignment = list(consumer.assignment())
        if not assignment:
            return
        try:
            ends = await consumer.end_offsets(assignment)
            for tp in assignment:
                committed = self._committed.get(tp)
                if committed is None:
                    committed = await consumer.committed(tp) or 0
                    self._committed[tp] = committed
                telemetry.KAFKA_LAG.labels(tp.topic, str(tp.partition)).set(max(0, ends[tp] - committed))
        except KafkaError as e:
            log.debug("Kafka lag not measured: %s", e)

    def failure(self) -> str | None:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            error = self._task.exception()
            return f"consumer: {type(error).__name__}: {error}" if error else None
        return None

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await self._task

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        logging.getLogger("aiokafka.cluster").removeFilter(self._missing_topic_errors)
        self.connected = False
        await self.report()
        telemetry.SOURCE_CONNECTED.labels(self.name).set(0)


def from_settings(settings: Settings, pipeline: Pipeline) -> KafkaSource | None:
    """The service's Kafka source (registered in ingest/sources.py), when `kafka.enabled`."""
    return KafkaSource(settings.kafka, pipeline) if settings.kafka.enabled else None
