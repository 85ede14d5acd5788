"""Data-quality flags next to the values: stuck sensors and spikes, by the Numba kernels.

A job, not the write path: both rules need neighbours on each side (a spike is only a spike once
the next readings arrived), so the service re-examines a trailing window every few minutes.
Recomputing a window gives the same flags, so the job is idempotent; it only touches the two bits
it owns (FLAG_STUCK, FLAG_SPIKE) and only rows whose flags change. With
`quality.exclude_flagged_from_kpis` (default) the rollup buckets of those rows are rebuilt from the
unflagged readings in the same transaction, so KPIs never see flagged values and count a bucket left
empty as missing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np

from core.config import QualitySettings, Settings
from processors.jobs import every
from processors.kernels import FLAG_SPIKE, FLAG_STUCK, hampel_flags, stuck_value_flags
from processors.rollups import rebuild_rollups, series_of
from schemas import statements as sql

log = logging.getLogger(__name__)
QUALITY_BITS = FLAG_STUCK | FLAG_SPIKE


async def flag_quality(conn: asyncpg.Connection, start: datetime, end: datetime, q: QualitySettings) -> int:
    """Set the stuck and spike bits of the averaged metrics' readings in [start, end); returns rows
    whose flags changed."""
    rows = await conn.fetch(sql.READINGS_FOR_QUALITY, start, end)
    if not rows:
        return 0
    n = len(rows)
    device_key = np.fromiter((r[0] for r in rows), np.int64, n)
    metric_id = np.fromiter((r[1] for r in rows), np.int64, n)
    ts_us = np.fromiter((r[2] for r in rows), np.int64, n)
    value = np.fromiter((r[3] for r in rows), np.float64, n)
    old = np.fromiter((r[4] for r in rows), np.int64, n)
    series, _ = series_of(device_key, metric_id)
    found = stuck_value_flags(series, ts_us, value, q.stuck_min_run).astype(np.int64)
    found |= hampel_flags(value, q.hampel_half_window, q.hampel_sigmas, series=series, ts_us=ts_us)
    new = (old & ~QUALITY_BITS) | found
    changed = np.flatnonzero(new != old)
    if changed.size:
        async with conn.transaction():
            await conn.execute(
                sql.UPDATE_READING_FLAGS,
                device_key[changed].tolist(),
                metric_id[changed].tolist(),
                ts_us[changed].tolist(),
                new[changed].tolist(),
            )
            if q.exclude_flagged_from_kpis:
                await rebuild_rollups(
                    conn, device_key[changed], metric_id[changed], ts_us[changed], QUALITY_BITS
                )
    return int(changed.size)


async def _flag_recent(dsn: str, q: QualitySettings) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        end = datetime.now(UTC)
        return await flag_quality(conn, end - timedelta(seconds=q.lookback_s), end, q)
    finally:
        await conn.close()


async def quality_loop(settings: Settings) -> None:
    """Every `quality.interval_s`, flag the last `quality.lookback_s` of readings."""
    q = settings.quality
    dsn = settings.database.url.get_secret_value()
    await every(
        q.interval_s,
        lambda: _flag_recent(dsn, q),
        log,
        done="quality flags changed on %d readings",
        failed="quality job",
    )
