"""What the KPI refresh costs as a city grows: `python -m bench.refresh [--devices 250,1000]`.

One fresh database per device count: the demo city's reference data (kpi_rollups/demo_registry.toml,
Europe/Paris), then `--devices` devices, a fifth each of air (pm25, no2), noise (laeq), traffic
(vehicle_count, vehicle_speed), water and electricity meters, and their hourly and daily rollups
generated directly in SQL (INSERT ... SELECT generate_series, no ingestion) backwards from
`now` = 2025-12-31 20:00 local, first for the smallest `--days`, then extended to each larger one.
At each size, the scheduled round's three refreshes (current day, month, year: `refresh_kpis`, as
`kpi_refresh_loop` runs them) are timed, medians of `--runs`. Figures go to bench/results/refresh.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.stack import TSDB_URL, drop_database, migrated_database
from kpi_rollups.refresh import refresh_kpis
from kpi_rollups.registry import import_registry, parse_registry

RESULTS = Path(__file__).parent / "results" / "refresh.json"
REGISTRY = Path(__file__).resolve().parent.parent / "kpi_rollups" / "demo_registry.toml"
NOW = datetime(2025, 12, 31, 19, 0, tzinfo=UTC)  # 20:00 in Paris
TODAY = date(2025, 12, 31)
# device kind -> (metric, typical hourly mean, spread); meters: (metric, hourly consumption, 0)
KINDS: dict[str, list[tuple[str, float, float]]] = {
    "air": [("pm25", 12.0, 6.0), ("no2", 30.0, 10.0)],
    "noise": [("laeq", 60.0, 8.0)],
    "traffic": [("vehicle_count", 300.0, 150.0), ("vehicle_speed", 45.0, 10.0)],
    "water": [("water_volume_total", 0.01, 0.0)],
    "electricity": [("energy_total", 0.25, 0.0)],
}

_DEVICES = """
INSERT INTO devices (city_id, device_id, kind, area_id, expected_interval_s, metadata)
SELECT 'demo', $1 || '-' || g, $1, (ARRAY['centre', 'north', 'south'])[1 + g % 3], 300, $2::jsonb
FROM generate_series($3::int, $4::int - 1) g
"""
# One row per (device, metric, hour) in [$2, $3) for the devices of kind $1: 12 readings an hour
# (every 5 min), a diurnal mean; decibel energy and meter steps as the writer would store them.
_HOURS = """
INSERT INTO rollup_1h (bucket, device_key, metric_id, n, sum, sumsq, min, max, first_time, first_value,
                       last_time, last_value, energy, meter_consumption, meter_covered_s)
SELECT h, d.device_key, m.metric_id, 12, 12 * x.v, 12 * x.v * x.v, x.v - x.s, x.v + x.s,
       h, x.v, h + interval '55 minutes', x.v,
       CASE WHEN m.aggregation = 'decibel' THEN 12 * power(10, x.v / 10) ELSE 0 END,
       CASE WHEN m.aggregation = 'cumulative' THEN x.v ELSE 0 END,
       CASE WHEN m.aggregation = 'cumulative' THEN 3600 ELSE 0 END
FROM devices d
JOIN unnest($4::text[], $5::float8[], $6::float8[]) AS u(metric, base, spread) ON true
JOIN metrics m ON m.name = u.metric
CROSS JOIN generate_series($2::timestamptz, $3::timestamptz - interval '1 hour', interval '1 hour') h
CROSS JOIN LATERAL (
    SELECT greatest(0, u.base + u.spread * sin(extract(hour FROM h) * pi() / 12 + d.device_key)) AS v,
           u.spread / 2 + 0.001 AS s) x
WHERE d.city_id = 'demo' AND d.kind = $1
"""
_DAYS = """
INSERT INTO rollup_1d (bucket, device_key, metric_id, n, sum, sumsq, min, max, first_time, first_value,
                       last_time, last_value, energy, meter_consumption, meter_covered_s)
SELECT date_trunc('day', bucket), device_key, metric_id, sum(n), sum(sum), sum(sumsq), min(min), max(max),
       min(first_time), (array_agg(first_value ORDER BY first_time))[1], max(last_time),
       (array_agg(last_value ORDER BY last_time DESC))[1], sum(energy), sum(meter_consumption),
       sum(meter_covered_s)
FROM rollup_1h WHERE bucket >= $1 AND bucket < $2
GROUP BY 1, 2, 3
ON CONFLICT (device_key, metric_id, bucket) DO UPDATE SET
    n = EXCLUDED.n, sum = EXCLUDED.sum, sumsq = EXCLUDED.sumsq, min = EXCLUDED.min, max = EXCLUDED.max,
    first_time = EXCLUDED.first_time, first_value = EXCLUDED.first_value, energy = EXCLUDED.energy,
    meter_consumption = EXCLUDED.meter_consumption, meter_covered_s = EXCLUDED.meter_covered_s
