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
        # one int64 per (station, hour): device keys are int4 and hours whole seconds (< 2**32)
        packed = (pairs[:, 0] << 32) | (pairs[:, 1] // 1_000_000)
        uniq, inverse = np.unique(packed, return_inverse=True)
        sub = np.zeros((uniq.shape[0], len(EUROPEAN_AQI_POLLUTANTS)), dtype=np.int8)
        sub[inverse.reshape(-1), np.concatenate(cols)] = np.concatenate(bands)
        return cls(start, end, uniq >> 32, (uniq & 0xFFFFFFFF) * 1_000_000, sub)

    @property
    def band(self) -> npt.NDArray[np.int8]:
        """The station's index each hour: its worst pollutant."""
        return self.sub_index.max(axis=1, initial=0)


_COLUMNS = ", ".join(EUROPEAN_AQI_POLLUTANTS)
_OLD = ", ".join(f"a.{c}" for c in EUROPEAN_AQI_POLLUTANTS)
_NEW = ", ".join(f"EXCLUDED.{c}" for c in EUROPEAN_AQI_POLLUTANTS)
_UPSERT = f"""
INSERT INTO eu_aqi_hourly AS a (city_id, device_key, bucket, {_COLUMNS}, band, computed_at)
SELECT $1, u.*, now()
FROM unnest($2::int[], $3::timestamptz[], $4::int2[], $5::int2[], $6::int2[], $7::int2[], $8::int2[],
            $9::int2[]) AS u
ON CONFLICT (city_id, device_key, bucket) DO UPDATE SET
    ({_COLUMNS}, band, computed_at) = ({_NEW}, EXCLUDED.band, EXCLUDED.computed_at)
WHERE ({_OLD}) IS DISTINCT FROM ({_NEW})
"""
# hours of the window no longer computed (e.g. readings flagged by the quality job since)
_DELETE_STALE = """
DELETE FROM eu_aqi_hourly a
WHERE a.city_id = $1 AND a.bucket >= $2 AND a.bucket < $3
  AND (a.device_key, a.bucket) NOT IN (SELECT * FROM unnest($4::int[], $5::timestamptz[]))
"""


async def store_eu_aqi_hours(conn: asyncpg.Connection, city_id: str, hours: EuAqiHours) -> None:
    """Make eu_aqi_hourly hold exactly `hours` for the city's [start, end); unchanged rows stay
    (computed_at: when a row last changed)."""
    when = [EPOCH + timedelta(microseconds=int(u)) for u in hours.hour_us.tolist()]
    keys = hours.device_key.tolist()
    await conn.execute(_DELETE_STALE, city_id, hours.start, hours.end, keys, when)
    if not keys:
        return
    columns = [[b or None for b in col] for col in hours.sub_index.T.tolist()]
    await conn.execute(_UPSERT, city_id, keys, when, *columns, hours.band.tolist())
