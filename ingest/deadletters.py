"""Listing and re-queuing dead letters: a fixed route, registry or unit table lets them through."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from ingest.config import Settings
from ingest.pipeline import Delivery, Message, Pipeline
from ingest.routing import Router
from processors.writer import TimescaleWriter


@dataclass
class RequeueResult:
    requeued: int = 0
    stored: int = 0
    still_rejected: int = 0
    skipped: int = 0


async def list_dead_letters(
    settings: Settings, reason: str | None, limit: int
) -> tuple[list[tuple[str, int]], list[asyncpg.Record]]:
    conn = await asyncpg.connect(settings.database.url.get_secret_value())
    try:
        counts = await conn.fetch(
            "SELECT reason, count(*) AS n FROM dead_letters WHERE requeued_at IS NULL "
            "GROUP BY reason ORDER BY n DESC"
        )
        rows = await conn.fetch(
            "SELECT * FROM dead_letters WHERE requeued_at IS NULL AND ($1::text IS NULL OR reason = $1) "
            "ORDER BY id DESC LIMIT $2",
            reason,
            limit,
        )
        return [(r["reason"], r["n"]) for r in counts], rows
    finally:
        await conn.close()


async def requeue_dead_letters(
    settings: Settings, reason: str | None, ids: list[int] | None
) -> RequeueResult:
    """Run stored payloads through the pipeline again; replayed readings are no-ops, so this is safe."""
    dsn = settings.database.url.get_secret_value()
    conn = await asyncpg.connect(dsn)
    result = RequeueResult()
    routers = {"mqtt": Router(settings.mqtt.routes), "kafka": Router(settings.kafka.topics)}
    try:
        rows = await conn.fetch(
            'SELECT id, source, topic, partition, "offset", payload, payload_size FROM dead_letters '
            "WHERE requeued_at IS NULL AND payload IS NOT NULL AND topic IS NOT NULL "
            "AND ($1::text IS NULL OR reason = $1) AND ($2::bigint[] IS NULL OR id = ANY($2)) ORDER BY id",
            reason,
            ids,
        )
        writer = TimescaleWriter(dsn, unknown_device=settings.validation.unknown_device)
        await writer.start()
        pipeline = Pipeline(settings, writer)
        await pipeline.start()
        done: list[int] = []
        for r in rows:
            if len(r["payload"]) < r["payload_size"]:
                result.skipped += 1
                continue
            router = routers.get(r["source"].split("+")[0], routers["mqtt"])
            msg = Message(
                bytes(r["payload"]),
                r["topic"],
                datetime.now(UTC),
                partition=r["partition"],
                offset=r["offset"],
            )
            await pipeline.submit(Delivery(f"requeue:{r['source']}", router, [msg], position={"id": r["id"]}))
            done.append(r["id"])
        await pipeline.drain_and_stop()
        await writer.stop()
        result.requeued = len(done)
        result.stored = pipeline.stats.stored
        result.still_rejected = pipeline.stats.dead_letters
        await conn.execute("UPDATE dead_letters SET requeued_at = now() WHERE id = ANY($1)", done)
    finally:
        await conn.close()
    return result
