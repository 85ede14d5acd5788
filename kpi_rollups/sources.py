"""Data access for the KPI formulas: rollups of ONE city over one period window.

Every query joins `devices` and filters `devices.city_id`, so nothing of another city's devices
can enter a KPI (tenant isolation). Aggregates come from the rollup tables: rollup_1h where local
hours or days matter, and for whole-window sums a mix of rollup_1d (UTC days fully inside the
window), rollup_1h and rollup_1m at the edges. Raw readings are read only for meter buckets that
hold an index drop (reset), where first/last per bucket is not enough.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np

from kpi_rollups.periods import Period
from processors.kernels import (
    FLAG_FIRST,
    FLAG_IMPLAUSIBLE,
    FLAG_MISSING,
    FLAG_RESET,
    consumption_from_cumulative,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def to_us(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1)


def _floor(t: datetime, step: timedelta) -> datetime:
    return EPOCH + ((t - EPOCH) // step) * step


def _ceil(t: datetime, step: timedelta) -> datetime:
    f = _floor(t, step)
    return f if f == t else f + step


def window_segments(start: datetime, end: datetime) -> list[tuple[str, datetime, datetime]]:
    """Non-overlapping (table, from, to) pieces covering [start, end) with the coarsest rollups."""
    out: list[tuple[str, datetime, datetime]] = []

    def hours(a: datetime, b: datetime) -> None:
        h0, h1 = _ceil(a, HOUR), _floor(b, HOUR)
        if h0 < h1:
            if a < h0:
                out.append(("rollup_1m", a, h0))
            out.append(("rollup_1h", h0, h1))
            if h1 < b:
                out.append(("rollup_1m", h1, b))
        elif a < b:
            out.append(("rollup_1m", a, b))

    d0, d1 = _ceil(start, DAY), _floor(end, DAY)
    if d0 < d1:
        hours(start, d0)
        out.append(("rollup_1d", d0, d1))
        hours(d1, end)
    else:
        hours(start, end)
    return out


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device_key: int
    device_id: str
    kind: str | None
    area_id: str | None
    expected_interval_s: float | None
    metadata: dict[str, Any]

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
    """Readings of one (device, metric) in the window and the interval they are expected at."""

    device_key: int
    metric: str
    n: int
    interval_s: float | None
    interval_source: str


@dataclass
class MeterUsage:
    device_key: int
    consumption: float = 0.0
    covered_s: float = 0.0
    n: int = 0
    resets: int = 0
    implausible: int = 0

    @property
    def per_day(self) -> float | None:
        return self.consumption / self.covered_s * 86400.0 if self.covered_s > 0 else None


@dataclass
class CityData:
    """One city's data for one period; `now` bounds the elapsed part of an ongoing period."""

    conn: asyncpg.Connection
    city_id: str
    period: Period
    now: datetime
    _devices: dict[int, DeviceInfo] | None = field(default=None, repr=False)

    @property
    def start(self) -> datetime:
        return self.period.start_utc

    @property
    def end(self) -> datetime:
        return self.period.end_utc

    async def devices(self) -> dict[int, DeviceInfo]:
        if self._devices is None:
            rows = await self.conn.fetch(
                """SELECT device_key, device_id, kind, area_id, expected_interval_s, metadata
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
                )
                for r in rows
            }
        return self._devices

    async def hourly(
        self, metrics: list[str], *, extend_before: timedelta = timedelta(0)
    ) -> list[asyncpg.Record]:
        """Hourly rollups (device_key, metric, bucket, n, mean, energy) of the city in the window."""
        return await self.conn.fetch(
            """SELECT r.device_key, m.name AS metric, r.bucket, r.n, r.sum / r.n AS mean, r.energy
               FROM rollup_1h r JOIN devices d ON d.device_key = r.device_key
               JOIN metrics m ON m.metric_id = r.metric_id
               WHERE d.city_id = $1 AND m.name = ANY($2::text[]) AND r.bucket >= $3 AND r.bucket < $4
                 AND r.n > 0
               ORDER BY r.device_key, m.name, r.bucket""",
            self.city_id,
            metrics,
            self.start - extend_before,
            self.end,
        )

    async def daily_linear(
        self, metrics: list[str], hourly_limits: dict[str, float] | None = None
    ) -> list[asyncpg.Record]:
        """Per (device, metric, local day): mean and max of hourly means, hours, readings and the
        number of hours above `hourly_limits[metric]`."""
        limits = hourly_limits or {}
        return await self.conn.fetch(
            """SELECT r.device_key, m.name AS metric, (r.bucket AT TIME ZONE $5)::date AS day,
                      avg(r.sum / r.n) AS mean, max(r.sum / r.n) AS max_hourly,
                      count(*) AS hours, sum(r.n) AS n,
                      count(*) FILTER (WHERE r.sum / r.n > lim.value) AS hours_above
               FROM rollup_1h r JOIN devices d ON d.device_key = r.device_key
               JOIN metrics m ON m.metric_id = r.metric_id
               LEFT JOIN unnest($6::text[], $7::float8[]) AS lim(metric, value) ON lim.metric = m.name
               WHERE d.city_id = $1 AND m.name = ANY($2::text[]) AND r.bucket >= $3 AND r.bucket < $4
                 AND r.n > 0
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
                 WHERE d.city_id = $1 AND m.name = ANY($2::text[]) AND r.bucket >= $3 AND r.bucket < $4)
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
            if dev is not None and dev.expected_interval_s:
                interval, source = float(dev.expected_interval_s), "devices.expected_interval_s"
            elif intra:
                interval, source = float(intra), "median interval observed"
            elif gap:
                interval, source = float(gap), "median gap between hourly buckets"
            else:
                interval, source = None, "unknown (a single reading)"
            out[key] = SeriesCount(r["device_key"], r["metric"], int(r["n"]), interval, source)
        return out

    def capture(self, sc: SeriesCount) -> tuple[float, float]:
        """(coverage of the whole period, coverage of its elapsed part), each in [0, 1]."""
        if not sc.interval_s:
            return 0.0, 0.0
        elapsed = (self.period.elapsed_end(self.now) - self.start).total_seconds()
        full = min(1.0, sc.n * sc.interval_s / self.period.seconds)
        so_far = min(1.0, sc.n * sc.interval_s / elapsed) if elapsed > 0 else 0.0
        return full, so_far

    async def meter_usage(
        self, metric: str, device_keys: set[int] | None = None, max_plausible_step: float | None = None
    ) -> dict[int, MeterUsage]:
        """Consumption per meter from its cumulative index over the window.

        Points are the first and last reading of each rollup bucket (raw readings for buckets whose
        minimum is below their first value, i.e. that hold a reset); the chain of points goes through
        processors.kernels.consumption_from_cumulative (resets count from 0). Consumption and the
        time it covers exclude the interval before the first reading in the window.
        """
        parts: list[str] = []
        args: list[object] = [self.city_id, metric]
        for table, a, b in window_segments(self.start, self.end):
            step = {"rollup_1d": "1 day", "rollup_1h": "1 hour", "rollup_1m": "1 minute"}[table]
            args += [a, b]
            parts.append(f"""SELECT r.device_key, r.bucket, r.bucket + interval '{step}' AS bucket_end, r.n,
                       r.min, r.first_time, r.first_value, r.last_time, r.last_value
                FROM {table} r JOIN devices d ON d.device_key = r.device_key
                JOIN metrics m ON m.metric_id = r.metric_id
                WHERE d.city_id = $1 AND m.name = $2
                  AND r.bucket >= ${len(args) - 1} AND r.bucket < ${len(args)}""")
        buckets = await self.conn.fetch(" UNION ALL ".join(parts), *args)
        if device_keys is not None:
            buckets = [b for b in buckets if b["device_key"] in device_keys]
        drops = [b for b in buckets if b["min"] < b["first_value"]]
        raw: dict[tuple[int, datetime], list[tuple[datetime, float]]] = {}
        if drops:
            for r in await self.conn.fetch(
                """SELECT k.dk, k.t0, r.time, r.value FROM readings r
                   JOIN unnest($1::int[], $2::timestamptz[], $3::timestamptz[]) AS k(dk, t0, t1)
                     ON r.device_key = k.dk AND r.time >= k.t0 AND r.time < k.t1
                   JOIN metrics m ON m.metric_id = r.metric_id
                   WHERE m.name = $4""",
                [b["device_key"] for b in drops],
                [b["bucket"] for b in drops],
                [b["bucket_end"] for b in drops],
                metric,
            ):
                raw.setdefault((r["dk"], r["t0"]), []).append((r["time"], r["value"]))
        series: list[int] = []
        ts: list[int] = []
        values: list[float] = []
        usage: dict[int, MeterUsage] = {}
        for b in buckets:
            dk = b["device_key"]
            u = usage.setdefault(dk, MeterUsage(dk))
            u.n += int(b["n"])
            points = raw.get((dk, b["bucket"])) if b["min"] < b["first_value"] else None
            if not points:
                points = [(b["first_time"], b["first_value"])]
                if b["n"] > 1 and b["last_time"] > b["first_time"]:
                    points.append((b["last_time"], b["last_value"]))
            for t, v in points:
                series.append(dk)
                ts.append(to_us(t))
                values.append(float(v))
        if not series:
            return usage
        res = consumption_from_cumulative(
            np.array(series, dtype=np.int64),
            np.array(ts, dtype=np.int64),
            np.array(values, dtype=np.float64),
            max_plausible_step=max_plausible_step,
        )
        s = np.array(series, dtype=np.int64)
        skip = (res.flags & (FLAG_FIRST | FLAG_MISSING | FLAG_IMPLAUSIBLE)) != 0
        ok = ~skip & np.isfinite(res.consumption)
        for dk, u in usage.items():
            mine = s == dk
            u.consumption = float(res.consumption[mine & ok].sum())
            u.covered_s = float(res.interval_us[mine & ok].sum()) / 1e6
            u.resets = int(np.count_nonzero(mine & ((res.flags & FLAG_RESET) != 0)))
            u.implausible = int(np.count_nonzero(mine & ((res.flags & FLAG_IMPLAUSIBLE) != 0)))
        return usage

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
