"""Listing, showing and re-queuing dead letters once a route, city, registry or unit table is fixed.

The unit of a requeue is the inbound message: every dead letter of one message shares its
`message_id`, the payload is stored with one of them, with the message's own times: `received_at`
(when citykpi received it) and `sent_at` (the broker's timestamp, Kafka). A requeue decodes the whole
message again stamping time-less readings as the first decode did (`sent_at`, else `received_at`),
so the readings it already stored
are duplicates (stored nothing twice) and only the parts that failed can land; parts that fail
again become new dead letters of the same message, and the old ones are marked requeued.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from core.config import Settings
from ingest.pipeline import Delivery, Message, Pipeline
from ingest.routing import Router
from processors.writer import MAX_TOPIC_CHARS, TimescaleWriter

LEGACY_REQUEUE_PREFIX = "requeue:"  # older releases prefixed the source on each requeue


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a command works on; all given conditions must hold."""

    reasons: tuple[str, ...] = ()
    city: str | None = None
    topic: str | None = None  # an MQTT filter (`+`, `#`) or an exact Kafka topic
    since: datetime | None = None
    until: datetime | None = None
    ids: tuple[int, ...] = ()
    include_requeued: bool = False

    def is_empty(self) -> bool:
        return not (self.reasons or self.city or self.topic or self.since or self.until or self.ids)

    def where(self) -> tuple[str, list[Any]]:
        """A SQL condition over `dead_letters` and its arguments ($1...)."""
        conds = [] if self.include_requeued else ["requeued_at IS NULL"]
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if self.reasons:
            conds.append(f"reason = ANY({arg(list(self.reasons))}::text[])")
        if self.city:
            conds.append(f"city_id = {arg(self.city)}")
        if self.topic:
            conds.append(f"topic ~ {arg(topic_filter_regex(self.topic))}")
        if self.since:
            conds.append(f"received_at >= {arg(self.since)}")
        if self.until:
            conds.append(f"received_at < {arg(self.until)}")
        if self.ids:
            conds.append(f"id = ANY({arg(list(self.ids))}::bigint[])")
        return " AND ".join(conds) or "true", args


def topic_filter_regex(topic_filter: str) -> str:
    """An anchored POSIX regex matching the topics an MQTT filter matches."""
    parts = []
    for level in topic_filter.split("/"):
        if level == "#":
            parts.append(".*")
            break
        parts.append("[^/]*" if level == "+" else re.escape(level))
    regex = "/".join(parts)
    if regex.endswith("/.*"):  # "a/#" also matches "a" itself
        regex = regex[:-3] + "(/.*)?"
    return f"^{regex}$"