"""


async def add_devices(conn: asyncpg.Connection, n: int) -> None:
    per_kind = n // len(KINDS)
    for i, kind in enumerate(KINDS):
        meta = {"street_km": 1.5, "free_flow_kmh": 50} if kind == "traffic" else {}
        count = per_kind + (n - per_kind * len(KINDS) if i == 0 else 0)
        await conn.execute(_DEVICES, kind, json.dumps(meta), 0, count)


async def add_rollups(conn: asyncpg.Connection, start: datetime, end: datetime) -> int:
    """Hourly rollups of every device in [start, end), then the UTC days they complete."""
    before = await conn.fetchval("SELECT count(*) FROM rollup_1h")
    for kind, metrics in KINDS.items():
        for a in _chunks(start, end, timedelta(days=30)):
            await conn.execute(
                _HOURS,
                kind,
                a[0],
                a[1],
                [m for m, _, _ in metrics],
                [b for _, b, _ in metrics],
                [s for _, _, s in metrics],
            )
    day0 = start.replace(hour=0, minute=0, second=0, microsecond=0)
    await conn.execute(_DAYS, day0, end)
    await conn.execute("ANALYZE rollup_1h; ANALYZE rollup_1d; ANALYZE devices")
    return int(await conn.fetchval("SELECT count(*) FROM rollup_1h")) - int(before)


def _chunks(start: datetime, end: datetime, step: timedelta) -> list[tuple[datetime, datetime]]:
    out = []
    while start < end:
        out.append((start, min(end, start + step)))
        start += step
    return out


async def time_round(dsn: str, runs: int) -> dict[str, float]:
    """Median seconds of the day, month and year refresh (each on its own connection, as the loop)."""
    out: dict[str, list[float]] = {"day": [], "month": [], "year": []}
    for _ in range(runs):
        for kind in out:
            t0 = time.perf_counter()
            await refresh_kpis(dsn, "demo", kind, TODAY, now=NOW, trigger="bench")  # type: ignore[arg-type]
            out[kind].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in out.items()}
    med["round"] = sum(med.values())
    return med


async def bench_devices(n_devices: int, days: list[int], runs: int) -> list[dict[str, Any]]:
    dsn = await migrated_database(TSDB_URL)
    rows: list[dict[str, Any]] = []
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await import_registry(conn, parse_registry(REGISTRY), "bench")
            await add_devices(conn, n_devices)
            end = NOW.replace(minute=0)
            have = 0
            hourly_rows = 0
            for d in sorted(days):
                t0 = time.perf_counter()
                hourly_rows += await add_rollups(conn, end - timedelta(days=d), end - timedelta(days=have))
                generated = time.perf_counter() - t0
                have = d
                med = await time_round(dsn, runs)
                row = {
                    "devices": n_devices,
                    "days": d,
                    "rollup_1h_rows": hourly_rows,
                    "generate_s": generated,
                    **{f"{k}_s": v for k, v in med.items()},
                }
                rows.append(row)
                print(_format(row), flush=True)
        finally:
            await conn.close()
    finally:
        await drop_database(TSDB_URL, dsn)
    return rows


def _format(row: dict[str, Any]) -> str:
    return (
        f"{row['devices']:>7,} {row['days']:>5} {row['rollup_1h_rows']:>12,} "
        f"{row['day_s']:8.2f} {row['month_s']:8.2f} {row['year_s']:8.2f} {row['round_s']:8.2f}"
    )


async def run(devices: list[int], days: list[int], runs: int, out: Path) -> dict[str, Any]:
    started = datetime.now(UTC)
    print(
        f"{'devices':>7} {'days':>5} {'rollup_1h':>12}"
        + "".join(f"{h:>9}" for h in ("day s", "month s", "year s", "round s"))
    )
    rows = []
    for n in devices:
        rows += await bench_devices(n, days, runs)
    result = {
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            "logical_cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m_at_start": os.getloadavg()[0],
        },
        "params": {
            "devices": devices,
            "days": days,
            "runs": runs,
            "statistic": "median",
            "now": NOW.isoformat(),
        },
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=_ints, default=[250, 1000])
    parser.add_argument("--days", type=_ints, default=[30, 90, 365])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    asyncio.run(run(args.devices, args.days, args.runs, args.out))


if __name__ == "__main__":
    main()
