"""The data-quality job flags stuck runs and spikes next to the stored values, idempotently."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import pytest

from core.config import QualitySettings
from processors.kernels import FLAG_SPIKE, FLAG_STUCK
from processors.quality import QUALITY_BITS, flag_quality
from processors.writer import TimescaleWriter, WriteBatch
from schemas.statements import DELETE_EMPTY_ROLLUP_BUCKETS
from tests.conftest import deployment_of, make_login

pytestmark = pytest.mark.integration
T0 = datetime.now(UTC).replace(microsecond=123456) - timedelta(hours=3)


async def test_spikes_and_stuck_runs_are_flagged_and_rerunning_changes_nothing(any_db: str) -> None:
    rng = np.random.default_rng(3)
    batch = WriteBatch(source="test")
    for i in range(120):  # a noisy NO2 sensor with one spike at i = 60
        batch.add(
            "demo",
            "no2-a",
            "no2",
            T0 + timedelta(seconds=30 * i),
            500.0 if i == 60 else 20 + rng.normal(0, 1),
        )
    for i in range(100):  # a PM sensor that freezes at 12.5 for readings 40..79
        value = 12.5 if 40 <= i < 80 else 10 + rng.normal(0, 2)
        batch.add("demo", "pm-b", "pm25", T0 + timedelta(seconds=30 * i), value)
    for i in range(100):  # a water meter that does not move: cumulative, never "stuck"
        batch.add("demo", "water-c", "water_volume_total", T0 + timedelta(seconds=30 * i), 100.0)
    async with TimescaleWriter(any_db) as w:
        await w.write(batch)
    q = QualitySettings()
    conn = await asyncpg.connect(any_db)
    try:
        changed = await flag_quality(conn, T0 - timedelta(minutes=1), datetime.now(UTC), q)
        again = await flag_quality(conn, T0 - timedelta(minutes=1), datetime.now(UTC), q)
        flags = {
            (r["device_id"], r["value"]): r["flags"]
            for r in await conn.fetch(
                "SELECT d.device_id, r.value, r.flags FROM readings r JOIN devices d USING (device_key) "
                "WHERE r.flags <> 0"
            )
        }
    finally:
        await conn.close()
    assert flags[("no2-a", 500.0)] & FLAG_SPIKE
    stuck = [k for k, f in flags.items() if k[0] == "pm-b" and f & FLAG_STUCK]
    assert len({v for _, v in stuck}) == 1 and stuck[0][1] == 12.5
    assert not any(k[0] == "water-c" for k in flags)
    assert changed >= 41  # the spike and the 40 stuck readings (noise may add a borderline spike)
    assert again == 0


async def test_the_ingest_login_drops_emptied_buckets_only_through_the_owners_checked_function(
    any_db: str,
) -> None:
    """A NO2 sensor reads once a minute; the spike's minute holds only the spike, so excluding it
    empties that 1-minute bucket. As the ingest login (no DELETE on the rollups) the quality job
    deletes it through `citykpi_delete_empty_rollup_buckets`; the function refuses a bucket that
    still holds an unflagged reading, other tables and bits other than the quality ones."""
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)
    rng = np.random.default_rng(5)
    batch = WriteBatch(source="test")
    for i in range(60):
        batch.add(
            "demo", "no2-m", "no2", start + timedelta(minutes=i), 900.0 if i == 30 else 20 + rng.normal(0, 1)
        )
    async with TimescaleWriter(any_db) as w:
        await w.write(batch)
    ingest = await asyncpg.connect(await make_login(any_db, deployment_of(any_db).ingest))
    try:
        assert await flag_quality(ingest, start, start + timedelta(hours=1), QualitySettings()) == 1
        minutes = {r[0] for r in await ingest.fetch("SELECT bucket FROM rollup_1m")}
        hour_n = await ingest.fetchval("SELECT sum(n) FROM rollup_1h")
        key = await ingest.fetchrow("SELECT device_key, metric_id FROM rollup_1m LIMIT 1")
        kept_us = int((start + timedelta(minutes=10)).timestamp()) * 1_000_000
        args = ([key[0]], [key[1]], [kept_us])
        deleted = await ingest.fetchval(DELETE_EMPTY_ROLLUP_BUCKETS, "rollup_1m", *args, QUALITY_BITS)
        for target, bits in (("readings", QUALITY_BITS), ("rollup_1m", 4), ("kpi_values; --", 0)):
            with pytest.raises(asyncpg.InvalidParameterValueError):
                await ingest.fetchval(DELETE_EMPTY_ROLLUP_BUCKETS, target, *args, bits)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await ingest.execute("DELETE FROM rollup_1m")
        still = await ingest.fetchval("SELECT count(*) FROM rollup_1m")
    finally:
        await ingest.close()
    assert minutes == {start + timedelta(minutes=i) for i in range(60) if i != 30}
    assert hour_n == 59
    assert (deleted, still) == (0, 59)