async def _connect(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(settings.database.url.get_secret_value())


async def list_dead_letters(
    settings: Settings, where: DeadLetterFilter, limit: int
) -> tuple[list[tuple[str, int]], list[asyncpg.Record]]:
    """Counts by reason and the newest `limit` dead letters matching `where`."""
    cond, args = where.where()
    conn = await _connect(settings)
    try:
        counts = await conn.fetch(
            f"SELECT reason, count(*) AS n FROM dead_letters WHERE {cond} GROUP BY reason ORDER BY n DESC",
            *args,
        )
        rows = await conn.fetch(
            "SELECT id, received_at, source, topic, city_id, device_id, reason, detail, payload_size, "
            f"requeued_at FROM dead_letters WHERE {cond} ORDER BY id DESC LIMIT {int(limit)}",
            *args,
        )
        return [(r["reason"], r["n"]) for r in counts], rows
    finally:
        await conn.close()


@dataclass
class DeadLetterView:
    """One dead letter with its message's payload (stored once per message, maybe on a sibling)."""

    row: asyncpg.Record
    payload: bytes | None
    siblings: int  # other dead letters of the same message

    @property
    def cut(self) -> bool:
        return self.payload is not None and len(self.payload) < self.row["payload_size"]


async def show_dead_letter(settings: Settings, dead_letter_id: int) -> DeadLetterView | None:
    conn = await _connect(settings)
    try:
        row = await conn.fetchrow("SELECT * FROM dead_letters WHERE id = $1", dead_letter_id)
        if row is None:
            return None
        if row["message_id"] is None:
            return DeadLetterView(row, row["payload"], 0)
        payload = row["payload"]
        if payload is None:
            payload = await conn.fetchval(
                "SELECT payload FROM dead_letters WHERE message_id = $1 AND payload IS NOT NULL "
                "ORDER BY id LIMIT 1",
                row["message_id"],
            )
        siblings = await conn.fetchval(
            "SELECT count(*) - 1 FROM dead_letters WHERE message_id = $1", row["message_id"]
        )
        return DeadLetterView(row, payload, siblings)
    finally:
        await conn.close()


@dataclass
class RequeueResult:
    messages: int = 0  # inbound messages decoded again
    dead_letters: int = 0  # dead letters marked requeued (every one of those messages)
    stored: int = 0  # readings stored now
    already_stored: int = 0  # readings the first pass had stored: not stored again
    still_rejected: int = 0  # new dead letters (same message, same original time)
    skipped: Counter[str] = field(default_factory=Counter)  # why a message could not be replayed
    reasons: Counter[str] = field(default_factory=Counter)  # of the dead letters requeued


# One page of matching dead letters, in id order, up to the last id that existed when the requeue began
# (the rows it adds come after it). Parameters after the filter's: last id seen, top id, page size.
_PAGE = """
SELECT id, message_id FROM dead_letters WHERE ({cond}) AND id > ${n1} AND id <= ${n2} ORDER BY id LIMIT ${n3}
"""
# Every unrequeued dead letter of those messages (rows older than message ids are their own message).
_MEMBERS = """
SELECT id, message_id, reason FROM dead_letters
WHERE requeued_at IS NULL AND id <= $3 AND (message_id = ANY($1::uuid[]) OR id = ANY($2::bigint[]))
ORDER BY id
"""
# The message itself: from its row that kept the payload.
_MESSAGE_COLUMNS = 'source, topic, partition, "offset", received_at, sent_at, headers, payload, payload_size'
_MESSAGES = f"""
SELECT DISTINCT ON (message_id) message_id, {_MESSAGE_COLUMNS} FROM dead_letters
WHERE message_id = ANY($1::uuid[]) ORDER BY message_id, payload IS NULL, id
"""
_LEGACY_MESSAGES = f"SELECT id, {_MESSAGE_COLUMNS} FROM dead_letters WHERE id = ANY($1::bigint[])"


def _unreplayable(msg: asyncpg.Record) -> str | None:
    """Why a stored message cannot be replayed, or None."""
    if msg["payload"] is None:
        return "no payload kept"
    if not msg["topic"]:
        return "no topic"
    if len(msg["topic"]) >= MAX_TOPIC_CHARS and msg["topic"].endswith("…"):
        return "topic cut"
    if len(msg["payload"]) < msg["payload_size"]:
        return "payload cut"
    return None


def _message(msg: asyncpg.Record, message_id: UUID | None) -> Message:
    headers = msg["headers"]
    return Message(
        bytes(msg["payload"]),
        msg["topic"],
        msg["received_at"],
        json.loads(headers) if isinstance(headers, str) else headers,
        msg["partition"],
        msg["offset"],
        message_id,
        msg["sent_at"],
    )


REQUEUE_PAGE = 2000  # messages decoded, written and marked at a time: memory stays flat


async def requeue_dead_letters(
    settings: Settings, where: DeadLetterFilter, dry_run: bool = False, page_size: int = REQUEUE_PAGE
) -> RequeueResult:
    """Decode the messages behind the matching dead letters again, with their original times.

    Page by page: each page's messages are written, then their dead letters marked requeued; a crash
    between the two replays the page again, which stores no reading twice.
    """
    cond, args = where.where()
    n = len(args)
    page_query = _PAGE.format(cond=cond, n1=n + 1, n2=n + 2, n3=n + 3)
    dsn = settings.database.url.get_secret_value()
    result = RequeueResult()
    conn = await asyncpg.connect(dsn)
    try:
        top = await conn.fetchval("SELECT max(id) FROM dead_letters")
        last, seen = 0, set[UUID | int]()  # seen: messages left unmarked (skipped, or a dry run)
        async with TimescaleWriter(dsn, unknown_device=settings.validation.unknown_device) as writer:
            while top is not None:
                page = await conn.fetch(page_query, *args, last, top, page_size)
                if not page:
                    break
                last = page[-1]["id"]
                keys = {r["message_id"] or r["id"] for r in page} - seen
                replay = await _messages(conn, keys, top, result)
                seen.update(keys if dry_run else keys - {k for k, _m, _s, _ids in replay})
                if dry_run or not replay:
                    continue
                await _replay(settings, writer, replay, result)
                await conn.execute(
                    "UPDATE dead_letters SET requeued_at = now() WHERE id = ANY($1::bigint[])",
                    [i for _k, _m, _s, ids in replay for i in ids],
                )
    finally:
        await conn.close()
    return result


async def _messages(
    conn: asyncpg.Connection, keys: set[UUID | int], top: int, result: RequeueResult
) -> list[tuple[UUID | int, Message, str, list[int]]]:
    """(key, message, source, ids of its dead letters) of each replayable message; counts the rest."""
    message_ids = [k for k in keys if isinstance(k, UUID)]
    legacy_ids = [k for k in keys if isinstance(k, int)]
    members: dict[UUID | int, list[asyncpg.Record]] = {}
    for r in await conn.fetch(_MEMBERS, message_ids, legacy_ids, top):
        members.setdefault(r["message_id"] or r["id"], []).append(r)
    stored = {r["message_id"]: r for r in await conn.fetch(_MESSAGES, message_ids)}
    stored.update((r["id"], r) for r in await conn.fetch(_LEGACY_MESSAGES, legacy_ids))
    replay = []
    for key, rows in members.items():
        msg = stored[key]
        if (why := _unreplayable(msg)) is not None:
            result.skipped[why] += 1
            continue
        source = msg["source"].removeprefix(LEGACY_REQUEUE_PREFIX)
        message = _message(msg, key if isinstance(key, UUID) else None)
        replay.append((key, message, source, [r["id"] for r in rows]))
        result.reasons.update(r["reason"] for r in rows)
        result.messages += 1
        result.dead_letters += len(rows)
    return replay


async def _replay(
    settings: Settings,
    writer: TimescaleWriter,
    replay: list[tuple[UUID | int, Message, str, list[int]]],
    result: RequeueResult,
) -> None:
    """Decode, validate and write the messages through the live pipeline, and count the outcome."""
    routers = {"mqtt": Router(settings.mqtt.routes), "kafka": Router(settings.kafka.topics)}
    pipeline = Pipeline(settings, writer)
    pipeline.sparkplug.replay = True  # requeued Sparkplug B messages use the stored aliases, change nothing
    await pipeline.start()
    for _key, message, source, ids in replay:
        router = routers.get(source, routers["mqtt"])
        await pipeline.submit(Delivery(source, router, [message], position={"requeued": ids}))
    await pipeline.drain_and_stop()
    result.stored += pipeline.stats.stored
    result.already_stored += pipeline.stats.duplicates
    result.still_rejected += pipeline.stats.dead_letters
