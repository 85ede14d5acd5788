"""Several writer connections at once (`writer.connections`): a later batch may commit first, but
nothing is acknowledged before its own and every earlier batch's commit, and a meter stepped by two
transactions at once counts each step once. On the real servers, as the ingest login."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from core.config import Settings
from ingest.pipeline import Delivery, Message, Pipeline
from ingest.routing import Router
from processors.writer import TimescaleWriter, WriteBatch
from tests.conftest import deployment_of, make_login

pytestmark = pytest.mark.integration

T0 = datetime(2025, 6, 10, 8, tzinfo=UTC)
NOW = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)  # not a past day's


def senml(device: str, value: float, t: datetime) -> Message:
    pack = [{"bn": f"{device}:", "bt": t.timestamp(), "n": "pm25", "u": "ug/m3", "v": value}]
    return Message(json.dumps(pack).encode(), f"city/demo/senml/{device}", datetime.now(UTC))


async def hold_rollup_row(holder: asyncpg.Connection, device: str) -> asyncpg.transaction.Transaction:
    """Lock `device`'s 1-minute rollup rows in a transaction of `holder` (rolled back to release)."""
    hold = holder.transaction()
    await hold.start()
    await holder.execute(
        "SELECT 1 FROM rollup_1m r JOIN devices d USING (device_key) WHERE d.device_id = $1 FOR UPDATE",
        device,
    )
    return hold


async def waiting_on_a_lock(conn: asyncpg.Connection, login: str, n: int) -> None:
    """Until `n` of `login`'s sessions wait on a lock (a row or an advisory lock)."""
    user = login.split("://", 1)[1].split(":", 1)[0]
    for _ in range(200):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND wait_event_type = 'Lock'", user
        )
        if waiting >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{n} sessions of {user} never waited on a lock")


