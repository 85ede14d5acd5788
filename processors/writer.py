"""The TimescaleDB writer: one transaction per batch, idempotent, rollups included.

Commit order (the one place it is written down):
  1. in one transaction: record the ingest batch, COPY readings into a staging table (binary,
     built by NumPy), INSERT … ON CONFLICT DO NOTHING (when it stores fewer rows than staged, ask
     which ones this batch stored), merge the new rows' partial aggregates and
     meter steps (processors/meters.py) into the rollup tables, mark the past local days they
     reach for a KPI recompute (processors/late.py), store dead letters (rejects and same-key
     conflicts) and the Sparkplug B sessions the batch's messages changed (aliases, seq, online);
  2. COMMIT;
  3. only then does the caller acknowledge the messages (MQTT PUBACK, Kafka offset commit).
A crash before 3 redelivers the messages; step 1 then stores nothing twice and aggregates nothing
twice, because only rows this batch stored reach the rollups. Several writers may run step
1 at once (`writer.connections`, ingest/pipeline.py acknowledges in batch order): the rollup merges
add up in any order, each meter is locked before it is stepped, and rows are locked in one order.

Retriable errors (connection loss, restart, deadlock…) keep the batch and retry with capped,
full-jitter exponential backoff (tenacity); while the server is unreachable it is probed every
`probe_interval_s`, so writes resume as soon as it answers. Permanent ones (the database rejects
the data) bisect the batch: its rows in halves, its dead letters on their own, down to the one row
or dead letter at fault, which becomes a dead letter (a dead letter at fault is stored stripped to
its reason and position; one that still fails is logged and dropped). So one message can never stop ingestion.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt
import tenacity

from core import telemetry
from processors import errors
from processors.batch import ReadingBatch
from processors.late import mark_late_days
from processors.registration import RegistrationBudget
from processors.rollups import binary_copy, merge_rollups, series_of
from schemas import statements as sql
from schemas.metrics import METRICS
from schemas.sparkplug import SessionKey, SessionRow
from schemas.text import escaped, escaped_json

log = logging.getLogger(__name__)


# Dead-letter text columns are cut to these lengths (a 10,000-character topic is an attack, not a topic).
MAX_TOPIC_CHARS = 1024
MAX_ID_CHARS = 256
MAX_DETAIL_CHARS = 2000


def _cut(text: str | None, limit: int) -> str | None:
    """`text` capped (a cut one ends in …), NUL and lone surrogates escaped: always storable."""
    if text is None:
        return None
    safe = escaped(str(text), limit + 1)
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"


@dataclass(slots=True)
class DeadLetter:
    """A rejected message or part of one; `message_id`, its times, topic and payload replay it."""

    source: str
    reason: str
    detail: str = ""
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    city_id: str | None = None
    device_id: str | None = None
    payload: bytes | None = None
    payload_size: int = 0
    received_at: datetime | None = None
    headers: Mapping[str, str] | None = None
    message_id: uuid.UUID | None = None
    sent_at: datetime | None = None

    def record(self, with_payload: bool = True) -> tuple[object, ...]:
        """The table row: every text capped and escaped, so storing it cannot fail on its content."""
        return (
            _cut(self.source, MAX_ID_CHARS),
            _cut(self.topic, MAX_TOPIC_CHARS),
            self.partition,
            self.offset,
            _cut(self.city_id, MAX_ID_CHARS),
            _cut(self.device_id, MAX_ID_CHARS),
            _cut(self.reason, MAX_ID_CHARS),
            _cut(self.detail, MAX_DETAIL_CHARS),
            self.payload if with_payload else None,
            self.payload_size,
            self.received_at or datetime.now(UTC),
            json.dumps(escaped_json(dict(self.headers))) if self.headers else None,
            self.message_id,
            self.sent_at,
        )

    def stripped(self, error: str) -> DeadLetter:
        """What is left to store of a dead letter the database refused: reason, position, payload."""
        return DeadLetter(
            "unknown",
            "dead_letter_rejected",
            ascii(f"{self.reason}: {error}"),
            partition=self.partition,
            offset=self.offset,
            payload=self.payload,
            payload_size=self.payload_size,
            received_at=self.received_at,
            message_id=self.message_id,
            sent_at=self.sent_at,
        )


def dead_letter_records(dead: list[DeadLetter]) -> list[tuple[object, ...]]:
    """Rows for the dead_letters table; a message's payload is stored once, on its first row."""
    kept: set[uuid.UUID] = set()
    rows = []
    for d in dead:
        first = d.message_id is None or d.message_id not in kept
        if d.message_id is not None:
            kept.add(d.message_id)
        rows.append(d.record(with_payload=first))
    return rows


