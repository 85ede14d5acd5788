"""Retention run by the service: TimescaleDB `drop_chunks` (Apache edition), or DELETE on plain PostgreSQL.

Timescale's Community edition could run `add_retention_policy` itself; doing it here keeps one
behaviour for every server and keeps the rollups (the KPI evidence) longer than the raw readings.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from core.config import Settings

log = logging.getLogger(__name__)


def retention_days(settings: Settings) -> dict[str, int]:
    """table -> days kept."""
    db = settings.database
    return {"readings": db.raw_retention_days, "rollup_1m": db.rollup_1m_retention_days}


async def apply_retention(conn: asyncpg.Connection, settings: Settings) -> dict[str, int]:
    """Drop data past its retention; returns chunks (or rows) removed per table. The owner's
    `citykpi_apply_retention` does it (drop_chunks needs the hypertables' owner; schemas/sql/0008),
    so the ingest login needs no more than EXECUTE on it. Alert events go through the owner's
    `citykpi_expire_alerts` (schemas/sql/0023), which keeps an open alert's opening event and, when
    a channel publishes them, every event still waiting for it."""
    removed: dict[str, int] = {}
    for table, days in retention_days(settings).items():
        removed[table] = await conn.fetchval("SELECT public.citykpi_apply_retention($1, $2)", table, days)
    removed["alerts"] = await conn.fetchval(
        "SELECT public.citykpi_expire_alerts($1, $2)",
        settings.alerts.retention_days,
        settings.alerts.publishes,
    )
    return removed


async def retention_loop(settings: Settings) -> None:
    dsn = settings.database.url.get_secret_value()
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                removed = await apply_retention(conn, settings)
                if any(removed.values()):
                    log.info("retention removed %s", removed)
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError) as e:
            log.warning("retention job failed (%s); will retry", e)
        await asyncio.sleep(settings.database.retention_interval_s)
