"""The formulas' valid hours, daily statistics and filled slots, computed in NumPy from one read of a
metric set's buckets (kpi_rollups.city_rollups.MetricBuckets), equal their SQL definitions, kept
here as the reference, on a city of mixed devices: expected intervals below, at and above the
bucket and none registered, hours with too few readings for a valid hourly value, empty buckets,
hours before the window, in a whole-hour zone (hourly rollups) and in UTC+5:30 (15-minute rollups
grouped by local hour)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg
import numpy as np
import pytest

from kpi_rollups.city_rollups import CityData, copy_columns
from kpi_rollups.periods import Period

pytestmark = pytest.mark.integration

INTERVALS = [None, 10.0, 120.0, 300.0, 900.0, 3600.0, 7200.0]
METRICS = ["pm25", "no2"]
LIMITS = {"no2": 30.0}
MONTH = date(2025, 3, 1)

# The definitions the NumPy code replaced (same parameters: city, metric names, from, to, zone).
_WHERE = "d.city_id = $1 AND m.name = ANY($2::text[]) AND r.bucket >= $3 AND r.bucket < $4"
HOURS_FROM_1H = f"""SELECT r.device_key, r.metric_id, r.bucket, r.n, r.sum, r.energy
    FROM rollup_1h r JOIN devices d ON d.device_key = r.device_key JOIN metrics m ON m.metric_id = r.metric_id
    WHERE {_WHERE} AND $5::text IS NOT NULL"""
HOURS_FROM_15M = f"""SELECT r.device_key, r.metric_id,
           date_trunc('hour', r.bucket AT TIME ZONE $5::text) AT TIME ZONE $5::text AS bucket,
           sum(r.n)::int8 AS n, sum(r.sum) AS sum, sum(r.energy) AS energy
    FROM rollup_15m r JOIN devices d ON d.device_key = r.device_key
    JOIN metrics m ON m.metric_id = r.metric_id
    WHERE {_WHERE} GROUP BY 1, 2, 3"""
VALID_HOUR = "h.n >= ceil(0.75 * 3600.0 / least(coalesce(d.expected_interval_s, 3600.0), 3600.0))"
HOURLY = """SELECT h.device_key, h.metric_id, m.name,
                   (extract(epoch FROM h.bucket) * 1000000)::int8 AS bucket_us, h.n,
                   h.sum / h.n AS mean, h.energy
    FROM ({hours}) h JOIN devices d ON d.device_key = h.device_key JOIN metrics m ON m.metric_id = h.metric_id
    WHERE {valid} ORDER BY 1, 2, 4"""
DAILY = """SELECT h.device_key, m.name, (h.bucket AT TIME ZONE $5)::date AS day,
                  avg(h.sum / h.n) AS mean, max(h.sum / h.n) AS max_hourly, count(*) AS hours, sum(h.n) AS n,
                  count(*) FILTER (WHERE h.sum / h.n > lim.value) AS hours_above
    FROM ({hours}) h JOIN devices d ON d.device_key = h.device_key JOIN metrics m ON m.metric_id = h.metric_id
    LEFT JOIN unnest($6::text[], $7::float8[]) AS lim(metric, value) ON lim.metric = m.name
    WHERE {valid} GROUP BY 1, 2, 3"""
FILLED = """SELECT u.device_key, u.metric, {filled}::int8 AS filled
    FROM unnest($1::int4[], $2::text[], $3::float8[]) AS u(device_key, metric, interval_s)
    JOIN metrics m ON m.name = u.metric
    JOIN {table} r ON r.device_key = u.device_key AND r.metric_id = m.metric_id
    WHERE r.bucket >= $4 AND r.bucket < $5 AND r.n > 0 GROUP BY u.device_key, u.metric"""
FILLED_BELOW_BUCKET = "sum(least(r.n, ceil({secs} / u.interval_s)))"
FILLED_FROM_BUCKET = "count(DISTINCT floor(extract(epoch FROM r.bucket) / u.interval_s))"


async def city_with_buckets(conn: asyncpg.Connection, tz: str, table: str, step: timedelta) -> Period:
    """A city in `tz` with a device per expected interval and random buckets of `table` (length
    `step`) over the month's first 3 local days and the day before; returns the month."""
    await conn.execute("INSERT INTO cities (city_id, name, timezone) VALUES ('c', 'C', $1)", tz)
    keys = [
        await conn.fetchval(
            "INSERT INTO devices (city_id, device_id, expected_interval_s) VALUES ('c', $1, $2) "
            "RETURNING device_key",
            f"d{i}",
            iv,
        )
        for i, iv in enumerate(INTERVALS)
    ]
    metric_ids = [await conn.fetchval("SELECT metric_id FROM metrics WHERE name = $1", m) for m in METRICS]
    period = Period("month", MONTH, tz)
    rng = np.random.default_rng(7)
    t0 = period.start_utc - timedelta(days=1)
    records = []
    for k in range(int(timedelta(days=4) / step)):
        t = t0 + k * step
        for dk in keys:
            for mid in metric_ids:
                if rng.random() < 0.15:  # no bucket
                    continue
                n = int(rng.integers(0, 32 if step == timedelta(hours=1) else 9))
                v = float(rng.uniform(0, 60))
                records.append((t, dk, mid, n, n * v, n * v * v, v, v, t, v, t, v, n * 10 ** (v / 10)))
    await conn.copy_records_to_table(
        table,
        records=records,
        columns=[
            "bucket", "device_key", "metric_id", "n", "sum", "sumsq", "min", "max",
            "first_time", "first_value", "last_time", "last_value", "energy",
        ],
    )  # fmt: skip
    return period


