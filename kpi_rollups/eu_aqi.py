"""The European AQI per station-hour as the air pollution formula computed it, and its one writer.

The formula (kpi_rollups/formulas/air.py) returns the sub-indices with its `aqi_eu` result; the
refresh stores them in `eu_aqi_hourly` (schemas/sql/0014) in the transaction that stores the KPI
values, so the dashboards read the kernels' bands instead of re-deriving them in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import numpy as np
import numpy.typing as npt

from kpi_rollups.city_rollups import EPOCH
from processors.kernels import EUROPEAN_AQI_POLLUTANTS


@dataclass(frozen=True)
class EuAqiHours:
    """Station-hours of [start, end): per pollutant of EUROPEAN_AQI_POLLUTANTS (columns of
    `sub_index`) its band 1..5, 0 without a valid input; the station's band is their maximum."""

    start: datetime
    end: datetime
    device_key: npt.NDArray[np.int64]
    hour_us: npt.NDArray[np.int64]
    sub_index: npt.NDArray[np.int8]  # (station-hours, pollutants)

    @classmethod
    def from_series(
        cls,
        start: datetime,
        end: datetime,
        series: list[tuple[int, str, npt.NDArray[np.int64], npt.NDArray[np.int8]]],
    ) -> EuAqiHours:
        """Pivot (device_key, pollutant, hours, bands) series into one row per station-hour with
        at least one valid sub-index."""
        keys, cols, bands = [], [], []
        for dk, pollutant, hours, band in series:
            ok = band > 0
            keys.append(np.stack([np.full(int(ok.sum()), dk, dtype=np.int64), hours[ok]], axis=1))
            cols.append(np.full(int(ok.sum()), EUROPEAN_AQI_POLLUTANTS.index(pollutant)))
            bands.append(band[ok])
        if not keys:
            empty = np.zeros(0, dtype=np.int64)
            return cls(start, end, empty, empty, np.zeros((0, len(EUROPEAN_AQI_POLLUTANTS)), np.int8))
        pairs = np.concatenate(keys)
        uniq, inverse = np.unique(_pack(pairs[:, 0], pairs[:, 1]), return_inverse=True)
        sub = np.zeros((uniq.shape[0], len(EUROPEAN_AQI_POLLUTANTS)), dtype=np.int8)
        sub[inverse.reshape(-1), np.concatenate(cols)] = np.concatenate(bands)
        return cls(start, end, *_unpack(uniq), sub)

    @property
    def key(self) -> npt.NDArray[np.int64]:
        """(device_key, hour) of each station-hour as one int64."""
        return _pack(self.device_key, self.hour_us)

    @property
    def band(self) -> npt.NDArray[np.int8]:
        """The station's index each hour: its worst pollutant."""
        return self.sub_index.max(axis=1, initial=0)


def _pack(device_key: npt.NDArray[np.int64], hour_us: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """One int64 per (station, hour): device keys are int4 and hours whole seconds (< 2**32)."""
    return (device_key << 32) | (hour_us // 1_000_000)


def _unpack(key: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """_pack's (device_key, hour_us)."""
    return key >> 32, (key & 0xFFFFFFFF) * 1_000_000


_COLUMNS = ", ".join(EUROPEAN_AQI_POLLUTANTS)
_OLD = ", ".join(f"a.{c}" for c in EUROPEAN_AQI_POLLUTANTS)
_NEW = ", ".join(f"EXCLUDED.{c}" for c in EUROPEAN_AQI_POLLUTANTS)
# per city; its two int4 keys keep it apart from the refresh's bigint locks (per city and period)
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('eu_aqi_hourly'), hashtext($1))"
# the window's station-hours as _pack's keys and their sub-indices in 3 bits each, as _bits packs them
_BITS = " | ".join(f"(coalesce(a.{c}, 0) << {3 * i})" for i, c in enumerate(EUROPEAN_AQI_POLLUTANTS))
_STORED = f"""
SELECT array_agg((a.device_key::int8 << 32) | date_part('epoch', a.bucket)::int8), array_agg({_BITS})
FROM eu_aqi_hourly a
WHERE a.city_id = $1 AND a.bucket >= $2 AND a.bucket < $3
"""
_DELETE = """
DELETE FROM eu_aqi_hourly a
WHERE a.city_id = $1 AND (a.device_key, a.bucket) IN (SELECT * FROM unnest($2::int[], $3::timestamptz[]))
"""
_UPSERT = f"""
INSERT INTO eu_aqi_hourly AS a (city_id, device_key, bucket, {_COLUMNS}, band, computed_at)
SELECT $1, u.*, now()
FROM unnest($2::int[], $3::timestamptz[], $4::int2[], $5::int2[], $6::int2[], $7::int2[], $8::int2[],
            $9::int2[]) AS u
ON CONFLICT (city_id, device_key, bucket) DO UPDATE SET
    ({_COLUMNS}, band, computed_at) = ({_NEW}, EXCLUDED.band, EXCLUDED.computed_at)
WHERE ({_OLD}) IS DISTINCT FROM ({_NEW})
"""


def _bits(sub_index: npt.NDArray[np.int8]) -> npt.NDArray[np.int64]:
    """A station-hour's sub-indices as one number, 3 bits each (bands 0..5)."""
    return (sub_index.astype(np.int64) << (3 * np.arange(sub_index.shape[1]))).sum(axis=1)


def _key_columns(key: npt.NDArray[np.int64]) -> tuple[list[int], list[datetime]]:
    device_key, hour_us = _unpack(key)
    return device_key.tolist(), [EPOCH + timedelta(microseconds=u) for u in hour_us.tolist()]


async def store_eu_aqi_hours(conn: asyncpg.Connection, city_id: str, hours: EuAqiHours) -> None:
    """Make eu_aqi_hourly hold exactly `hours` for the city's [start, end); unchanged rows stay
    (computed_at: when a row last changed). Only the difference is written: the window's rows are
    read and compared here; hours no longer computed (e.g. readings flagged by the quality job
    since) are deleted, new or changed ones upserted.

    A day and a year refresh of a city can run at once (the refresh's lock is per period) and their
    windows overlap, so the read-compare-write takes a per-city lock held until the transaction
    ends: the rows it reads (READ COMMITTED: as far as the other refresh committed them) cannot
    change before it commits, and the refresh storing last leaves exactly its hours in its window.
    """
    async with conn.transaction():
        await conn.execute(_LOCK, city_id)
        stored = await conn.fetchrow(_STORED, city_id, hours.start, hours.end)
        old_key, old_bits = (np.array(a or [], dtype=np.int64) for a in stored)
        key, bits = hours.key, _bits(hours.sub_index)
        _, at_new, at_old = np.intersect1d(key, old_key, assume_unique=True, return_indices=True)
        changed = np.ones(key.shape[0], dtype=bool)
        changed[at_new[bits[at_new] == old_bits[at_old]]] = False
        gone = np.delete(old_key, at_old)
        if gone.size:
            await conn.execute(_DELETE, city_id, *_key_columns(gone))
        if changed.any():
            columns = [[b or None for b in col] for col in hours.sub_index[changed].T.tolist()]
            await conn.execute(
                _UPSERT, city_id, *_key_columns(key[changed]), *columns, hours.band[changed].tolist()
            )
