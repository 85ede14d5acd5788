"""The writer against the real databases: idempotent, exactly-once rollups, conflicts, bad rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import pytest

from processors.writer import DeadLetter, TimescaleWriter, WriteBatch

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def batch_of(rows: list[tuple[str, str, datetime, float]], city: str = "demo") -> WriteBatch:
    b = WriteBatch(source="test")
    for device, metric, t, v in rows:
        b.add(city, device, metric, t, v)
    return b


async def rollup_recomputed_from_raw(conn: asyncpg.Connection, table: str, width: str) -> list[tuple]:
    """Rollups computed in SQL from the raw readings, to compare with what the processors wrote."""
    return [
        tuple(r)
        for r in await conn.fetch(f"""
        SELECT date_bin('{width}', time, '2000-01-01') AS bucket, device_key, metric_id, count(*),
               round(sum(value)::numeric, 6), round(sum(value * value)::numeric, 4), min(value), max(value)
        FROM readings GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""")
    ]


async def rollup_stored(conn: asyncpg.Connection, table: str) -> list[tuple]:
    return [
        tuple(r)
        for r in await conn.fetch(f"""
        SELECT bucket, device_key, metric_id, n, round(sum::numeric, 6), round(sumsq::numeric, 4), min, max
        FROM {table} ORDER BY 1, 2, 3""")
    ]


async def test_replayed_batch_stores_and_aggregates_nothing_twice(any_db: str) -> None:
    rng = np.random.default_rng(1)
    rows = [
        (f"air-{i % 7}", "pm25", T0 + timedelta(seconds=37 * i), float(rng.uniform(1, 80)))
        for i in range(3000)
    ]
    async with TimescaleWriter(any_db) as w:
        first = await w.write(batch_of(rows))
        again = await w.write(batch_of(rows))
        late = await w.write(batch_of([("air-1", "pm25", T0 - timedelta(hours=5), 12.0)]))
    assert (first.stored, first.duplicates) == (3000, 0)
    assert (again.stored, again.duplicates) == (0, 3000)
    assert late.stored == 1
    conn = await asyncpg.connect(any_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM readings") == 3001
        for table, width in (("rollup_1m", "1 minute"), ("rollup_1h", "1 hour"), ("rollup_1d", "1 day")):
            assert await rollup_stored(conn, table) == await rollup_recomputed_from_raw(conn, table, width)
    finally:
        await conn.close()


async def test_a_partly_replayed_batch_aggregates_each_reading_it_stored_once(any_db: str) -> None:
    """A batch of 100 readings stored before, 100 new ones, one new reading staged twice (same value)
    and one new key with two values: it stores 100 + 1 + 1 (the first value wins), dead-letters the
    second value, and the rollups equal a recomputation from the raw readings. (When the insert
    stores fewer rows than staged, the writer asks which ones this batch stored.)"""
    old = [(f"air-{i % 5}", "pm25", T0 + timedelta(seconds=13 * i), float(i)) for i in range(100)]
    new = [(f"air-{i % 5}", "pm25", T0 + timedelta(hours=2, seconds=13 * i), float(i)) for i in range(100)]
    twice = ("air-1", "pm25", T0 + timedelta(hours=5), 7.0)
    clash = [("air-2", "pm25", T0 + timedelta(hours=6), 8.0), ("air-2", "pm25", T0 + timedelta(hours=6), 9.0)]
    async with TimescaleWriter(any_db) as w:
        await w.write(batch_of(old))
        result = await w.write(batch_of(old + new + [twice, twice, *clash]))
    assert (result.stored, result.duplicates, result.dead_letters) == (102, 102, 1)
    conn = await asyncpg.connect(any_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM readings") == 202
        assert await conn.fetchval("SELECT value FROM readings WHERE time = $1", clash[0][2]) == 8.0
        for table, width in (("rollup_1m", "1 minute"), ("rollup_1h", "1 hour"), ("rollup_1d", "1 day")):
            assert await rollup_stored(conn, table) == await rollup_recomputed_from_raw(conn, table, width)
    finally:
        await conn.close()


async def test_same_key_with_another_value_keeps_the_first_and_dead_letters_the_second(tsdb: str) -> None:
    async with TimescaleWriter(tsdb) as w:
        await w.write(batch_of([("n-1", "laeq", T0, 60.0)]))
        result = await w.write(batch_of([("n-1", "laeq", T0, 61.5)]))
    assert result.stored == 0
    assert result.dead_letters == 1
    conn = await asyncpg.connect(tsdb)
    try:
        assert await conn.fetchval("SELECT value FROM readings") == 60.0
        reason, detail = await conn.fetchrow("SELECT reason, detail FROM dead_letters")
        assert reason == "conflicting_duplicate"
        assert "61.5" in detail and "60.0" in detail
    finally:
        await conn.close()


async def test_decibel_rollups_keep_the_energy_sum_so_leq_merges_exactly(tsdb: str) -> None:
    levels = [50.0, 60.0, 70.0]
    async with TimescaleWriter(tsdb) as w:
        for i, level in enumerate(levels):  # three separate batches into the same hour
            await w.write(batch_of([("n-1", "laeq", T0 + timedelta(minutes=10 * i), level)]))
    conn = await asyncpg.connect(tsdb)
    try:
        n, energy = await conn.fetchrow("SELECT n, energy FROM rollup_1h")
    finally:
        await conn.close()
    leq = 10 * np.log10(energy / n)
    assert n == 3
    assert leq == pytest.approx(10 * np.log10(np.mean([10 ** (x / 10) for x in levels])), abs=1e-9)
    assert leq == pytest.approx(65.68, abs=0.005)  # 10·log10((1e5+1e6+1e7)/3); not the arithmetic 60.0


async def test_unknown_device_is_dead_lettered_when_the_policy_is_reject(tsdb: str) -> None:
    async with TimescaleWriter(tsdb, unknown_device="reject") as w:
        result = await w.write(batch_of([("ghost", "pm25", T0, 5.0)]))
    assert (result.stored, result.dead_letters) == (0, 1)


async def test_unknown_city_is_dead_lettered_not_created(tsdb: str) -> None:
    async with TimescaleWriter(tsdb) as w:
        result = await w.write(batch_of([("d", "pm25", T0, 5.0)], city="atlantis"))
    assert (result.stored, result.dead_letters) == (0, 1)
    conn = await asyncpg.connect(tsdb)
    try:
        assert await conn.fetchval("SELECT reason FROM dead_letters") == "unknown_city"
    finally:
        await conn.close()


async def test_hostile_ids_are_stored_as_data_never_run_as_sql(tsdb: str) -> None:
    hostile = "x'); DROP TABLE readings; --"
    async with TimescaleWriter(tsdb) as w:
        result = await w.write(batch_of([(hostile, "pm25", T0, 5.0)]))
    assert result.stored == 1
    conn = await asyncpg.connect(tsdb)
    try:
        assert await conn.fetchval("SELECT device_id FROM devices WHERE device_id = $1", hostile) == hostile
        assert await conn.fetchval("SELECT count(*) FROM readings") == 1
    finally:
        await conn.close()


async def test_a_row_the_database_refuses_is_dead_lettered_alone_and_its_neighbours_stored(tsdb: str) -> None:
    """Validation keeps such text out; the writer still isolates it if some other path lets it in."""
    rows = [(f"air-{i}", "pm25", T0 + timedelta(seconds=i), float(i)) for i in range(9)]
    rows[5] = ("air-\x00-\ud800", "pm25", T0, 1.0)
    batch = batch_of(rows)
    batch.dead_letters = [DeadLetter("test", "bad_json", "from the decoder\x00", topic="t/\ud800")]
    async with TimescaleWriter(tsdb) as w:
        result = await w.write(batch)
    assert (result.stored, result.dead_letters) == (8, 2)
    conn = await asyncpg.connect(tsdb)
    try:
        assert await conn.fetchval("SELECT count(*) FROM readings") == 8
        letters = {r["reason"].split(":")[0]: r for r in await conn.fetch("SELECT * FROM dead_letters")}
    finally:
        await conn.close()
    assert sorted(letters) == ["bad_json", "db_rejected"]  # each once: no half carried them twice
    assert letters["bad_json"]["topic"] == "t/\\ud800"
    assert letters["db_rejected"]["device_id"] == "air-\\x00-\\ud800"


async def test_a_position_naming_an_unstorable_topic_does_not_block_the_batch(tsdb: str) -> None:
    batch = batch_of([("air-1", "pm25", T0, 5.0)])
    batch.position = {"mqtt": [{"first_topic": "city/\x00/\ud800"}]}
    async with TimescaleWriter(tsdb) as w:
        result = await w.write(batch)
    assert result.stored == 1
