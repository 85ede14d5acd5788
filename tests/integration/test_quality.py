"""The data-quality job flags stuck runs and spikes next to the stored values, idempotently."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import pytest

from core.config import QualitySettings
from processors.kernels import FLAG_SPIKE, FLAG_STUCK
from processors.quality import flag_quality
from processors.writer import TimescaleWriter, WriteBatch

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