@dataclass(slots=True)
class MessageOrigin:
    """The inbound message a reading came from, so a later rejection can still replay it."""

    source: str
    topic: str | None
    partition: int | None
    offset: int | None
    received_at: datetime | None
    payload: bytes
    payload_cap: int  # validation.dead_letter_payload_bytes
    headers: Mapping[str, str] | None = None
    message_id: uuid.UUID | None = None  # made on the first rejection; kept across requeues
    sent_at: datetime | None = None

    def dead_letter(
        self, reason: str, detail: str, city: str | None = None, device: str | None = None
    ) -> DeadLetter:
        if self.message_id is None:
            self.message_id = uuid.uuid4()
        return DeadLetter(
            self.source,
            reason,
            detail,
            self.topic,
            self.partition,
            self.offset,
            city,
            device,
            self.payload[: self.payload_cap],
            len(self.payload),
            self.received_at,
            self.headers,
            self.message_id,
            self.sent_at,
        )


@dataclass
class WriteBatch:
    """Validated readings (parallel columns) and dead letters from whole inbound messages."""

    source: str
    city: list[str] = field(default_factory=list)
    device: list[str] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)
    time: list[datetime] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)
    origin: list[int] = field(default_factory=list)  # per row: index into `origins`
    origins: list[MessageOrigin] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    position: dict[str, Any] = field(default_factory=dict)
    messages: int = 0
    sparkplug_sessions: dict[SessionKey, SessionRow] = field(
        default_factory=dict
    )  # what its messages changed

    def __len__(self) -> int:
        return len(self.value)

    def add(
        self, city: str, device: str, metric: str, t: datetime, value: float, flags: int = 0, origin: int = -1
    ) -> None:
        """One reading; `origin` indexes `origins` (-1: no message to replay it from)."""
        self.city.append(city)
        self.device.append(device)
        self.metric.append(metric)
        self.time.append(t)
        self.value.append(value)
        self.flags.append(flags)
        self.origin.append(origin)

    def dead_letter(self, row: int, reason: str, detail: str) -> DeadLetter:
        """A dead letter for one row, carrying its message when the row has one."""
        i = self.origin[row]
        if i < 0:
            return DeadLetter(self.source, reason, detail, city_id=self.city[row], device_id=self.device[row])
        return self.origins[i].dead_letter(reason, detail, self.city[row], self.device[row])

    def take(self, idx: list[int]) -> WriteBatch:
        """A batch of the chosen rows, without dead letters (used to bisect a rejected batch)."""
        return WriteBatch(
            source=self.source,
            city=[self.city[i] for i in idx],
            device=[self.device[i] for i in idx],
            metric=[self.metric[i] for i in idx],
            time=[self.time[i] for i in idx],
            value=[self.value[i] for i in idx],
            flags=[self.flags[i] for i in idx],
            origin=[self.origin[i] for i in idx],
            origins=self.origins,
            position=self.position,
        )


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
PG_EPOCH_US = 946_684_800_000_000  # PostgreSQL's binary timestamptz counts µs from 2000-01-01 UTC
STAGING_TYPES = (">i8", ">i4", ">i2", ">f8", ">i2")  # staging_readings' columns, binary COPY


@dataclass(frozen=True, slots=True)
class StagedReadings:
    """A batch's readings of known devices as columns (times in epoch µs), with the batch row each
    came from: COPYed into staging_readings in binary, built by NumPy, and handed to the rollups as
    they are when the insert stores them all (no rows sent back)."""

    row: npt.NDArray[np.int64]
    device_key: npt.NDArray[np.int64]
    metric_id: npt.NDArray[np.int64]
    ts_us: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    flags: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.row.shape[0])

    def copy_stream(self) -> bytes:
        columns: list[npt.NDArray[np.generic]] = [
            self.ts_us - PG_EPOCH_US,
            self.device_key,
            self.metric_id,
            self.value,
            self.flags,
        ]
        return binary_copy(columns, STAGING_TYPES)


