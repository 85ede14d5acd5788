"""Faults that used to grow memory or stall ingestion: a database outage and a stalled database."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import asyncpg
import pytest

from ingest.service import Service
from processors.writer import TimescaleWriter, WriteBatch
from tests.conftest import PrivateMosquitto, TcpProxy
from tests.integration.test_mqtt_ingest import publish, senml_messages, settings_for, wait_for_count

pytestmark = pytest.mark.integration


def one_reading(i: int) -> WriteBatch:
    b = WriteBatch(source="test")
    b.add("demo", "air-1", "pm25", datetime(2026, 3, 1, tzinfo=UTC) + timedelta(seconds=i), 5.0)
    return b


@pytest.mark.slow
async def test_writes_resume_within_a_second_of_the_database_returning(tsdb: str) -> None:
    """An 8 s outage grows the retry backoff past 1 s; the writer probes and resumes anyway."""
    parts = urlsplit(tsdb)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.up()
    async with TimescaleWriter(proxy.url(tsdb), max_backoff_s=30, connect_timeout_s=2) as writer:
        await writer.write(one_reading(0))
        await proxy.down()
        pending = asyncio.create_task(writer.write(one_reading(1)))
        await asyncio.sleep(8)
        assert not pending.done()
        await proxy.up()
        back = time.monotonic()
        result = await asyncio.wait_for(pending, 10)
        resumed_after = time.monotonic() - back
    await proxy.down()
    assert result.stored == 1
    assert resumed_after < 1.0, f"writes resumed {resumed_after:.2f} s after the database returned"


@pytest.mark.slow
async def test_a_stalled_database_keeps_the_mqtt_backlog_in_the_broker(
    tsdb: str, mosquitto: PrivateMosquitto
) -> None:
    """MQTT 3.1.1, Mosquitto `max_inflight_messages 0` (stack.sh): it pushes all it has. The service
    stops reading at `max_inflight` held messages; after the stall every message is stored once."""
    bound = 1000
    settings = settings_for(tsdb, mosquitto.port, max_inflight=bound, protocol="3.1.1")
    settings.writer.batch_max_rows = 500
    service = Service(settings)
    await service.start()
    source = service.sources[0]
    lock = await asyncpg.connect(tsdb)
    try:
        await publish(mosquitto.port, senml_messages(100))
        assert await wait_for_count(tsdb, 100) == 100
        tx = lock.transaction()
        await tx.start()
        await lock.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
        await publish(mosquitto.port, senml_messages(8000, offset=100))
        peak = 0
        for _ in range(30):
            await asyncio.sleep(0.1)
            peak = max(peak, source.held_messages)  # type: ignore[attr-defined]
        assert bound <= peak <= bound + 1, peak  # reading stopped at the bound: the rest is in the broker
        await tx.rollback()
        assert await wait_for_count(tsdb, 8100) == 8100
    finally:
        await lock.close()
        await service.stop()
    assert source.held_messages == 0  # type: ignore[attr-defined]
