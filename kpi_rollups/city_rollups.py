"""Data access for the KPI formulas: rollups of ONE city over one period window.

Every query joins `devices` and filters `devices.city_id`, so nothing of another city's devices
can enter a KPI (tenant isolation). Aggregates come from the rollup tables: where local hours or
days matter, one binary COPY per metric set of rollup_1h (rollup_15m in zones whose local hours
are not UTC hours) into NumPy columns (`MetricBuckets`); for whole-window sums a mix of rollup_1d
(UTC days fully inside the window), rollup_1h and rollup_1m at the edges; meters from the
rollups' meter step columns.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

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


# Every bucket with readings of the city's metrics $2 (ids, so the planner estimates the rows from
# the column's statistics: names in a subquery made it expect 100x fewer and probe devices per row)
# in [$3, $4) of {table} (rollup_1h where local hours are UTC hours, else rollup_15m), with the UTC
# start of its local hour ($5 zone): the formulas' hours, daily statistics and filled slots are
# computed from these columns in NumPy (one scan of the window per metric set, no sort or spill in
# PostgreSQL).
BUCKETS = """
SELECT r.device_key::int8, r.metric_id::int8, (extract(epoch FROM r.bucket) * 1000000)::int8,
       (extract(epoch FROM {hour}) * 1000000)::int8, r.n::int8, r.sum::float8, r.energy::float8,
       coalesce(d.expected_interval_s, 'NaN')::float8
FROM {table} r JOIN devices d ON d.device_key = r.device_key
WHERE d.city_id = $1 AND r.metric_id = ANY($2::int2[])
  AND r.bucket >= $3 AND r.bucket < $4 AND r.n > 0 AND $5::text IS NOT NULL
"""
LOCAL_HOUR = "date_trunc('hour', r.bucket AT TIME ZONE $5::text) AT TIME ZONE $5::text"
# the earliest hour a formula reads before the window: the 24-h running means of the European AQI
MAX_EXTEND_BEFORE = timedelta(hours=23)


def valid_hours(n: npt.NDArray[np.int64], interval_s: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """An hourly value needs 75 % of the hour's expected readings (Directive 2008/50/EC, Annex VII):
    one reading of a 10-second sensor is no hourly mean; a device read hourly (or unknown: NaN, or
    not above 0, as `series_counts` reads it) needs one."""
    expected = np.minimum(np.where(interval_s > 0, interval_s, 3600.0), 3600.0)
    return n >= np.ceil(2700.0 / expected)


def local_times(
    instant_us: npt.NDArray[np.int64], zone_name: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(local date ordinal, local hour 0-23, local weekday 0=Monday) of each instant, DST-aware."""
    zone = ZoneInfo(zone_name)
    uniq, inverse = np.unique(instant_us, return_inverse=True)
    ordinal = np.empty(uniq.shape[0], dtype=np.int64)
    hours = np.empty(uniq.shape[0], dtype=np.int64)
    wdays = np.empty(uniq.shape[0], dtype=np.int64)
    for i, u in enumerate(uniq.tolist()):
        t = (EPOCH + timedelta(microseconds=u)).astimezone(zone)
        ordinal[i], hours[i], wdays[i] = t.toordinal(), t.hour, t.weekday()
    inv = inverse.reshape(-1)
    return ordinal[inv], hours[inv], wdays[inv]