@dataclass
class WriteResult:
    received: int
    stored: int
    duplicates: int
    dead_letters: int
    rollup_rows: int
    seconds: float
    rollup_seconds: float = 0.0  # the share of `seconds` spent aggregating and merging rollups

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            self.received + other.received,
            self.stored + other.stored,
            self.duplicates + other.duplicates,
            self.dead_letters + other.dead_letters,
            self.rollup_rows + other.rollup_rows,
            self.seconds + other.seconds,
            self.rollup_seconds + other.rollup_seconds,
        )


class TimescaleWriter:
    """Writes `WriteBatch`es over one dedicated connection; `start()`/`stop()` bound its life."""

    def __init__(
        self,
        dsn: str,
        *,
        unknown_device: str = "register",
        registration: RegistrationBudget | None = None,
        max_backoff_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float | None = None,
        probe_interval_s: float = 0.25,
        max_attempts: int = 5,
    ) -> None:
        self._dsn = dsn
        self._unknown_device = unknown_device
        self._registration = registration  # None: register every unknown device
        self._max_backoff_s = max_backoff_s
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._probe_interval_s = probe_interval_s
        self._max_attempts = max_attempts
        self._conn: asyncpg.Connection | None = None
        self._devices: dict[tuple[str, str], int] = {}
        self._metric_ids: dict[str, int] = {}
        self._decibel_ids: frozenset[int] = frozenset()
        self._cumulative_ids: frozenset[int] = frozenset()
        self._cities: dict[str, str] = {}  # city -> IANA time zone
        self._stopping = asyncio.Event()
        self._busy_since: float | None = None  # monotonic start of the write() in progress
        self._progress_at = 0.0  # monotonic time of the last commit

    @property
    def blocked_s(self) -> float:
        """How long the write in progress has gone without a commit (0 when no write is waiting)."""
        if self._busy_since is None:
            return 0.0
        return time.monotonic() - max(self._busy_since, self._progress_at)

    async def start(self) -> None:
        await self._connect()

    async def stop(self) -> None:
        """Stop; a write still waiting on the database is interrupted (its batch stays unacknowledged)."""
        self._stopping.set()
        await self._drop_connection()

    async def __aenter__(self) -> TimescaleWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def city_zones(self) -> Mapping[str, str]:
        """Each known city's time zone (cities.timezone), as of the writer's last look."""
        return self._cities

    async def sparkplug_sessions(self) -> list[asyncpg.Record]:
        """Every stored Sparkplug B session (schemas/sparkplug/sessions.py), to resume after a restart."""
        conn = await self._connect()
        return list(await conn.fetch(sql.SPARKPLUG_SESSIONS))

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def _connect(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        conn = await asyncpg.connect(
            self._dsn, timeout=self._connect_timeout_s, command_timeout=self._command_timeout_s
        )
        await conn.execute(sql.STAGING_READINGS)
        await conn.execute(sql.STAGING_ROLLUPS)
        rows = await conn.fetch(sql.METRIC_IDS)
        self._metric_ids = {r["name"]: r["metric_id"] for r in rows}
        self._decibel_ids = frozenset(r["metric_id"] for r in rows if r["aggregation"] == "decibel")
        self._cumulative_ids = frozenset(r["metric_id"] for r in rows if r["aggregation"] == "cumulative")
        self._cities = {r["city_id"]: r["timezone"] for r in await conn.fetch(sql.KNOWN_CITIES)}
        self._conn = conn
        return conn

    async def write(self, batch: WriteBatch) -> WriteResult:
        """Commit the batch, retrying retriable failures until it lands or the writer stops."""
        self._busy_since = time.monotonic()
        try:
            return await self._write_all(batch)
        finally:
            self._busy_since = None

    async def _write_all(self, batch: WriteBatch) -> WriteResult:
        pending = [batch]  # left to commit, in order; a rejected piece is replaced by its parts
        total = WriteResult(0, 0, 0, 0, 0, 0.0)
        while pending:
            piece = pending[0]
            try:
                total += await self._write_retrying(piece)
            except errors.PermanentWriteError as e:
                if piece is batch and len(batch) > 1:  # once a batch: its halves may fail again
                    log.warning(
                        "the database refused a batch of %d readings (%s); isolating the rows at fault",
                        len(batch),
                        e,
                    )
                pending[0:1] = self._isolate(piece, e.sqlstate, str(e))
                continue
            except errors.RetriableWriteError as e:
                if self._stopping.is_set():
                    raise
                log.error("write failed %d times (%s); isolating the rows at fault", self._max_attempts, e)
                pending[0:1] = self._isolate(piece, e.sqlstate, str(e))
                continue
            self._progress_at = time.monotonic()
            pending.pop(0)
        return total

    async def _write_retrying(self, piece: WriteBatch) -> WriteResult:
        """`_write_once`, retried with full-jitter exponential backoff (tenacity) while the error is
        retriable; raises the error when the writer stops or after `max_attempts` suspect failures
        (the caller then isolates the rows at fault), and a permanent error at once."""
        suspect = 0
        unreachable = False

        def counted_and_retriable(e: BaseException) -> bool:
            nonlocal suspect, unreachable
            if isinstance(e, errors.PermanentWriteError):
                telemetry.WRITE_FAILURES.labels(e.sqlstate[:2], "permanent").inc()
            if not isinstance(e, errors.RetriableWriteError):
                return False
            telemetry.WRITE_FAILURES.labels(e.sqlstate[:2] or "connection", "retriable").inc()
            suspect += e.suspect
            unreachable = e.unreachable
            return True

        async def before_retry(state: tenacity.RetryCallState) -> None:
            n = state.attempt_number
            if n == 1 or n % 10 == 0:
                log.warning(
                    "write failed (%s); retry %d in at most %.1f s, batch kept (%d readings, source %s)",
                    state.outcome.exception() if state.outcome else None,
                    n,
                    state.next_action.sleep if state.next_action else 0.0,
                    len(piece),
                    piece.source,
                )
            await self._drop_connection()

        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(counted_and_retriable),
            stop=lambda _: self._stopping.is_set() or suspect >= self._max_attempts,
            wait=tenacity.wait_random_exponential(multiplier=0.1, max=self._max_backoff_s),
            sleep=lambda delay: self._wait_to_retry(delay, probe=unreachable),
            before_sleep=before_retry,
            reraise=True,
        )
        return await retrying(self._write_once, piece)

    async def _wait_to_retry(self, delay: float, probe: bool) -> None:
        """Sleep `delay`; if the server was unreachable, probe it meanwhile and return once it answers."""
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0 and not self._stopping.is_set():
            if probe:
                try:
                    await self._connect()
                    return
                except Exception as e:  # still down: the next retry reports it
                    log.debug("database probe failed: %s", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), min(left, self._probe_interval_s))

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                await asyncio.wait_for(self._conn.close(), 2)
            except Exception:  # the connection is already broken; terminate it
                self._conn.terminate()
            self._conn = None

    def _isolate(self, batch: WriteBatch, sqlstate: str, error: str) -> list[WriteBatch]:
        """The parts to try instead of a batch the database refused, narrowing down to the culprit."""
        if len(batch) > 1:
            half = len(batch) // 2
            parts = [batch.take(list(range(half))), batch.take(list(range(half, len(batch))))]
            if batch.dead_letters or batch.sparkplug_sessions:
                parts.append(self._dead_letters_only(batch, batch.dead_letters))
            parts[0].messages = batch.messages
            return parts
        if len(batch) == 1:
            log.error("database rejected a reading (%a); dead-lettering it", error)
            detail = f"{error} ({batch.metric[0]}={batch.value[0]} at {batch.time[0].isoformat()})"
            rejected = batch.dead_letter(0, f"db_rejected:{sqlstate}", detail)
            return [self._dead_letters_only(batch, [*batch.dead_letters, rejected])]
        if len(batch.dead_letters) > 1:
            half = len(batch.dead_letters) // 2
            return [
                self._dead_letters_only(batch, batch.dead_letters[:half]),
                self._dead_letters_only(batch, batch.dead_letters[half:]),
            ]
        if batch.dead_letters and batch.dead_letters[0].reason != "dead_letter_rejected":
            log.error("database rejected a dead letter (%a); storing it stripped", error)
            return [self._dead_letters_only(batch, [batch.dead_letters[0].stripped(error)])]
        log.error("database rejected even a stripped dead letter (%a); dropping it: %a", error, batch)
        return []

    @staticmethod
    def _dead_letters_only(batch: WriteBatch, dead_letters: list[DeadLetter]) -> WriteBatch:
        """The dead letters (and the Sparkplug sessions the batch changed) without the readings."""
        return WriteBatch(
            batch.source,
            dead_letters=dead_letters,
            position=batch.position,
            sparkplug_sessions=batch.sparkplug_sessions,
        )

    async def _write_once(self, batch: WriteBatch) -> WriteResult:
        t0 = time.perf_counter()
        try:
            conn = await self._connect()
            device_keys = await self._device_keys(conn, batch)
            staged, dead = self._staged(batch, device_keys)
            async with conn.transaction():
                position = json.dumps(escaped_json(batch.position))
                batch_id = await conn.fetchval(sql.INSERT_INGEST_BATCH, batch.source, position, len(batch))
                new = staged
                if len(staged):
                    await conn.copy_to_table(
                        "staging_readings",
                        source=io.BytesIO(staged.copy_stream()),
                        columns=sql.STAGING_READINGS_COLUMNS,
                        format="binary",
                    )
                    status = await conn.execute(sql.INSERT_NEW_READINGS, batch_id)
                    if int(status.rsplit(" ", 1)[1]) != len(staged):  # replays: find what was new
                        new = await self._stored_by(conn, batch_id)
                        dead.extend(await self._conflicts(conn, batch, staged))
                t_rollup = time.perf_counter()
                n_rollup = await self._merge_rollups(conn, new)
                t_rollup = time.perf_counter() - t_rollup
                if dead:
                    await conn.copy_records_to_table(
                        "dead_letters", records=dead_letter_records(dead), columns=sql.DEAD_LETTER_COLUMNS
                    )
                if batch.sparkplug_sessions:
                    sessions = [r.record() for r in batch.sparkplug_sessions.values()]
                    await conn.executemany(sql.UPSERT_SPARKPLUG_SESSION, sessions)
                await conn.execute(sql.UPDATE_INGEST_BATCH, batch_id, len(new))
        except (errors.RetriableWriteError, errors.PermanentWriteError):
            raise
        except Exception as e:  # classify by SQLSTATE: retriable or permanent
            raise errors.classify(e) from e
        return WriteResult(
            len(batch),
            len(new),
            len(staged) - len(new),
            len(dead),
            n_rollup,
            time.perf_counter() - t0,
            t_rollup,
        )

    def _staged(
        self, batch: WriteBatch, device_keys: dict[tuple[str, str], int]
    ) -> tuple[StagedReadings, list[DeadLetter]]:
        """The readings of known devices as columns, and the dead letters so far (unknown ones)."""
        dead = list(batch.dead_letters)
        keys = [device_keys.get(k) for k in zip(batch.city, batch.device, strict=True)]
        rows = [i for i, k in enumerate(keys) if k is not None]
        if len(rows) < len(keys):
            for row, key in enumerate(keys):
                if key is None:
                    city, metric, value, t = (
                        batch.city[row],
                        batch.metric[row],
                        batch.value[row],
                        batch.time[row],
                    )
                    reason = "unknown_city" if city not in self._cities else "unknown_device"
                    dead.append(batch.dead_letter(row, reason, f"{metric}={value} at {t.isoformat()}"))
        n, metric_ids = len(rows), self._metric_ids
        return StagedReadings(
            np.array(rows, dtype=np.int64),
            np.fromiter((keys[i] for i in rows), np.int64, n),
            np.fromiter((metric_ids[batch.metric[i]] for i in rows), np.int64, n),
            np.fromiter(((batch.time[i] - EPOCH) // ONE_US for i in rows), np.int64, n),
            np.fromiter((batch.value[i] for i in rows), np.float64, n),
            np.fromiter((batch.flags[i] for i in rows), np.int64, n),
        ), dead

    @staticmethod
    async def _stored_by(conn: asyncpg.Connection, batch_id: int) -> StagedReadings:
        """The staged readings this transaction's insert stored (some were stored before)."""
        got = await conn.fetch(sql.NEW_READINGS_OF_BATCH, batch_id)
        n = len(got)
        return StagedReadings(
            np.full(n, -1, dtype=np.int64),  # not needed: conflicts are looked up in what was staged
            np.fromiter((r[0] for r in got), np.int64, n),
            np.fromiter((r[1] for r in got), np.int64, n),
            np.fromiter((r[2] for r in got), np.int64, n),
            np.fromiter((r[3] for r in got), np.float64, n),
            np.zeros(n, dtype=np.int64),
        )

    async def _device_keys(self, conn: asyncpg.Connection, batch: WriteBatch) -> dict[tuple[str, str], int]:
        cache = self._devices
        missing: dict[tuple[str, str], str] = {}
        origin_of: dict[tuple[str, str], int] = {}
        for c, d, m, o in zip(batch.city, batch.device, batch.metric, batch.origin, strict=True):
            if (c, d) not in cache and METRICS[missing.get((c, d), m)].kind in ("weather", METRICS[m].kind):
                missing[(c, d)] = m  # a bin's temperature must not make it a weather station
                origin_of.setdefault((c, d), o)
        if missing:
            cities, devices = [m[0] for m in missing], [m[1] for m in missing]
            if self._unknown_device == "register":  # the kind of an auto-registered device: its metric's
                new = list(missing)
                if self._registration is not None:  # only devices the database lacks count
                    for r in await conn.fetch(sql.LOOKUP_DEVICES, cities, devices):
                        cache[(r["city_id"], r["device_id"])] = r["device_key"]
                    candidates = [(c, d, origin_of[(c, d)]) for c, d in new if (c, d) not in cache]
                    new = self._registration.admit(k for k in candidates if k[0] in self._cities)
                kinds = [METRICS[missing[k]].kind for k in new]
                await conn.execute(sql.REGISTER_DEVICES, [k[0] for k in new], [k[1] for k in new], kinds)
            for r in await conn.fetch(sql.LOOKUP_DEVICES, cities, devices):
                cache[(r["city_id"], r["device_id"])] = r["device_key"]
            if any(c not in self._cities for c in cities):
                self._cities = {r["city_id"]: r["timezone"] for r in await conn.fetch(sql.KNOWN_CITIES)}
        return cache

    async def _conflicts(
        self, conn: asyncpg.Connection, batch: WriteBatch, staged: StagedReadings
    ) -> list[DeadLetter]:
        name = {v: k for k, v in self._metric_ids.items()}
        row_of = {
            (dk, m, t, v): row
            for dk, m, t, v, row in zip(
                staged.device_key.tolist(),
                staged.metric_id.tolist(),
                staged.ts_us.tolist(),
                staged.value.tolist(),
                staged.row.tolist(),
                strict=True,
            )
        }
        out = []
        for r in await conn.fetch(sql.CONFLICTING_READINGS):
            detail = (
                f"{name.get(r['metric_id'])} at {r['time'].isoformat()}: got {r['value']}, "
                f"kept first stored value {r['stored_value']}"
            )
            row = row_of[(r["device_key"], r["metric_id"], r["ts_us"], r["value"])]
            out.append(batch.dead_letter(row, "conflicting_duplicate", detail))
            telemetry.CONFLICTING_VALUES.labels(batch.city[row]).inc()
        return out

    async def _merge_rollups(self, conn: asyncpg.Connection, new: StagedReadings) -> int:
        """The newly stored readings, as one columnar batch, into the rollups (and late-day marks)."""
        if not len(new):
            return 0
        series, keys = series_of(new.device_key, new.metric_id)
        batch = ReadingBatch.from_columns(series, new.ts_us, new.value)
        n_rollup = await merge_rollups(conn, batch, keys, self._decibel_ids, self._cumulative_ids)
        # last: a concurrent writer's batch of the same city and past day waits on its mark until
        # this transaction commits, so the mark is taken when nothing else is left to do
        await mark_late_days(conn, new.device_key, batch.ts_us)
        return n_rollup
