"""Sources -> decode and validate -> batched writes -> acknowledgements.

Sources hand over `Delivery`s (messages acknowledged together) with `submit()`, which waits when
the pipeline is full: that wait is the backpressure on MQTT (unacked messages stop at the broker's
in-flight limit) and Kafka (the consumer pauses). A write batch is made of whole deliveries, and a
delivery is acknowledged only after the batch holding it is committed (see processors.writer).
With several writers (`writer.connections`), consecutive batches are in transactions at once (the
service's work on one overlaps the database's on another); acknowledgements still go in batch
order, each only once its batch and every earlier one committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core import telemetry
from core.config import Settings
from ingest.routing import IdentityMismatch, RouteMatch, Router
from ingest.validation import Rejected, Validator, bad_text
from processors.writer import DeadLetter, MessageOrigin, TimescaleWriter, WriteBatch, WriteResult
from schemas.decoders import DECODERS
from schemas.readings import DecodeContext, DecodeError, Reading
from schemas.sparkplug import SparkplugSessions

log = logging.getLogger(__name__)

NO_HEADERS: Mapping[str, str] = {}  # shared, never mutated


@dataclass(slots=True)
class Message:
    payload: bytes
    topic: str
    received_at: datetime  # when citykpi received it
    headers: Mapping[str, str] | None = None
    partition: int | None = None
    offset: int | None = None
    message_id: UUID | None = None  # set when a dead letter is requeued, so new rejects join its group
    sent_at: datetime | None = None  # the broker's timestamp where it keeps one (Kafka)
    unreadable: str | None = None  # why the source could not read the record (payload unavailable)


async def _no_ack() -> None:
    return None


@dataclass
class Delivery:
    """Messages from one source, acknowledged together once their readings are committed."""

    source: str
    router: Router
    messages: list[Message]
    ack: Callable[[], Awaitable[None]] = _no_ack
    position: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineStats:
    messages: int = 0
    readings: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    batches: int = 0
    write_seconds: float = 0.0
    rollup_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)


_STOP = object()


def _stop_nowait(queue: asyncio.Queue[Any]) -> None:
    """Tell the next loop to stop without waiting on it: after a failure or a cancellation it may be
    gone, and a loop blocked on its full queue would hang `abort()`."""
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(_STOP)


def _located(r: Reading) -> str:
    """Where a rejected reading sits in its payload, for the dead letter's detail."""
    return f"{r.path} ({r.metric})" if r.path else r.metric


