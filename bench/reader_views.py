"""What reading through the reader functions costs: dashboard-shaped queries as the owner (base
tables) and as a city reader (schema `reader`: SECURITY DEFINER functions, a time range for the
tables that grow with time, views over the others), on the same data, in the same run.

    .venv/bin/python -m bench.reader_views [--devices 200] [--days 7] [--runs 7]

A fresh database on the local TimescaleDB with two cities of `--devices` air stations each,
one pm25 reading per station per minute for `--days` days (rollups written by the real writer).
Each figure is the median of `--runs` runs after one warm-up; the reader sees half the rows (its
city), so the fair comparison is the owner's query filtered to the same city. The owner filters
time with literals, as Grafana's $__timeFilter sends them; the reader passes the same literals as
the function's bounds (the last query computes them in SQL: the function still plans with them as
constants). A reader function returns every row of the city and range: a filter on a device is
applied to that output, never inside the function.

The tables behind the functions keep planner statistics on their keys and times only; the reader's
query never sees them (SECURITY.md, Statistics), the function's own query does. Each query runs on
the same data with every column's statistics ("all"), as migrated ("keys"), and with none ("none").
Writes bench/results/reader_views.json (machine, date, figures per statistics setting).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from core.config import Settings
from ingest.database import prepare_database
from processors.writer import TimescaleWriter, WriteBatch
from schemas.access import KEY_COLUMNS, MULTI_CITY_TABLES, apply_access

RESULTS = Path(__file__).resolve().parent / "results" / "reader_views.json"
CITY_DEVICES = "d.city_id = 'demo'"
# (name, owner's SQL restricted to the demo city, reader's SQL: the same panel through the functions)
QUERIES = (
    (
        "hourly mean, last 24 h (rollup_1h)",
        "SELECT time_bucket('1 hour', r.bucket) AS t, sum(r.sum) / sum(r.n) FROM rollup_1h r "
        "JOIN devices d USING (device_key) WHERE {city} AND r.bucket > {since_24h} GROUP BY 1 ORDER BY 1",
        "SELECT time_bucket('1 hour', r.bucket) AS t, sum(r.sum) / sum(r.n) "
        "FROM rollup_1h({since_24h}, {now}) r JOIN devices d USING (device_key) GROUP BY 1 ORDER BY 1",
    ),
    (
        "raw readings of one device, last 6 h",
        "SELECT r.time, r.value FROM readings r JOIN devices d USING (device_key) "
        "WHERE {city} AND d.device_id = 'air-0007' AND r.time > {since_6h} ORDER BY 1",
        "SELECT r.time, r.value FROM readings({since_6h}, {now}) r JOIN devices d USING (device_key) "
        "WHERE d.device_id = 'air-0007' ORDER BY 1",
    ),
    (
        "per-device max, last 7 days (rollup_1m)",
        "SELECT d.device_id, max(r.max) FROM rollup_1m r JOIN devices d USING (device_key) "
        "WHERE {city} AND r.bucket > {since_7d} GROUP BY 1",
        "SELECT d.device_id, max(r.max) FROM rollup_1m({since_7d}, {now}) r "
        "JOIN devices d USING (device_key) GROUP BY 1",
    ),
    (
        "raw readings of one device, last 6 h, device_key from a scalar subquery",
        "SELECT r.time, r.value FROM readings r WHERE r.device_key = (SELECT d.device_key FROM devices d "
        "WHERE {city} AND d.device_id = 'air-0007') AND r.time > {since_6h} ORDER BY 1",
        "SELECT r.time, r.value FROM readings({since_6h}, {now}) r WHERE r.device_key = "
        "(SELECT d.device_key FROM devices d WHERE d.device_id = 'air-0007') ORDER BY 1",
    ),
    (
        "raw readings of one device, last 6 h, bound computed in SQL",
        "SELECT r.time, r.value FROM readings r JOIN devices d USING (device_key) "
        "WHERE {city} AND d.device_id = 'air-0007' AND r.time > now() - interval '6 hours' ORDER BY 1",
        "SELECT r.time, r.value FROM readings(now() - interval '6 hours', now()) r "
        "JOIN devices d USING (device_key) WHERE d.device_id = 'air-0007' ORDER BY 1",
    ),
)


async def _fill(dsn: str, devices: int, days: int) -> int:
    owner = await asyncpg.connect(dsn)
    try:
        await owner.execute(
            "INSERT INTO cities (city_id, name) VALUES ('other', 'Other') ON CONFLICT DO NOTHING"
        )
    finally:
        await owner.close()
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(days=days)
    rows = 0
    async with TimescaleWriter(dsn) as w:
        t = start
        while t < end:
            batch = WriteBatch(source="bench")
            for minute in range(60):
                at = t + timedelta(minutes=minute)
                for i in range(devices):
                    for city in ("demo", "other"):
                        batch.add(city, f"air-{i:04d}", "pm25", at, float((i + minute) % 80))
            rows += len(batch)
            await w.write(batch)
            t += timedelta(hours=1)
    return rows


async def _set_statistics(dsn: str, setting: str) -> None:
    """'all': every column of the tables behind the reader functions (target -1, the default); 'keys': as
    `citykpi migrate` leaves them; 'none': not even the keys. Then ANALYZE."""
    owner = await asyncpg.connect(dsn)
    try:
        await apply_access(owner)
        columns = await owner.fetch(
            "SELECT a.attrelid::regclass::text, quote_ident(a.attname) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid WHERE c.relnamespace = 'public'::regnamespace "
            "AND c.relname = ANY($1::text[]) AND a.attnum > 0 AND NOT a.attisdropped "
            "AND ($2 = 'all' OR ($2 = 'none' AND a.attname = ANY($3::text[])))",
            list(MULTI_CITY_TABLES),
            setting,
            list(KEY_COLUMNS),
        )
        target = -1 if setting == "all" else 0
        for table, column in columns:
            await owner.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STATISTICS {target}")
        if setting == "none":
            await owner.execute("DELETE FROM pg_statistic WHERE starelid >= 16384")
        await owner.execute("ANALYZE")
    finally:
        await owner.close()


async def _median(dsn: str, sql: str, runs: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.fetch(sql)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            await conn.fetch(sql)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        await conn.close()


async def main(devices: int, days: int, runs: int) -> dict[str, Any]:
    server = Settings().database.url.get_secret_value()  # type: ignore[call-arg]
    db = f"bench_views_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f"CREATE DATABASE {db}")
    await admin.close()
    dsn = server.rsplit("/", 1)[0] + "/" + db
    reader = f"{db}_rd"
    try:
        await prepare_database(Settings(database={"url": dsn}))  # type: ignore[arg-type]
        rows = await _fill(dsn, devices, days)
        owner = await asyncpg.connect(dsn)
        try:
            await owner.fetch("SELECT citykpi_grant_reader($1, 'demo', 'pw')", reader)
        finally:
            await owner.close()
        scheme, rest = dsn.split("://", 1)
        reader_dsn = f"{scheme}://{reader}:pw@{rest.split('@', 1)[1]}"
        figures = []
        now = datetime.now(UTC)
        since = {
            f"since_{k}": f"'{(now - d).isoformat()}'"
            for k, d in (("24h", timedelta(hours=24)), ("6h", timedelta(hours=6)), ("7d", timedelta(days=7)))
        }
        since["now"] = f"'{now.isoformat()}'"
        for statistics_on in ("all", "keys", "none"):
            await _set_statistics(dsn, statistics_on)
            print(f"planner statistics on the tables behind the reader functions: {statistics_on}")
            for name, owner_sql, reader_sql in QUERIES:
                as_owner = await _median(dsn, owner_sql.format(city=CITY_DEVICES, **since), runs)
                as_reader = await _median(reader_dsn, reader_sql.format(**since), runs)
                figures.append(
                    {
                        "statistics": statistics_on,
                        "query": name,
                        "owner_ms": round(as_owner * 1000, 2),
                        "reader_ms": round(as_reader * 1000, 2),
                    }
                )
                print(f"  {name:45s} owner {as_owner * 1000:8.2f} ms   reader {as_reader * 1000:8.2f} ms")
    finally:
        admin = await asyncpg.connect(server)
        await admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        for role in (reader, f"{db}_ingest", f"{db}_kpi", f"{db}_reader", f"{db}_definer"):
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "readings": rows,
        "devices_per_city": devices,
        "days": days,
        "runs": runs,
        "figures": figures,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    result = asyncio.run(main(args.devices, args.days, args.runs))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
