"""The writer's meter steps in the rollups: late readings, redelivery and batch splits give the same
buckets as one in-order batch, on every rollup table and on both servers."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from processors.writer import TimescaleWriter, WriteBatch
from tests.conftest import deployment_of, make_login

pytestmark = pytest.mark.integration

T0 = datetime(2025, 6, 10, tzinfo=UTC)
COLUMNS = (
    "meter_consumption, meter_covered_s, meter_excluded_s, meter_resets, meter_rollovers, "
    "meter_rejected, meter_noise"
)


def story() -> list[tuple[str, datetime, float]]:
    """Two meters over three days at 15 min, rising 0.01 x (k mod 7) m3 at reading k; at k = 17, 67,
    117 ... (every 50) the register reads 3 L below its previous reading (noise); w-1 spikes by
    900 m3 at k = 120 and restarts from 0 at k = 200; w-2, a five-digit register starting at
    99,998 m3, wraps near k = 68 and spikes at k = 150."""
    out = []
    for dev, start in (("w-1", 100.0), ("w-2", 99_998.0)):
        v = prev = start
        for k in range(3 * 96):
            v += 0.01 * (k % 7)
            if dev == "w-1" and k == 200:
                v = 0.02
            x = v % 100_000
            if k % 50 == 17:
                x = prev - 0.003
            if (dev, k) in (("w-1", 120), ("w-2", 150)):
                x = x + 900.0
            out.append((dev, T0 + timedelta(minutes=15 * k), x))
            prev = x
    return out


def batch(rows: list[tuple[str, datetime, float]]) -> WriteBatch:
    b = WriteBatch(source="test")
    for dev, t, v in rows:
        b.add("demo", dev, "water_volume_total", t, v)
    return b


async def buckets(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        out = {}
        for table in ("rollup_1m", "rollup_1h", "rollup_1d"):
            rows = await conn.fetch(
                f"SELECT d.device_id, r.bucket, {COLUMNS} FROM {table} r JOIN devices d USING (device_key) "
                "ORDER BY 1, 2"
            )
            out[table] = [(*r[:2], *(round(x, 9) for x in r[2:])) for r in rows]
        return out
    finally:
        await conn.close()


async def test_late_and_redelivered_readings_give_the_in_order_buckets(any_db: str, tmp_path) -> None:
    """In order in one batch, versus shuffled into 12 batches (late readings re-read the series from
    the day before) with two batches delivered twice: identical meter columns everywhere."""
    rows = story()
    async with TimescaleWriter(any_db) as w:
        await w.write(batch([rows[0], rows[-1]]))  # registers both meters
    conn = await asyncpg.connect(any_db)
    try:
        await conn.execute(
            "UPDATE devices SET metadata = metadata || '{\"rollover_at\": 100000}' WHERE device_id = 'w-2'"
        )
        await conn.execute("TRUNCATE readings, rollup_1m, rollup_1h, rollup_1d, meter_state")
    finally:
        await conn.close()
    async with TimescaleWriter(any_db) as w:
        await w.write(batch(rows))
    in_order = await buckets(any_db)
    conn = await asyncpg.connect(any_db)
    try:
        await conn.execute("TRUNCATE readings, rollup_1m, rollup_1h, rollup_1d, meter_state")
    finally:
        await conn.close()
    shuffled = rows[:]
    random.Random(5).shuffle(shuffled)
    parts = [shuffled[i::12] for i in range(12)]
    async with TimescaleWriter(any_db) as w:
        for i, part in enumerate(parts):
            await w.write(batch(part))
            if i in (3, 7):
                await w.write(batch(part))  # redelivered: stores nothing, adds nothing
    assert await buckets(any_db) == in_order
    day = {(r[0], r[1].date()): r for r in in_order["rollup_1d"]}
    # w-1 on day 1: steps k = 1..95, telescoping (noise adds nothing, the high-water mark catches up)
    # to sum 0.01 x (k mod 7) = 0.01 x (13 x 21 + 1 + 2 + 3 + 4) = 2.83 m3 over 95 x 900 s
    consumption, covered = day[("w-1", T0.date())][2:4]
    assert consumption == pytest.approx(2.83) and covered == 95 * 900
    totals = [sum(r[2 + i] for r in in_order["rollup_1d"]) for i in range(3, 7)]
    assert totals == [1, 1, 2, 12]  # resets, rollovers, rejected (two spikes), noise steps


async def test_the_ingest_role_folds_meter_steps_late_ones_too(any_db: str) -> None:
    """The service's least-privilege role keeps meter_state and the meter columns: 1.0 -> 1.5 m3 in
    order, then a late 1.2 between them (the series is re-read): 0.5 m3 in the day either way."""
    login = await make_login(any_db, deployment_of(any_db).ingest)
    async with TimescaleWriter(login) as w:
        await w.write(batch([("w-9", T0, 1.0), ("w-9", T0 + timedelta(hours=2), 1.5)]))
        await w.write(batch([("w-9", T0 + timedelta(hours=1), 1.2)]))
    conn = await asyncpg.connect(any_db)
    try:
        day = await conn.fetchrow("SELECT meter_consumption, meter_covered_s FROM rollup_1d")
        hours = await conn.fetch("SELECT meter_consumption FROM rollup_1h ORDER BY bucket")
    finally:
        await conn.close()
    assert (day[0], day[1]) == (pytest.approx(0.5), 7200.0)
    assert [h[0] for h in hours] == [0.0, pytest.approx(0.2), pytest.approx(0.3)]


async def test_steps_back_judged_against_the_stored_previous_reading(any_db: str) -> None:
    """0.600, 0.675, 0.672 m3 in one batch, 0.669 and 0.750 in the next (5 L tolerance): the second
    batch continues from meter_state, whose previous reading (0.672) makes 0.669 noise although it
    is 6 L below the 0.675 high-water mark: 0.750 - 0.600 = 0.15 m3, two noise steps, no reset."""
    at = [T0 + timedelta(hours=h) for h in range(5)]
    async with TimescaleWriter(any_db) as w:
        await w.write(batch([("w-8", at[0], 0.600), ("w-8", at[1], 0.675), ("w-8", at[2], 0.672)]))
        await w.write(batch([("w-8", at[3], 0.669), ("w-8", at[4], 0.750)]))
    conn = await asyncpg.connect(any_db)
    try:
        day = await conn.fetchrow("SELECT meter_consumption, meter_resets, meter_noise FROM rollup_1d")
        state = await conn.fetchrow("SELECT ref_value, prev_value FROM meter_state")
    finally:
        await conn.close()
    assert (day[0], day[1], day[2]) == (pytest.approx(0.15), 0, 2)
    assert (state[0], state[1]) == (0.750, 0.750)
