"""Decoding in the live pipeline: zone-less times in the city's own time zone, wherever the city is from."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import asyncpg
import pytest

from tests.integration.test_dead_letters import readings, through_pipeline

pytestmark = pytest.mark.integration
ROUTES = [{"filter": "json/+/+", "format": "json", "city_level": 2, "device_level": 3}]
LOCAL_NOON = {"device_id": "d1", "time": "2025-07-01T12:00:00", "pm25": 5}


async def test_zone_less_times_are_read_in_the_zone_the_database_holds_for_the_city(tsdb: str) -> None:
    """`demo` is configured (Europe/Paris); `nyc` is only in the database, as a registry import leaves it."""
    conn = await asyncpg.connect(tsdb)
    try:
        await conn.execute(
            "INSERT INTO cities (city_id, name, timezone) VALUES ('nyc', 'NYC', 'America/New_York')"
        )
    finally:
        await conn.close()
    payload = json.dumps(LOCAL_NOON).encode()
    await through_pipeline(tsdb, ("json/demo/d1", payload), ("json/nyc/d1", payload), mqtt={"routes": ROUTES})
    times = {r[0]: r[3] for r in await readings(tsdb)}
    assert times == {
        "demo": datetime(2025, 7, 1, 10, 0, tzinfo=UTC),  # CEST = UTC+2
        "nyc": datetime(2025, 7, 1, 16, 0, tzinfo=UTC),  # EDT = UTC-4
    }


async def test_naive_times_utc_reads_them_as_utc(tsdb: str) -> None:
    payload = json.dumps(LOCAL_NOON).encode()
    await through_pipeline(
        tsdb, ("json/demo/d1", payload), mqtt={"routes": ROUTES}, validation={"naive_times": "UTC"}
    )
    ((_city, _device, _metric, time, _value),) = await readings(tsdb)
    assert time == datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
