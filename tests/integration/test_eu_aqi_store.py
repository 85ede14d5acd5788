"""store_eu_aqi_hours writes only the difference between the window's stored station-hours and the
new ones, and leaves exactly the new ones, also beside an overlapping refresh storing at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import pytest

from kpi_rollups.city_rollups import to_us
from kpi_rollups.eu_aqi import EuAqiHours, store_eu_aqi_hours
from processors.kernels import EUROPEAN_AQI_POLLUTANTS

pytestmark = pytest.mark.integration

DAY = datetime(2025, 6, 10, tzinfo=UTC)
Bands = dict[tuple[int, int], tuple[int, int, int, int, int]]  # (device_key, hour) -> sub-indices


def station_hours(bands: Bands, start: datetime = DAY, hours: int = 24) -> EuAqiHours:
    """`bands` of the hours from `start` (pollutants in EUROPEAN_AQI_POLLUTANTS order, 0: none)."""
    keys = sorted(bands)
    return EuAqiHours(
        start,
        start + timedelta(hours=hours),
        np.array([dk for dk, _ in keys], dtype=np.int64),
        np.array([to_us(DAY + timedelta(hours=h)) for _, h in keys], dtype=np.int64),
        np.array([bands[k] for k in keys], dtype=np.int8).reshape(-1, len(EUROPEAN_AQI_POLLUTANTS)),
    )


async def stored(conn: asyncpg.Connection) -> dict[tuple[int, int], tuple[tuple[int, ...], datetime]]:
    """The demo city's rows: (device_key, hour from DAY) -> (sub-indices and band, computed_at)."""
    rows = await conn.fetch(
        f"SELECT device_key, bucket, {', '.join(EUROPEAN_AQI_POLLUTANTS)}, band, computed_at "
        "FROM eu_aqi_hourly WHERE city_id = 'demo'"
    )
    return {
        (r["device_key"], (r["bucket"] - DAY) // timedelta(hours=1)): (
            tuple(r[c] or 0 for c in (*EUROPEAN_AQI_POLLUTANTS, "band")),
            r["computed_at"],
        )
        for r in rows
    }


def with_band(bands: Bands) -> dict[tuple[int, int], tuple[int, ...]]:
    return {k: (*b, max(b)) for k, b in bands.items()}


async def test_a_second_store_writes_only_the_changed_removed_and_added_station_hours(tsdb: str) -> None:
    """Station 1 hour 1 changes (NO2 2 -> 4), station 2 hour 3 is no longer computed, station 2 hour
    5 is new: the day then holds exactly the new hours; the unchanged rows keep their computed_at,
    and the hour before the window (another refresh's) stays."""
    before_window: Bands = {(1, -1): (5, 0, 0, 0, 0)}
    first: Bands = {
        (1, 0): (1, 2, 2, 0, 0),
        (1, 1): (1, 1, 2, 0, 0),
        (2, 0): (3, 0, 0, 0, 1),
        (2, 3): (0, 0, 0, 2, 0),
    }
    second = {k: v for k, v in first.items() if k != (2, 3)}
    second[(1, 1)] = (1, 1, 4, 0, 0)
    second[(2, 5)] = (0, 2, 0, 0, 0)
    conn = await asyncpg.connect(tsdb)
    try:
        await store_eu_aqi_hours(conn, "demo", station_hours(before_window, DAY - timedelta(hours=1), 1))
        await store_eu_aqi_hours(conn, "demo", station_hours(first))
        then = await stored(conn)
        await store_eu_aqi_hours(conn, "demo", station_hours(second))
        now = await stored(conn)
    finally:
        await conn.close()
    assert {k: b for k, (b, _) in then.items()} == with_band(before_window | first)
    assert {k: b for k, (b, _) in now.items()} == with_band(before_window | second)
    unchanged = [(1, -1), (1, 0), (2, 0)]
    assert all(now[k][1] == then[k][1] for k in unchanged)
    assert now[(1, 1)][1] == now[(2, 5)][1] > then[(1, 1)][1]


async def test_an_overlapping_store_waits_and_then_leaves_exactly_its_hours(tsdb: str) -> None:
    """A year refresh stores station 1 at hours 0 and 1 and has not committed; a day refresh of the
    same day, computed without hour 1, stores meanwhile: it waits for the year's commit, then reads
    hour 1 and deletes it (reading before that commit, it would have left it)."""
    year: Bands = {(1, 0): (2, 0, 0, 0, 0), (1, 1): (3, 0, 0, 0, 0)}
    day: Bands = {(1, 0): (2, 0, 0, 0, 0)}
    first, second = await asyncpg.connect(tsdb), await asyncpg.connect(tsdb)
    try:
        year_tx = first.transaction()
        await year_tx.start()
        await store_eu_aqi_hours(first, "demo", station_hours(year, DAY - timedelta(days=1), 72))
        day_store = asyncio.create_task(store_eu_aqi_hours(second, "demo", station_hours(day)))
        while not await first.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
            second.get_server_pid(),
        ):
            assert not day_store.done()
            await asyncio.sleep(0.01)
        await year_tx.commit()
        await day_store
        assert {k: b for k, (b, _) in (await stored(first)).items()} == with_band(day)
    finally:
        await first.close()
        await second.close()
