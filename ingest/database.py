"""Reaching the database at start-up: wait until it answers, migrate, register configured cities."""

from __future__ import annotations

import logging

import asyncpg
import tenacity

from core.config import Settings
from schemas import statements as sql
from schemas.migrations import migrate

log = logging.getLogger(__name__)


async def wait_for_database(dsn: str, timeout_s: float) -> asyncpg.Connection:
    """Connect, retrying with jittered exponential backoff (0.2 s up to 5 s) until `timeout_s`: the
    database may still be starting, and instances restarted together should not knock in step."""

    def note(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("database not reachable yet (%s); retrying in %.1f s", error, wait)

    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type((TimeoutError, OSError, asyncpg.PostgresError)),
        wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=5, jitter=0.2),
        stop=tenacity.stop_after_delay(timeout_s),
        before_sleep=note,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                return await asyncpg.connect(dsn, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as e:
        raise ConnectionError(f"database not reachable after {timeout_s:.0f} s: {e}") from e
    raise AssertionError("unreachable: tenacity either returns or raises")


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