async def test_a_later_batch_committed_first_is_acknowledged_only_after_the_earlier_one(tsdb: str) -> None:
    """Batch 1 (air-1) waits on its rollup row, held by another session; batch 2 (air-2) commits on
    the second connection meanwhile. Neither is acknowledged until batch 1 commits; then 1, 2.
    (Readings of today: batches of one city's past day also wait on its recompute mark.)"""
    login = await make_login(tsdb, deployment_of(tsdb).ingest)
    async with TimescaleWriter(login) as w:  # both devices and their rollup rows exist
        await w.write(batch_of(("air-1", 1.0), ("air-2", 1.0), t=NOW))
    one_per_batch = {"batch_max_rows": 1, "connections": 2}
    settings = Settings(database={"url": login}, writer=one_per_batch)  # type: ignore[arg-type]
    owner = await asyncpg.connect(tsdb)
    holder = await asyncpg.connect(tsdb)
    writers = [TimescaleWriter(login), TimescaleWriter(login)]
    acked: list[int] = []

    def ack(i: int):  # type: ignore[no-untyped-def]
        async def done() -> None:
            acked.append(i)

        return done

    try:
        for w in writers:
            await w.start()
        pipeline = Pipeline(settings, writers)
        await pipeline.start()
        hold = await hold_rollup_row(holder, "air-1")
        router = Router(settings.mqtt.routes)
        later = NOW + timedelta(seconds=1)
        await pipeline.submit(Delivery("mqtt", router, [senml("air-1", 7.0, later)], ack(1)))
        await waiting_on_a_lock(owner, login, 1)
        await pipeline.submit(Delivery("mqtt", router, [senml("air-2", 8.0, later)], ack(2)))
        for _ in range(100):  # batch 2 commits on the other connection
            if await owner.fetchval("SELECT count(*) FROM readings WHERE value = 8.0"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the second batch did not commit while the first waited")
        await asyncio.sleep(0.3)
        assert acked == []  # batch 2 is committed, but batch 1 is not
        assert await owner.fetchval("SELECT count(*) FROM readings WHERE value = 7.0") == 0
        await hold.rollback()
        await pipeline.drain_and_stop()
        assert acked == [1, 2]
        assert await owner.fetchval("SELECT count(*) FROM readings WHERE value IN (7.0, 8.0)") == 2
        assert pipeline.stats.stored == 2
    finally:
        for w in writers:
            await w.stop()
        await holder.close()
        await owner.close()


def batch_of(*readings: tuple[str, float], t: datetime = T0, metric: str = "pm25") -> WriteBatch:
    b = WriteBatch(source="test")
    for device, value in readings:
        b.add("demo", device, metric, t, value)
    return b


async def test_two_transactions_stepping_one_new_meter_count_each_step_once(any_db: str) -> None:
    """A new water meter (no stored state) read 100.0, 100.2 in batch 1 and 100.5, 100.9 in batch 2,
    15 min apart (below a DN20 meter's 1.25 m3 a quarter hour). Batch 1 also holds a PM2.5 reading
    whose rollup row another session locks, so it stays open after stepping the meter while batch 2
    runs on a second connection. Steps: 0.2 + 0.3 + 0.4 = 0.9 m3 over 45 min, whatever the
    interleaving; without the meter lock batch 2 would see neither batch 1's readings nor its state
    and step 100.5 -> 100.9 only (0.6 m3 over 30 min in all)."""
    login = await make_login(any_db, deployment_of(any_db).ingest)
    t = [T0 + timedelta(minutes=15 * k) for k in range(4)]
    async with TimescaleWriter(login) as w:  # the devices and the PM2.5 rollup row exist
        await w.write(batch_of(("air-9", 5.0)))
        await w.write(batch_of(("wm-1", 100.0), t=t[0], metric="water_volume_total"))
    owner = await asyncpg.connect(any_db)
    holder = await asyncpg.connect(any_db)
    first, second = TimescaleWriter(login), TimescaleWriter(login)
    try:
        await owner.execute("TRUNCATE readings, rollup_1m, rollup_15m, rollup_1h, rollup_1d, meter_state")
        async with TimescaleWriter(login) as w:
            await w.write(batch_of(("air-9", 5.0)))
        await first.start()
        await second.start()
        batch1 = batch_of(("wm-1", 100.0), t=t[0], metric="water_volume_total")
        batch1.add("demo", "wm-1", "water_volume_total", t[1], 100.2)
        batch1.add("demo", "air-9", "pm25", T0 + timedelta(seconds=5), 6.0)
        batch2 = batch_of(("wm-1", 100.5), t=t[2], metric="water_volume_total")
        batch2.add("demo", "wm-1", "water_volume_total", t[3], 100.9)
        hold = await hold_rollup_row(holder, "air-9")
        one = asyncio.create_task(first.write(batch1))
        await waiting_on_a_lock(owner, login, 1)
        two = asyncio.create_task(second.write(batch2))
        await asyncio.sleep(0.5)  # batch 2 as far as it gets while batch 1 is open
        await hold.rollback()
        await asyncio.gather(one, two)
        consumption = await owner.fetchval(
            "SELECT sum(meter_consumption) FROM rollup_1d r JOIN devices d USING (device_key) "
            "WHERE d.device_id = 'wm-1'"
        )
        covered = await owner.fetchval(
            "SELECT sum(meter_covered_s) FROM rollup_1d r JOIN devices d USING (device_key) "
            "WHERE d.device_id = 'wm-1'"
        )
        assert consumption == pytest.approx(0.9)
        assert covered == pytest.approx(45 * 60)
    finally:
        await first.stop()
        await second.stop()
        await holder.close()
        await owner.close()


async def test_abort_returns_when_the_acknowledgement_loop_has_died(tsdb: str) -> None:
    """A dead-letter publisher that raises ends the acknowledgement loop after the first committed
    batch; the write loop goes on until its queue is full (a batch per message: one reading each).
    abort() still returns (a loop waiting to hand over its stop marker on a full queue would hang
    it), and nothing is acknowledged."""
    login = await make_login(tsdb, deployment_of(tsdb).ingest)
    one_per_batch = {"batch_max_rows": 1, "connections": 2}
    settings = Settings(database={"url": login}, writer=one_per_batch)  # type: ignore[arg-type]
    writers = [TimescaleWriter(login), TimescaleWriter(login)]
    acked: list[int] = []

    async def acknowledge() -> None:
        acked.append(1)

    async def refuse(dead: object) -> None:
        raise RuntimeError("the dead-letter topic is down")

    try:
        for w in writers:
            await w.start()
        pipeline = Pipeline(settings, writers, publish_dead_letters=refuse)
        await pipeline.start()
        router = Router(settings.mqtt.routes)
        for i in range(12):  # each a batch: one reading and one dead letter (a text value)
            pack = [
                {"bn": "air-1:", "bt": (NOW + timedelta(seconds=i)).timestamp(), "n": "pm25", "v": 5.0},
                {"n": "pm10", "v": "high"},
            ]
            part = Message(json.dumps(pack).encode(), "city/demo/senml/air-1", datetime.now(UTC))
            await pipeline.submit(Delivery("mqtt", router, [part], acknowledge))
        ack_loop = pipeline.tasks[2]
        await asyncio.wait_for(asyncio.wait([ack_loop]), 10)
        assert isinstance(ack_loop.exception(), RuntimeError)
        await asyncio.sleep(0.5)  # the write loop fills the queue behind the dead loop
        await asyncio.wait_for(pipeline.abort(), 10)
        assert acked == []
        assert all(t.done() for t in pipeline.tasks)
    finally:
        for w in writers:
            await w.stop()


async def test_a_late_day_mark_committed_last_is_never_older_than_one_committed_before(tsdb: str) -> None:
    """Batch A (late readings of air-1 on a past day) starts first and waits on a locked rollup row;
    batch B (air-2 and air-3: one mark of the same day) starts later and commits first. The refresh
    serves B's mark and clears marks of that day not newer than it (kpi_rollups/refresh.py); then A
    commits. A's mark must survive: its readings were not in the recompute. (With the transaction's
    start time as the mark time, A's mark would be older than B's and be cleared.)"""
    login = await make_login(tsdb, deployment_of(tsdb).ingest)
    async with TimescaleWriter(login) as w:  # devices, and air-1's rollup row to lock
        await w.write(batch_of(("air-1", 1.0), ("air-2", 1.0)))
    owner = await asyncpg.connect(tsdb)
    holder = await asyncpg.connect(tsdb)
    first, second = TimescaleWriter(login), TimescaleWriter(login)
    try:
        await owner.execute("DELETE FROM kpi_pending_days")
        await first.start()
        await second.start()
        hold = await hold_rollup_row(holder, "air-1")
        a = asyncio.create_task(first.write(batch_of(("air-1", 2.0), t=T0 + timedelta(seconds=5))))
        await waiting_on_a_lock(owner, login, 1)
        await second.write(batch_of(("air-2", 3.0), ("air-3", 3.0), t=T0 + timedelta(seconds=5)))
        (served,) = await owner.fetch("SELECT day, marked_at FROM kpi_pending_days")
        # in one transaction: two readings of one late day are one mark, not a refused statement
        # (which would split the batch into rows, each committed alone)
        last = "SELECT received, stored FROM ingest_batches ORDER BY batch_id DESC LIMIT 1"
        assert tuple(await owner.fetchrow(last)) == (2, 2)
        await hold.rollback()
        await a
        await owner.execute(  # what the refresh does once it has recomputed the day
            "DELETE FROM kpi_pending_days WHERE day = $1 AND marked_at <= $2",
            served["day"],
            served["marked_at"],
        )
        assert await owner.fetchval("SELECT count(*) FROM kpi_pending_days") == 1
    finally:
        await first.stop()
        await second.stop()
        await holder.close()
        await owner.close()
