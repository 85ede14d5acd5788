"""Reaching the database at start-up: wait until it answers, migrate, register configured cities."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from ingest.config import Settings
from schemas import statements as sql
from schemas.migrations import migrate

log = logging.getLogger(__name__)


async def wait_for_database(dsn: str, timeout_s: float) -> asyncpg.Connection:
    """Connect, retrying with backoff until `timeout_s` (the database may still be starting)."""
    deadline, delay = time.monotonic() + timeout_s, 0.2
    while True:
        try:
            return await asyncpg.connect(dsn, timeout=5)
        except (TimeoutError, OSError, asyncpg.PostgresError) as e:
            if time.monotonic() > deadline:
                raise ConnectionError(f"database not reachable after {timeout_s:.0f} s: {e}") from e
            log.warning("database not reachable yet (%s); retrying in %.1f s", e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)


async def prepare_database(settings: Settings, run_migrations: bool = True) -> None:
    """Migrate (as the owner, when asked) and upsert the configured cities (the ingest login may)."""
    conn = await wait_for_database(settings.database.url.get_secret_value(), 60)
    try:
        if run_migrations:
            await migrate(conn, settings.database.role_prefix)
        for c in settings.cities:
            await conn.execute(sql.UPSERT_CITY, c.city_id, c.name, c.timezone)
    finally:
        await conn.close()