@pytest.mark.parametrize(
    ("tz", "table", "step"),
    [
        ("Europe/Paris", "rollup_1h", timedelta(hours=1)),
        ("Asia/Kolkata", "rollup_15m", timedelta(minutes=15)),
    ],
)
async def test_hours_daily_statistics_and_filled_slots_equal_their_sql_definitions(
    tsdb: str, tz: str, table: str, step: timedelta
) -> None:
    conn = await asyncpg.connect(tsdb)
    try:
        period = await city_with_buckets(conn, tz, table, step)
        data = CityData(conn, "c", period, datetime(2025, 3, 3, 12, tzinfo=UTC))
        assert period.whole_hour_zone == (table == "rollup_1h")
        hours_sql = HOURS_FROM_1H if table == "rollup_1h" else HOURS_FROM_15M
        args = ("c", METRICS, data.start - timedelta(hours=7), data.end, tz)

        ref = await conn.fetch(HOURLY.format(hours=hours_sql, valid=VALID_HOUR), *args)
        every_hour = await conn.fetch(HOURLY.format(hours=hours_sql, valid="h.n > 0"), *args)
        assert 500 < len(ref) < len(every_hour)  # many valid hours, some with too few readings
        got = await data.hourly(METRICS, extend_before=timedelta(hours=7))
        assert got.device_key.tolist() == [r[0] for r in ref]
        assert got.metric_id.tolist() == [r[1] for r in ref]
        assert got.metric.tolist() == [r[2] for r in ref]
        assert got.bucket_us.tolist() == [r[3] for r in ref]
        assert got.n.tolist() == [r[4] for r in ref]
        np.testing.assert_allclose(got.mean, [r[5] for r in ref], rtol=1e-12)
        np.testing.assert_allclose(got.energy, [r[6] for r in ref], rtol=1e-12)
        # a subset with the longest extension, from the same read
        ref_no2 = await conn.fetch(
            HOURLY.format(hours=hours_sql, valid=VALID_HOUR), "c", ["no2"], data.start - timedelta(hours=23),
            data.end, tz,
        )  # fmt: skip
        no2 = await data.hourly(["no2"], extend_before=timedelta(hours=23))
        assert no2.bucket_us.tolist() == [r[3] for r in ref_no2] and no2.n.tolist() == [r[4] for r in ref_no2]
        assert no2.bucket_us.min() < got.bucket_us.min()
        assert len(await data.hourly(["no_such_metric"])) == 0

        ref_daily = {
            (r[0], r[1], r[2].toordinal()): tuple(r[3:])
            for r in await conn.fetch(
                DAILY.format(hours=hours_sql, valid=VALID_HOUR),
                "c",
                METRICS,
                data.start,
                data.end,
                tz,
                list(LIMITS),
                list(LIMITS.values()),
            )
        }
        daily = await data.daily_linear(METRICS, LIMITS)
        got_daily = {
            (dk, m, d): (mean, mx, hours, n, above)
            for dk, m, d, mean, mx, hours, n, above in zip(
                daily.device_key.tolist(),
                daily.metric.tolist(),
                daily.day_ordinal.tolist(),
                daily.mean.tolist(),
                daily.max_hourly.tolist(),
                daily.hours.tolist(),
                daily.n.tolist(),
                daily.hours_above.tolist(),
                strict=True,
            )
        }
        assert got_daily.keys() == ref_daily.keys()
        assert any(v[4] for v in got_daily.values())  # some NO2 hours above the limit
        for key, (mean, mx, hours, n, above) in got_daily.items():
            assert (hours, n, above) == ref_daily[key][2:]
            assert mean == pytest.approx(ref_daily[key][0], rel=1e-12)
            assert mx == pytest.approx(ref_daily[key][1], rel=1e-12)  # 15-min sums: another order

        counts = await data.series_counts(METRICS)
        secs = step.total_seconds() if table == "rollup_15m" else 3600.0
        ref_filled: dict[tuple[int, str], int] = {}
        for filled, chosen in (
            (
                FILLED_BELOW_BUCKET.format(secs=secs),
                [c for c in counts.values() if 0 < (c.interval_s or 0) < secs],
            ),
            (FILLED_FROM_BUCKET, [c for c in counts.values() if (c.interval_s or 0) >= secs]),
        ):
            assert chosen  # both cases are exercised
            rows = await conn.fetch(
                FILLED.format(table=table, filled=filled),
                [c.device_key for c in chosen], [c.metric for c in chosen], [c.interval_s for c in chosen],
                data.start, data.end,
            )  # fmt: skip
            ref_filled |= {(r[0], r[1]): r[2] for r in rows}
        assert {k: c.filled_slots for k, c in counts.items() if k in ref_filled} == ref_filled
        assert all(c.filled_slots == 0 for k, c in counts.items() if k not in ref_filled)
    finally:
        await conn.close()


async def test_a_null_or_a_column_of_another_width_is_refused_not_misread(tsdb: str) -> None:
    conn = await asyncpg.connect(tsdb)
    try:
        ok = await copy_columns(
            conn, "SELECT g::int8, g * 0.5::float8 FROM generate_series(1, 3) g", kinds="if"
        )
        assert ok[0].tolist() == [1, 2, 3] and ok[1].tolist() == [0.5, 1.0, 1.5]
        for query in (
            "SELECT g::int8, NULL::float8 FROM generate_series(1, 3) g",
            "SELECT g::int4, g::float8 FROM generate_series(1, 3) g",
            "SELECT g::int8 FROM generate_series(1, 3) g",
        ):
            with pytest.raises(ValueError, match="binary COPY rows"):
                await copy_columns(conn, query, kinds="if")
    finally:
        await conn.close()
