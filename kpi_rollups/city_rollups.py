"""Data access for the KPI formulas: rollups of ONE city over one period window.

Every query joins `devices` and filters `devices.city_id`, so nothing of another city's devices
can enter a KPI (tenant isolation). Aggregates come from the rollup tables: rollup_1h where local
hours or days matter, and for whole-window sums a mix of rollup_1d (UTC days fully inside the
window), rollup_1h and rollup_1m at the edges; meters from the rollups' meter step columns.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from itertools import pairwise
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from kpi_rollups.periods import Period

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
QUARTER = timedelta(minutes=15)
DAY = timedelta(days=1)


def to_us(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1)


def _floor(t: datetime, step: timedelta) -> datetime:
    return EPOCH + ((t - EPOCH) // step) * step


def _ceil(t: datetime, step: timedelta) -> datetime:
    f = _floor(t, step)
    return f if f == t else f + step


def window_segments(start: datetime, end: datetime) -> list[tuple[str, datetime, datetime]]:
    """Non-overlapping (table, from, to) pieces covering [start, end) with the coarsest rollups:
    days, hours, quarter hours (every zone's midnight is on one), minutes at odd edges."""
    out: list[tuple[str, datetime, datetime]] = []

    def finer(a: datetime, b: datetime, step: timedelta, table: str, rest: Callable[..., None]) -> None:
        s0, s1 = _ceil(a, step), _floor(b, step)
        if s0 < s1:
            rest(a, s0)
            out.append((table, s0, s1))
            rest(s1, b)
        else:
            rest(a, b)

    def minutes(a: datetime, b: datetime) -> None:
        if a < b:
            out.append(("rollup_1m", a, b))

    def quarters(a: datetime, b: datetime) -> None:
        finer(a, b, QUARTER, "rollup_15m", minutes)

    def hours(a: datetime, b: datetime) -> None:
        finer(a, b, HOUR, "rollup_1h", quarters)

    d0, d1 = _ceil(start, DAY), _floor(end, DAY)
    if d0 < d1:
        hours(start, d0)
        out.append(("rollup_1d", d0, d1))
        hours(d1, end)
    else:
        hours(start, end)
    return out


# One row per (device, metric, local hour) of the city in [$3, $4), for metrics $2, with the device's
# expected interval: the hourly rollups where local hours are UTC hours, else the 15-minute rollups
# grouped by local hour ($5 zone). Devices are joined once, here (a second join outside made the
# planner underestimate the rows 100x and sort them on disk).
_HOURS_WHERE = """d.city_id = $1
    AND r.metric_id IN (SELECT metric_id FROM metrics WHERE name = ANY($2::text[]))
    AND r.bucket >= $3 AND r.bucket < $4"""
HOURS_FROM_1H = f"""SELECT r.device_key, r.metric_id, r.bucket, r.n, r.sum, r.energy, d.expected_interval_s
    FROM rollup_1h r JOIN devices d ON d.device_key = r.device_key
    WHERE {_HOURS_WHERE} AND $5::text IS NOT NULL"""
HOURS_FROM_15M = f"""SELECT r.device_key, r.metric_id,
           date_trunc('hour', r.bucket AT TIME ZONE $5::text) AT TIME ZONE $5::text AS bucket,
           sum(r.n)::int8 AS n, sum(r.sum) AS sum, sum(r.energy) AS energy, d.expected_interval_s
    FROM rollup_15m r JOIN devices d ON d.device_key = r.device_key
    WHERE {_HOURS_WHERE} GROUP BY 1, 2, 3, d.expected_interval_s"""
# An hourly value needs 75 % of the hour's expected readings (Directive 2008/50/EC, Annex VII):
# one reading of a 10-second sensor is no hourly mean; a device read hourly (or unknown) needs one.
VALID_HOUR = "h.n >= ceil(0.75 * 3600.0 / least(coalesce(h.expected_interval_s, 3600.0), 3600.0))"
# Expected slots (one per expected interval) holding a reading, from the hourly (or 15-minute)
# rollups of bucket length {secs}: for intervals of a bucket or more the distinct slots of the
# buckets with readings; below, per bucket at most its number of slots (near-duplicate readings
# fill no extra slot).
FILLED_SLOTS = """
SELECT u.device_key, u.metric, {filled}::int8 AS filled
FROM unnest($1::int4[], $2::text[], $3::float8[]) AS u(device_key, metric, interval_s)
JOIN metrics m ON m.name = u.metric
JOIN {table} r ON r.device_key = u.device_key AND r.metric_id = m.metric_id
WHERE r.bucket >= $4 AND r.bucket < $5 AND r.n > 0
GROUP BY u.device_key, u.metric
"""
# one query per case, so the common one (readings more often than buckets) sums without sorting
FILLED_BELOW_BUCKET = "sum(least(r.n, ceil({secs} / u.interval_s)))"
FILLED_FROM_BUCKET = "count(DISTINCT floor(extract(epoch FROM r.bucket) / u.interval_s))"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device_key: int
    device_id: str
    kind: str | None
    area_id: str | None
    expected_interval_s: float | None
    metadata: dict[str, Any]
    registered_by: str = "registry"
    installed_on: date | None = None

    @property
    def role(self) -> str | None:
        role = self.metadata.get("role")
        return str(role) if role is not None else None

    def number(self, key: str) -> float | None:
        v = self.metadata.get(key)
        try:
            return float(v) if v is not None else None
        except (TypeError, ValueError):
            return None


@dataclass
class SeriesCount:
    """Readings of one (device, metric) in the window, the interval they are expected at and the
    expected slots (one per interval) that hold a reading."""

    device_key: int
    metric: str
    n: int
    interval_s: float | None
    filled_slots: int = 0


@dataclass
class MeterUsage:
    """One meter's steps ending in the window, summed from the rollups' meter columns."""

    device_key: int
    consumption: float = 0.0
    covered_s: float = 0.0
    excluded_s: float = 0.0
    n: int = 0
    resets: int = 0
    rollovers: int = 0
    rejected: int = 0
    noise: int = 0

    @property
    def per_day(self) -> float | None:
        return self.consumption / self.covered_s * 86400.0 if self.covered_s > 0 else None


_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


async def copy_columns(
    conn: asyncpg.Connection, query: str, *args: object, kinds: str
) -> list[npt.NDArray[Any]]:
    """The rows of `query` as NumPy columns, read with a binary COPY: no Python object per row, so
    a year of hourly rollups decodes in milliseconds. `kinds` names each column's type, "i" (int8)
    or "f" (float8): the query casts every column to it, and none may be NULL (checked)."""
    chunks: list[bytes] = []

    async def keep(chunk: bytes) -> None:
        chunks.append(chunk)

    await conn.copy_from_query(query, *args, output=keep, format="binary")
    raw = b"".join(chunks)
    if raw[:11] != _COPY_SIGNATURE or raw[-2:] != b"\xff\xff":
        raise ValueError("not a PostgreSQL binary COPY stream")
    start = 19 + int.from_bytes(raw[15:19], "big")  # after the header and its extension area
    fields: list[tuple[str, str]] = [("fields", ">i2")]
    for i, kind in enumerate(kinds):
        fields += [(f"len{i}", ">i4"), (f"v{i}", {"i": ">i8", "f": ">f8"}[kind])]
    row = np.dtype(fields)
    body = memoryview(raw)[start:-2]
    if len(body) % row.itemsize:
        raise ValueError(f"binary COPY rows are not {len(kinds)} fields of 8 bytes (NULL or another type)")
    rec = np.frombuffer(body, dtype=row)
    if not (rec["fields"] == len(kinds)).all() or any((rec[f"len{i}"] != 8).any() for i in range(len(kinds))):
        raise ValueError(f"binary COPY rows are not {len(kinds)} fields of 8 bytes (NULL or another type)")
    return [rec[f"v{i}"].astype(rec[f"v{i}"].dtype.newbyteorder("=")) for i in range(len(kinds))]


@dataclass(frozen=True)
class HourlyColumns:
    """Valid hourly rollups as columns, ordered by (device, metric id, hour): one array per field,
    so the formulas work on a year of hours without a Python object per hour."""

    device_key: npt.NDArray[np.int64]
    metric: npt.NDArray[np.object_]
    bucket_us: npt.NDArray[np.int64]
    n: npt.NDArray[np.int64]
    mean: npt.NDArray[np.float64]
    energy: npt.NDArray[np.float64]

    @classmethod
    def ordered(
        cls,
        device_key: npt.NDArray[np.int64],
        metric_id: npt.NDArray[np.int64],
        bucket_us: npt.NDArray[np.int64],
        n: npt.NDArray[np.int64],
        mean: npt.NDArray[np.float64],
        energy: npt.NDArray[np.float64],
        metric_names: dict[int, str],
    ) -> HourlyColumns:
        """Sorted into series (cheaper here than an ORDER BY in the query), metric ids named."""
        order = np.lexsort((bucket_us, metric_id, device_key))
        ids = metric_id[order]
        names = np.array([metric_names.get(i, "") for i in range(int(ids.max(initial=0)) + 1)], dtype=object)
        return cls(device_key[order], names[ids], bucket_us[order], n[order], mean[order], energy[order])

    def __len__(self) -> int:
        return int(self.device_key.shape[0])

    def series(self) -> Iterator[tuple[int, str, slice]]:
        """(device_key, metric, rows) of each series, in order."""
        n = len(self)
        if n == 0:
            return
        change = (self.device_key[1:] != self.device_key[:-1]) | (self.metric[1:] != self.metric[:-1])
        bounds = [0, *(np.flatnonzero(change) + 1).tolist(), n]
        for a, b in pairwise(bounds):
            yield int(self.device_key[a]), str(self.metric[a]), slice(a, b)


@dataclass
class CityData:
    """One city's data for one period; `now` bounds the elapsed part of an ongoing period."""

    conn: asyncpg.Connection
    city_id: str
    period: Period
    now: datetime
    _devices: dict[int, DeviceInfo] | None = field(default=None, repr=False)

    @cached_property
    def start(self) -> datetime:
        return self.period.start_utc

    @cached_property
    def end(self) -> datetime:
        return self.period.end_utc

    async def devices(self) -> dict[int, DeviceInfo]:
        if self._devices is None:
            rows = await self.conn.fetch(
                """SELECT device_key, device_id, kind, area_id, expected_interval_s, metadata,
                          registered_by, installed_on
                   FROM devices WHERE city_id = $1""",
                self.city_id,
            )
            self._devices = {
                r["device_key"]: DeviceInfo(
                    r["device_key"],
                    r["device_id"],
                    r["kind"],
                    r["area_id"],
                    r["expected_interval_s"],
                    json.loads(r["metadata"])
                    if isinstance(r["metadata"], str)
                    else dict(r["metadata"] or {}),
                    r["registered_by"],
                    r["installed_on"],
                )
                for r in rows
            }
        return self._devices

    async def hourly(self, metrics: list[str], *, extend_before: timedelta = timedelta(0)) -> HourlyColumns:
        """Valid hourly rollups (device_key, metric, bucket_us, n, mean, energy) of the city in the
        window (`VALID_HOUR`), `extend_before` earlier for running means."""
        columns = await copy_columns(
            self.conn,
            f"""SELECT h.device_key::int8, h.metric_id::int8, (extract(epoch FROM h.bucket) * 1000000)::int8,
                       h.n::int8, (h.sum / h.n)::float8, h.energy::float8
                FROM ({self._hours_from}) h WHERE {VALID_HOUR}""",
            self.city_id,
            metrics,
            self.start - extend_before,
            self.end,
            self.period.tz,
            kinds="iiiiff",
        )
        names = await self.conn.fetch(
            "SELECT metric_id, name FROM metrics WHERE name = ANY($1::text[])", metrics
        )
        device_key, metric_id, bucket_us, n, mean, energy = columns
        return HourlyColumns.ordered(
            device_key, metric_id, bucket_us, n, mean, energy, {r["metric_id"]: r["name"] for r in names}
        )

    @property
    def _hours_from(self) -> str:
        return HOURS_FROM_1H if self.period.whole_hour_zone else HOURS_FROM_15M

    async def daily_linear(
        self, metrics: list[str], hourly_limits: dict[str, float] | None = None
    ) -> list[asyncpg.Record]:
        """Per (device, metric, local day): mean and max of hourly means, hours, readings and the
        number of hours above `hourly_limits[metric]`."""
        limits = hourly_limits or {}
        return await self.conn.fetch(
            f"""SELECT h.device_key, m.name AS metric, (h.bucket AT TIME ZONE $5)::date AS day,
                      avg(h.sum / h.n) AS mean, max(h.sum / h.n) AS max_hourly,
                      count(*) AS hours, sum(h.n) AS n,
                      count(*) FILTER (WHERE h.sum / h.n > lim.value) AS hours_above
               FROM ({self._hours_from}) h JOIN metrics m ON m.metric_id = h.metric_id
               LEFT JOIN unnest($6::text[], $7::float8[]) AS lim(metric, value) ON lim.metric = m.name
               WHERE {VALID_HOUR}
               GROUP BY 1, 2, 3""",
            self.city_id,
            metrics,
            self.start,
            self.end,
            self.period.tz,
            list(limits),
            [float(v) for v in limits.values()],
        )

    async def series_counts(self, metrics: list[str]) -> dict[tuple[int, str], SeriesCount]:
        """Readings per (device, metric) in the window and their expected interval: the device's
        expected_interval_s, else the median interval observed (median over hourly buckets of
        (last - first)/(n - 1), or of the gaps between buckets when each holds one reading)."""
        parts: list[str] = []
        args: list[object] = [self.city_id, metrics]
        for table, a, b in window_segments(self.start, self.end):
            args += [a, b]
            parts.append(f"""SELECT r.device_key, m.name AS metric, r.n FROM {table} r
                JOIN devices d ON d.device_key = r.device_key JOIN metrics m ON m.metric_id = r.metric_id
                WHERE d.city_id = $1 AND m.name = ANY($2::text[])
                  AND r.bucket >= ${len(args) - 1} AND r.bucket < ${len(args)}""")
        rows = await self.conn.fetch(
            "SELECT device_key, metric, sum(n)::int8 AS n FROM ("
            + " UNION ALL ".join(parts)
            + ") x GROUP BY 1, 2",
            *args,
        )
        observed = await self.conn.fetch(
            """WITH b AS (
                 SELECT r.device_key, m.name AS metric, r.n, r.first_time, r.last_time,
                        lag(r.last_time) OVER (PARTITION BY r.device_key, r.metric_id
                                               ORDER BY r.bucket) AS prev
                 FROM rollup_1h r JOIN devices d ON d.device_key = r.device_key
                 JOIN metrics m ON m.metric_id = r.metric_id
                 WHERE d.city_id = $1 AND m.name = ANY($2::text[]) AND r.bucket >= $3 AND r.bucket < $4
                   AND coalesce(d.expected_interval_s, 0) = 0)  -- only where no interval is registered
               SELECT device_key, metric,
                      percentile_cont(0.5) WITHIN GROUP (
                          ORDER BY extract(epoch FROM last_time - first_time) / (n - 1))
                          FILTER (WHERE n > 1 AND last_time > first_time) AS intra_s,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM first_time - prev))
                          FILTER (WHERE prev IS NOT NULL AND first_time > prev) AS gap_s
               FROM b GROUP BY 1, 2""",
            self.city_id,
            metrics,
            self.start,
            self.end,
        )
        obs = {(r["device_key"], r["metric"]): (r["intra_s"], r["gap_s"]) for r in observed}
        devices = await self.devices()
        out: dict[tuple[int, str], SeriesCount] = {}
        for r in rows:
            key = (r["device_key"], r["metric"])
            dev = devices.get(r["device_key"])
            intra, gap = obs.get(key, (None, None))
            # the registered interval, else the median interval observed, else the median gap
            # between hourly buckets, else unknown (a single reading)
            interval = (
                dev.expected_interval_s if dev is not None and dev.expected_interval_s else intra or gap
            )
            out[key] = SeriesCount(
                r["device_key"], r["metric"], int(r["n"]), float(interval) if interval else None
            )
        table, secs = ("rollup_1h", 3600.0) if self.period.whole_hour_zone else ("rollup_15m", 900.0)
        for filled, series in (
            (
                FILLED_BELOW_BUCKET.format(secs=secs),
                [sc for sc in out.values() if 0 < (sc.interval_s or 0) < secs],
            ),
            (FILLED_FROM_BUCKET, [sc for sc in out.values() if (sc.interval_s or 0) >= secs]),
        ):
            if not series:
                continue
            for r in await self.conn.fetch(
                FILLED_SLOTS.format(table=table, filled=filled),
                [sc.device_key for sc in series],
                [sc.metric for sc in series],
                [sc.interval_s for sc in series],
                self.start,
                self.end,
            ):
                out[(r["device_key"], r["metric"])].filled_slots = int(r["filled"])
        return out

    def capture(self, sc: SeriesCount) -> tuple[float, float]:
        """(coverage of the whole period, coverage of its elapsed part), each in [0, 1]: filled
        expected slots / expected slots."""
        if not sc.interval_s:
            return 0.0, 0.0
        elapsed = (self.period.elapsed_end(self.now) - self.start).total_seconds()
        full = min(1.0, sc.filled_slots * sc.interval_s / self.period.seconds)
        so_far = min(1.0, sc.filled_slots * sc.interval_s / elapsed) if elapsed > 0 else 0.0
        return full, so_far

    async def meter_usage(self, metric: str) -> dict[int, MeterUsage]:
        """Per meter, the consumption steps ending in the window (processors/meters.py): sums of the
        rollups' meter columns, rollup_1d for whole UTC days and rollup_1h/1m at the edges."""
        parts: list[str] = []
        args: list[object] = [self.city_id, metric]
        for table, a, b in window_segments(self.start, self.end):
            args += [a, b]
            parts.append(f"""SELECT r.device_key, r.n, r.meter_consumption, r.meter_covered_s,
                       r.meter_excluded_s, r.meter_resets, r.meter_rollovers, r.meter_rejected, r.meter_noise
                FROM {table} r JOIN devices d ON d.device_key = r.device_key
                JOIN metrics m ON m.metric_id = r.metric_id
                WHERE d.city_id = $1 AND m.name = $2
                  AND r.bucket >= ${len(args) - 1} AND r.bucket < ${len(args)}""")
        rows = await self.conn.fetch(
            f"""SELECT device_key, sum(n)::int8 AS n, sum(meter_consumption) AS consumption,
                       sum(meter_covered_s) AS covered_s, sum(meter_excluded_s) AS excluded_s,
                       sum(meter_resets)::int8 AS resets, sum(meter_rollovers)::int8 AS rollovers,
                       sum(meter_rejected)::int8 AS rejected, sum(meter_noise)::int8 AS noise
                FROM ({" UNION ALL ".join(parts)}) x GROUP BY 1""",
            *args,
        )
        return {
            r["device_key"]: MeterUsage(
                r["device_key"],
                float(r["consumption"]),
                float(r["covered_s"]),
                float(r["excluded_s"]),
                int(r["n"]),
                int(r["resets"]),
                int(r["rollovers"]),
                int(r["rejected"]),
                int(r["noise"]),
            )
            for r in rows
        }

    async def reporting(self, metrics: list[str]) -> dict[int, int]:
        """Devices of the city with readings of any of `metrics` (all metrics if empty) in the
        window, with their reading counts."""
        parts: list[str] = []
        args: list[object] = [self.city_id, metrics]
        metric_filter = "AND m.name = ANY($2::text[])" if metrics else "AND cardinality($2::text[]) = 0"
        for table, a, b in window_segments(self.start, self.end):
            args += [a, b]
            parts.append(f"""SELECT r.device_key, r.n FROM {table} r
                JOIN devices d ON d.device_key = r.device_key JOIN metrics m ON m.metric_id = r.metric_id
                WHERE d.city_id = $1 {metric_filter}
                  AND r.bucket >= ${len(args) - 1} AND r.bucket < ${len(args)}""")
        rows = await self.conn.fetch(
            f"SELECT device_key, sum(n)::int8 AS n FROM ({' UNION ALL '.join(parts)}) x GROUP BY 1", *args
        )
        return {r["device_key"]: int(r["n"]) for r in rows}