def _starts(*keys: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Indices where a run of equal keys starts, in arrays sorted by those keys."""
    if keys[0].shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.zeros(keys[0].shape[0], dtype=np.bool_)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    return np.flatnonzero(change)


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
    chunks.clear()  # one copy of the rows at a time (a year of a large city's buckets: GBs)
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
    metric_id: npt.NDArray[np.int64]
    metric: npt.NDArray[np.object_]
    bucket_us: npt.NDArray[np.int64]
    n: npt.NDArray[np.int64]
    mean: npt.NDArray[np.float64]
    energy: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.device_key.shape[0])

    def series(self) -> Iterator[tuple[int, str, slice]]:
        """(device_key, metric, rows) of each series, in order."""
        bounds = [*_starts(self.device_key, self.metric_id).tolist(), len(self)]
        for a, b in pairwise(bounds):
            yield int(self.device_key[a]), str(self.metric[a]), slice(a, b)


@dataclass(frozen=True)
class DailyColumns:
    """Per (device, metric, local day) of valid hours: mean and max of the hourly means, hours,
    readings and hours above the metric's hourly limit; ordered by (device, metric id, day)."""

    device_key: npt.NDArray[np.int64]
    metric: npt.NDArray[np.object_]
    day_ordinal: npt.NDArray[np.int64]
    mean: npt.NDArray[np.float64]
    max_hourly: npt.NDArray[np.float64]
    hours: npt.NDArray[np.int64]
    n: npt.NDArray[np.int64]
    hours_above: npt.NDArray[np.int64]


@dataclass(frozen=True)
class MetricBuckets:
    """Every rollup bucket with readings of some metrics from `MAX_EXTEND_BEFORE` before the window
    to its end (`BUCKETS`), as columns sorted by (device, metric id, local hour, bucket): CityData
    reads them once per metric set and derives hours, daily statistics and filled slots from them."""

    metrics: frozenset[str]
    bucket_s: float  # 3600 (rollup_1h) or 900 (rollup_15m, grouped by local hour)
    names: npt.NDArray[np.object_]  # metric name by metric id
    device_key: npt.NDArray[np.int64]
    metric_id: npt.NDArray[np.int64]
    bucket_us: npt.NDArray[np.int64]
    hour_us: npt.NDArray[np.int64]  # the UTC start of the bucket's local hour
    n: npt.NDArray[np.int64]
    sum: npt.NDArray[np.float64]
    energy: npt.NDArray[np.float64]
    interval_s: npt.NDArray[np.float64]  # the device's expected interval, NaN if none

    def mask(self, metrics: list[str], from_us: int) -> npt.NDArray[np.bool_]:
        """The buckets of `metrics` from `from_us`."""
        ids = [i for i, name in enumerate(self.names.tolist()) if name in metrics]
        return (self.bucket_us >= from_us) & np.isin(self.metric_id, ids)

    def hourly(self, metrics: list[str], from_us: int) -> HourlyColumns:
        """The valid local hours of `metrics` from `from_us`: buckets summed per local hour."""
        order = np.flatnonzero(self.mask(metrics, from_us))  # the buckets are in series order
        dk, mid, hour = self.device_key[order], self.metric_id[order], self.hour_us[order]
        n, total, energy, interval = (
            self.n[order],
            self.sum[order],
            self.energy[order],
            self.interval_s[order],
        )
        if self.bucket_s < 3600.0 and order.size:
            first = _starts(dk, mid, hour)
            n, total, energy = (np.add.reduceat(x, first) for x in (n, total, energy))
            dk, mid, hour, interval = dk[first], mid[first], hour[first], interval[first]
        ok = valid_hours(n, interval)
        return HourlyColumns(
            dk[ok], mid[ok], self.names[mid[ok]], hour[ok], n[ok], total[ok] / n[ok], energy[ok]
        )

    def filled_slots(self, series: dict[tuple[int, str], float], from_us: int) -> dict[tuple[int, str], int]:
        """Expected slots (one per interval, `series` maps (device, metric) to it) holding a reading:
        for intervals below a bucket, per bucket at most its number of slots (near-duplicate
        readings fill no extra slot); from a bucket up, the distinct slots of the buckets."""
        sel = np.flatnonzero(self.bucket_us >= from_us)
        key = self.device_key[sel] * 65536 + self.metric_id[sel]
        uniq, inverse = np.unique(key, return_inverse=True)
        inverse = inverse.reshape(-1)
        names = self.names.tolist()
        pairs = [(int(k) // 65536, names[int(k) % 65536]) for k in uniq.tolist()]
        interval = np.array([series.get(p, np.nan) for p in pairs], dtype=np.float64)[inverse]
        below = np.flatnonzero((interval > 0) & (interval < self.bucket_s))
        filled = np.bincount(
            inverse[below],
            weights=np.minimum(self.n[sel][below], np.ceil(self.bucket_s / interval[below])),
            minlength=uniq.shape[0],
        )
        above = np.flatnonzero(interval >= self.bucket_s)
        slot = np.floor(self.bucket_us[sel][above] / 1e6 / interval[above]).astype(np.int64)
        distinct = np.unique(np.stack([inverse[above], slot]), axis=1)[0]
        filled += np.bincount(distinct, minlength=uniq.shape[0])
        return {p: int(f) for p, f in zip(pairs, filled.tolist(), strict=True) if p in series}


@dataclass
class CityData:
    """One city's data for one period; `now` bounds the elapsed part of an ongoing period."""

    conn: asyncpg.Connection
    city_id: str
    period: Period
    now: datetime
    _devices: dict[int, DeviceInfo] | None = field(default=None, repr=False)
    _buckets: MetricBuckets | None = field(default=None, repr=False, compare=False)

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

    async def buckets(self, metrics: list[str]) -> MetricBuckets:
        """The buckets of `metrics` from `MAX_EXTEND_BEFORE` before the window to its end, read once
        for the last metric set asked and reused while the formula asks for its subsets (only one
        set is kept: a year of a large city's hours is large). The 23 h before are read even when
        no running mean needs them: one read per set; a day refresh reads about twice its rows."""
        kept = self._buckets
        if kept is not None and kept.metrics.issuperset(metrics):
            return kept
        rows = await self.conn.fetch(
            "SELECT metric_id, name FROM metrics WHERE name = ANY($1::text[])", metrics
        )
        named = {r["metric_id"]: r["name"] for r in rows}
        names = np.array([named.get(i, "") for i in range(max(named, default=0) + 1)], dtype=object)
        whole_hours = self.period.whole_hour_zone
        device_key, metric_id, bucket_us, hour_us, n, total, energy, interval = await copy_columns(
            self.conn,
            BUCKETS.format(
                table="rollup_1h" if whole_hours else "rollup_15m",
                hour="r.bucket" if whole_hours else LOCAL_HOUR,
            ),
            self.city_id,
            list(named),
            self.start - MAX_EXTEND_BEFORE,
            self.end,
            self.period.tz,
            kinds="iiiiifff",
        )
        order = np.lexsort((bucket_us, hour_us, metric_id, device_key))  # once, not per hourly() call
        self._buckets = MetricBuckets(
            frozenset(metrics),
            3600.0 if whole_hours else 900.0,
            names,
            device_key[order],
            metric_id[order],
            bucket_us[order],
            hour_us[order],
            n[order],
            total[order],
            energy[order],
            interval[order],
        )
        return self._buckets

    async def hourly(self, metrics: list[str], *, extend_before: timedelta = timedelta(0)) -> HourlyColumns:
        """Valid hourly rollups (device_key, metric_id, metric, bucket_us, n, mean, energy) of the city in the
        window (`valid_hours`), `extend_before` (at most `MAX_EXTEND_BEFORE`) earlier for running means."""
        if extend_before > MAX_EXTEND_BEFORE:
            raise ValueError(f"hours are read at most {MAX_EXTEND_BEFORE} before the window")
        return (await self.buckets(metrics)).hourly(metrics, to_us(self.start - extend_before))

    async def daily_linear(
        self, metrics: list[str], hourly_limits: dict[str, float] | None = None
    ) -> DailyColumns:
        """Per (device, metric, local day): mean and max of hourly means, hours, readings and the
        number of hours above `hourly_limits[metric]`."""
        h = await self.hourly(metrics)
        day = local_times(h.bucket_us, self.period.tz)[0]
        first = _starts(h.device_key, h.metric_id, day)
        hours = np.diff(np.append(first, len(h)))
        limits = hourly_limits or {}
        names = (await self.buckets(metrics)).names.tolist()
        limit = np.array([limits.get(name, np.nan) for name in names], dtype=np.float64)[h.metric_id]
        if not first.size:  # no hours (reduceat needs an index)
            none, nothing = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
            return DailyColumns(none, h.metric, none, nothing, nothing, none, none, none)
        return DailyColumns(
            h.device_key[first],
            h.metric[first],
            day[first],
            np.add.reduceat(h.mean, first) / hours,
            np.maximum.reduceat(h.mean, first),
            hours,
            np.add.reduceat(h.n, first),
            np.add.reduceat((h.mean > limit).astype(np.int64), first),
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
        buckets = await self.buckets(metrics)
        intervals = {key: sc.interval_s for key, sc in out.items() if sc.interval_s}
        for key, filled in buckets.filled_slots(intervals, to_us(self.start)).items():
            out[key].filled_slots = filled
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