@lru_cache(maxsize=1024)
def _zone(name: str) -> tzinfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # the database holds a name this host lacks
        return None


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        writers: TimescaleWriter | Sequence[TimescaleWriter],
        on_write: Callable[[WriteResult], None] | None = None,
        publish_dead_letters: Callable[[list[DeadLetter]], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self._publish_dead_letters = publish_dead_letters
        self.writers = [writers] if isinstance(writers, TimescaleWriter) else list(writers)
        self.writer = self.writers[0]  # the Sparkplug sessions and city zones are read through it
        self.validator = Validator(settings.validation)
        self._naive_times_in_city = settings.validation.naive_times == "city"
        self._configured_zones = {c.city_id: c.timezone for c in settings.cities}
        self.stats = PipelineStats()
        self._on_write = on_write
        self._inbound: asyncio.Queue[Any] = asyncio.Queue(maxsize=32)
        self._to_write: asyncio.Queue[Any] = asyncio.Queue(maxsize=2)
        # batches in their transactions, oldest first, with their acks (at most one per writer)
        self._committing: asyncio.Queue[Any] = asyncio.Queue(maxsize=len(self.writers))
        self._in_flight: deque[asyncio.Task[WriteResult]] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._queued_rows = 0  # decoded, handed to the write loop, not yet written
        # the one stateful decoder's state, stored by the writer
        self.sparkplug = SparkplugSessions(max_devices_per_node=settings.mqtt.sparkplug_max_devices_per_node)

    async def load_sparkplug_sessions(self) -> None:
        """Resume the Sparkplug B aliases, seq and online flags stored before a restart."""
        self.sparkplug.load(await self.writer.sparkplug_sessions())
        self._report_sparkplug()

    def _report_sparkplug(self) -> None:
        online, offline = self.sparkplug.counts()
        telemetry.SPARKPLUG_SESSIONS.labels("online").set(online)
        telemetry.SPARKPLUG_SESSIONS.labels("offline").set(offline)
        telemetry.SPARKPLUG_SEQ_GAPS.set(self.sparkplug.seq_gaps)

    async def start(self) -> None:
        await self.load_sparkplug_sessions()
        self._tasks = [
            asyncio.create_task(self._decode_loop(), name="citykpi-decode"),
            asyncio.create_task(self._write_loop(), name="citykpi-write"),
            asyncio.create_task(self._ack_loop(), name="citykpi-ack"),
        ]

    async def submit(self, delivery: Delivery) -> None:
        """Queue a delivery; waits while the pipeline is full (backpressure)."""
        if self._closed:
            raise RuntimeError("pipeline is closed")
        await self._inbound.put(delivery)

    def is_full(self) -> bool:
        return self._inbound.full()

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The decode, write and acknowledgement loops, for the service's supervisor."""
        return self._tasks

    async def abort(self) -> None:
        """Stop at once: what is not committed stays unacknowledged (the drain deadline passed)."""
        self._closed = True
        for t in [*self._tasks, *self._in_flight]:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._in_flight, return_exceptions=True)

    async def drain_and_stop(self) -> None:
        """Write and acknowledge everything already submitted, then stop."""
        if self._closed:
            return
        self._closed = True
        await self._inbound.put(_STOP)
        await asyncio.gather(*self._tasks)

    # -- decoding -------------------------------------------------------------------------
    async def _decode_loop(self) -> None:
        max_rows = self.settings.writer.batch_max_rows
        max_delay = self.settings.writer.batch_max_delay_s
        try:
            while True:
                item = await self._inbound.get()
                if item is _STOP:
                    break
                batch, acks, deadline = WriteBatch(source=""), [], time.monotonic() + max_delay
                stop = False
                while True:
                    self._decode_delivery(item, batch)
                    acks.append(item.ack)
                    telemetry.QUEUE_ROWS.set(self._queued_rows + len(batch))
                    if len(batch) >= max_rows:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._inbound.get(), remaining)
                    except TimeoutError:
                        break
                    if item is _STOP:
                        stop = True
                        break
                self._queued_rows += len(batch)
                await self._to_write.put((batch, acks))
                if stop:
                    break
        except BaseException:
            _stop_nowait(self._to_write)
            raise
        await self._to_write.put(_STOP)

    def _zone_of(self, city: str | None) -> tzinfo | None:
        """The zone zone-less payload times of `city` are read in (validation.naive_times = "city"):
        the database's cities.timezone (registry imports included), else the configuration's; else UTC."""
        if city is None or not self._naive_times_in_city:
            return None
        name = self.writer.city_zones.get(city) or self._configured_zones.get(city)
        return _zone(name) if name else None

    @staticmethod
    def _reject(
        batch: WriteBatch,
        origin: MessageOrigin,
        reason: str,
        detail: str,
        city: str | None = None,
        device: str | None = None,
    ) -> None:
        batch.dead_letters.append(origin.dead_letter(reason, detail, city, device))
        telemetry.REJECTED.labels(origin.source, reason).inc()

    def _decode_delivery(self, d: Delivery, batch: WriteBatch) -> None:
        now = datetime.now(UTC)
        sources = batch.source.split("+") if batch.source else []
        if d.source not in sources:
            batch.source = "+".join([*sources, d.source])
        batch.position.setdefault(d.source, []).append(d.position)
        batch.messages += len(d.messages)
        n_before = len(batch)
        decode = self.decode_message
        for m in d.messages:
            decode(batch, d.source, m, d.router.match, now)
        telemetry.MESSAGES_RECEIVED.labels(d.source).inc(len(d.messages))
        telemetry.READINGS_RECEIVED.labels(d.source).inc(len(batch) - n_before)

    def decode_message(
        self,
        batch: WriteBatch,
        source: str,
        m: Message,
        route_of: Callable[[str], RouteMatch | None],
        now: datetime,
    ) -> None:
        """One message into `batch`: its valid readings, and a dead letter (with the payload, so it
        can be requeued) for the message or each part that fails. Live ingestion and replay share it."""
        settings = self.settings.validation
        origin = MessageOrigin(
            source,
            m.topic,
            m.partition,
            m.offset,
            m.received_at,
            m.payload,
            settings.dead_letter_payload_bytes,
            m.headers,
            m.message_id,
            m.sent_at,
        )
        o = len(batch.origins)
        batch.origins.append(origin)
        reject = self._reject
        if m.unreadable is not None:
            reject(batch, origin, "unreadable_record", m.unreadable)
            return
        if len(m.payload) > settings.max_payload_bytes:
            reject(
                batch, origin, "payload_too_large", f"{len(m.payload)} bytes > {settings.max_payload_bytes}"
            )
            return
        if (detail := bad_text("topic", m.topic)) is not None:
            reject(batch, origin, "bad_text", detail)
            return
        route = route_of(m.topic)
        if route is None:
            reject(batch, origin, "no_route", f"no configured route matches topic {m.topic!r}")
            return
        decoder = DECODERS.get(route.format)
        if decoder is None:
            reject(batch, origin, "unknown_format", route.format)
            return
        ctx = DecodeContext(
            default_time=m.sent_at or m.received_at,
            topic=m.topic,
            headers=m.headers or NO_HEADERS,
            device_id=route.device or None,
            city=route.city,
            field_map=route.field_map,
            timezone=self._zone_of(route.city),
            sparkplug=self.sparkplug,
        )
        try:
            decoded = decoder(m.payload, ctx)
        except DecodeError as e:
            reject(batch, origin, e.reason, e.detail, route.dead_letter_city, route.device)
            return
        except Exception as e:  # a decoder bug must not stop the service
            log.exception("decoder %s crashed on %s", route.format, m.topic)
            reject(
                batch,
                origin,
                "decoder_error",
                f"{type(e).__name__}: {e}",
                route.dead_letter_city,
                route.device,
            )
            return
        finally:
            if self.sparkplug.changed:  # stored with this batch, so a redelivery finds what it left
                batch.sparkplug_sessions.update((r.key, r) for r in self.sparkplug.take_changed())
        for part in decoded.rejected:
            reject(
                batch,
                origin,
                part.reason,
                part.describe(),
                route.dead_letter_city,
                part.device_id or route.device,
            )
        add = self.add_reading
        for r in decoded:
            add(batch, o, route, r, now)

    def add_reading(self, batch: WriteBatch, o: int, route: RouteMatch, r: Reading, now: datetime) -> None:
        """A decoded reading into `batch` (from the message `batch.origins[o]`) once it is valid and
        the route accepts its city and device; else a dead letter of that message."""
        try:
            value = self.validator.canonical(r, now)
            # then the route decides whose word counts for city and device (IdentityMismatch)
            city, device = route.city_of(r.city), route.device_of(r.device_id)
        except (Rejected, IdentityMismatch) as e:
            self._reject(
                batch,
                batch.origins[o],
                e.reason,
                f"{_located(r)}: {e.detail}",
                route.dead_letter_city,  # never the payload's city: a device must not file into another
                r.device_id,
            )
            return
        batch.add(city, device, r.metric, r.time, value, 0, o)

    def reject(
        self, batch: WriteBatch, origin: MessageOrigin, error: DecodeError, city: str | None = None
    ) -> None:
        """A decode error found outside a payload (a replayed archive's row) as a dead letter."""
        self._reject(batch, origin, error.reason, error.detail, city)

    # -- writing --------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        """Each batch onto the writers in turn, each writer one transaction at a time: batch i waits
        for batch i - len(writers) (on the same writer) to finish. A batch carrying Sparkplug
        sessions waits for every earlier batch, so session rows are stored in the order they changed."""
        writers, in_flight = self.writers, self._in_flight
        turn = 0
        try:
            while True:
                item = await self._to_write.get()
                if item is _STOP:
                    break
                batch, acks = item
                if len(in_flight) == len(writers):
                    await asyncio.wait([in_flight[0]])
                if batch.sparkplug_sessions and in_flight:
                    await asyncio.wait(in_flight)
                while in_flight and in_flight[0].done():
                    in_flight.popleft()
                task = asyncio.create_task(writers[turn].write(batch), name="citykpi-write-batch")
                turn = (turn + 1) % len(writers)
                in_flight.append(task)
                await self._committing.put((task, batch, acks))
        except BaseException:
            _stop_nowait(self._committing)
            raise
        await self._committing.put(_STOP)

    async def _ack_loop(self) -> None:
        """Acknowledge the batches in order, each once it is committed (and so is every earlier one)."""
        while True:
            item = await self._committing.get()
            if item is _STOP:
                return
            task, batch, acks = item
            result = await task
            if self._publish_dead_letters is not None and batch.dead_letters:
                await self._publish_dead_letters(batch.dead_letters)
            for ack in acks:
                try:
                    await ack()
                except Exception as e:  # e.g. a Kafka rebalance: the new owner replays, stored once
                    log.warning(
                        "acknowledgement failed after commit (%s); messages will be redelivered "
                        "and ignored as duplicates",
                        e,
                    )
            self._queued_rows -= len(batch)
            telemetry.QUEUE_ROWS.set(self._queued_rows)
            self._record(batch, result)

    def _record(self, batch: WriteBatch, result: WriteResult) -> None:
        s = self.stats
        s.messages += batch.messages
        s.readings += result.received
        s.stored += result.stored
        s.duplicates += result.duplicates
        s.dead_letters += result.dead_letters
        s.batches += 1
        s.write_seconds += result.seconds
        s.rollup_seconds += result.rollup_seconds
        src = batch.source or "none"
        telemetry.READINGS_STORED.labels(src).inc(result.stored)
        telemetry.READINGS_DUPLICATE.labels(src).inc(result.duplicates)
        telemetry.BATCH_ROWS.observe(result.received)
        telemetry.WRITE_SECONDS.observe(result.seconds)
        telemetry.LAST_WRITE.set(time.time())
        self._report_sparkplug()
        if self._on_write is not None:
            self._on_write(result)
