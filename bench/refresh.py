"""What the KPI refresh costs as a city grows: `python -m bench.refresh [--devices 100,300,1000]`.

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
import contextlib
import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.ingest import (
    commit_latency,
    end_service,
    publish_paced,
    rss_mib,
    service_process,
    wait_rows,
)
from bench.stack import TSDB_URL, count_readings, drop_database, migrated_database
from core.config import Settings
from ingest.publishers import MqttPublisher
from ingest.simulator import SimMessage
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


async def bench_devices(n_devices: int, days: list[int], runs: int) -> AsyncIterator[dict[str, Any]]:
    dsn = await migrated_database(TSDB_URL)
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
                print(_format(row), flush=True)
                yield row
        finally:
            await conn.close()
    finally:
        await drop_database(TSDB_URL, dsn)


async def ingest_latency(
    devices: int, days: int, rate: int, seconds: float, refresh_interval_s: float
) -> dict[str, Any]:
    """Publish-to-commit latency of `citykpi run` at `rate` msg/s for `seconds` while its KPI refresh
    runs every `refresh_interval_s` (0: off) over the demo city with `devices` devices and `days` of
    rollups up to now; the refresh rounds that ran come from the service's log."""
    dsn = await migrated_database(TSDB_URL)
    conn = await asyncpg.connect(dsn)
    try:
        await import_registry(conn, parse_registry(REGISTRY), "bench")
        await add_devices(conn, devices)
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        await add_rollups(conn, end - timedelta(days=days), end)
    finally:
        await conn.close()
    client_id = f"refresh-lat-{uuid.uuid4().hex[:6]}"
    log_path = Path(f"/tmp/{client_id}.log")
    os.environ["CITYKPI_BENCH_SERVICE_LOG"] = str(log_path)
    proc, service_log = service_process(
        dsn,
        client_id,
        CITYKPI_MQTT__SHARED_GROUP=client_id,
        CITYKPI_KPI_REFRESH_INTERVAL_S=str(refresh_interval_s),
        CITYKPI_KPI_REFRESH_MONTH_YEAR_S="0",  # both schedules (day; month and year) back to back
        CITYKPI_LOG_LEVEL="INFO",
    )
    del os.environ["CITYKPI_BENCH_SERVICE_LOG"]
    try:
        pub = MqttPublisher(Settings().mqtt, client_id=f"{client_id}-pub")
        await pub.start()
        while not await count_readings(dsn):  # probes until the service has subscribed
            probe = [{"bn": "probe:", "bt": time.time(), "n": "pm25", "v": 1.0}]
            await pub.publish([SimMessage("city/demo/senml/probe", json.dumps(probe).encode())])
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        probes = await count_readings(dsn)
        rss: list[float] = []
        sent = await publish_paced(pub, rate, seconds, 0, lambda: rss.append(rss_mib(proc.pid)), 5)
        await pub.stop()
        with contextlib.suppress(TimeoutError):  # reported as missing: the latency of the rest stands
            await wait_rows(dsn, probes + sent, timeout=60)
        missing = probes + sent - await count_readings(dsn)
        p50, p99 = await commit_latency(dsn)
        rounds: dict[str, list[float]] = {"day": [], "month, year": []}  # per schedule
        for line in log_path.read_text().splitlines():
            if '"KPIs refreshed (' in line:
                message = json.loads(line)["message"]
                kinds = message.split("(", 1)[1].split(")", 1)[0]
                rounds[kinds].append(float(message.rsplit(" in ", 1)[1].split()[0]))
    finally:
        await end_service(proc, service_log, dsn, client_id)
        log_path.unlink(missing_ok=True)
    return {
        "refresh_interval_s": refresh_interval_s,
        "devices": devices,
        "days": days,
        "rate_msg_per_s": rate,
        "seconds": seconds,
        "messages": sent,
        "not_stored_after_60_s": missing,
        "latency_p50_s": p50,
        "latency_p99_s": p99,
        "refresh_rounds": {k: len(v) for k, v in rounds.items()},
        "refresh_round_median_s": {k: statistics.median(v) if v else None for k, v in rounds.items()},
        "service_rss_mib_max": max(rss) if rss else None,
    }


def _format(row: dict[str, Any]) -> str:
    return (
        f"{row['devices']:>7,} {row['days']:>5} {row['rollup_1h_rows']:>12,} "
        f"{row['day_s']:8.2f} {row['month_s']:8.2f} {row['year_s']:8.2f} {row['round_s']:8.2f}"
    )


async def run(devices: list[int], days: list[int], runs: int, latency: argparse.Namespace, out: Path) -> None:
    """The refresh grid, then the ingest latency pairs; results are written after each row, so a
    database restarted under the bench (a shared machine) leaves what was measured."""
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
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
            **vars(latency),
        },
        "refresh": [],
        "ingest_latency": [],
    }
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"{'devices':>7} {'days':>5} {'rollup_1h':>12}"
        + "".join(f"{h:>9}" for h in ("day s", "month s", "year s", "round s"))
    )
    for n in devices:
        async for row in bench_devices(n, days, runs):
            result["refresh"].append(row)
            save()
    if latency.latency_seconds > 0:
        # refresh off, then every second (back to back rounds), alternating
        for _ in range(latency.latency_runs):
            for interval in (0.0, 1.0):
                r = await ingest_latency(
                    latency.latency_devices,
                    latency.latency_days,
                    latency.rate,
                    latency.latency_seconds,
                    interval,
                )
                result["ingest_latency"].append(r)
                save()
                print(
                    f"ingest at {r['rate_msg_per_s']} msg/s, refresh {'every 1 s' if interval else 'off'}: "
                    f"p50 {r['latency_p50_s'] * 1e3:.0f} ms, p99 {r['latency_p99_s'] * 1e3:.0f} ms "
                    f"({r['refresh_rounds']} refresh rounds, median {r['refresh_round_median_s']} s)",
                    flush=True,
                )
    print(f"wrote {out}")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=_ints, default=[100, 300, 1000])
    parser.add_argument("--days", type=_ints, default=[7, 30, 90])
    parser.add_argument("--runs", type=int, default=1, help="3 for medians: triples the time")
    parser.add_argument("--out", type=Path, default=RESULTS)
    lat = parser.add_argument_group("ingest latency while the refresh runs")
    lat.add_argument("--latency-devices", type=int, default=300)
    lat.add_argument("--latency-days", type=int, default=30)
    lat.add_argument("--rate", type=int, default=2000, help="msg/s, one reading each")
    lat.add_argument("--latency-seconds", type=float, default=60.0, help="per run; 0 skips the phase")
    lat.add_argument("--latency-runs", type=int, default=1, help="pairs of runs (refresh off, on)")
    args = parser.parse_args()
    latency = argparse.Namespace(
        **{
            k: getattr(args, k)
            for k in ("latency_devices", "latency_days", "rate", "latency_seconds", "latency_runs")
        }
    )
    asyncio.run(run(args.devices, args.days, args.runs, latency, args.out))


if __name__ == "__main__":
    main()
