"""The alert job on a real database: how long one evaluation of the shipped rules takes.

    .venv/bin/python -m bench.alerts [--devices 400] [--minutes 60] [--runs 3]

A fresh TimescaleDB database gets `--minutes` of readings every 10 s from `--devices` devices
(air, noise, traffic, weather and parking in turn, their rules' metrics), written by the real
writer; the shipped rules (processors/default_alert_rules.toml) are imported and evaluated over
the whole span, with the evaluator's state dropped before each run so every run does the full
work. Figures: median seconds per evaluation, readings evaluated per second, events stored.
Writes bench/results/alerts.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bench.stack import TSDB_URL, drop_database, migrated_database
from core.config import Settings
from processors.alert_rules import DEFAULT_RULES, import_rules
from processors.alerts import evaluate_alerts
from processors.writer import TimescaleWriter, WriteBatch

RESULTS = Path(__file__).resolve().parent / "results" / "alerts.json"
KINDS = (("air", "pm25", 15.0), ("noise", "laeq", 62.0), ("traffic", "vehicle_count", 20.0),
         ("weather", "temperature", 10.0), ("parking", "parking_occupied", 0.0))  # fmt: skip


async def fill(dsn: str, devices: int, minutes: int, end: datetime) -> int:
    rng = random.Random(1)
    n = 0
    async with TimescaleWriter(dsn) as writer:
        for step in range(minutes * 6):
            t = end - timedelta(seconds=10 * (minutes * 6 - step))
            batch = WriteBatch(source="bench")
            for d in range(devices):
                kind, metric, level = KINDS[d % len(KINDS)]
                if rng.random() < 0.002:  # now and then a reading missing
                    continue
                value = float(rng.random() < 0.5) if kind == "parking" else level + rng.gauss(0, level * 0.2)
                batch.add("demo", f"{kind}-{d:05d}", metric, t, value)
            n += len(batch)
            await writer.write(batch)
    return n


async def run(devices: int, minutes: int, runs: int) -> dict[str, object]:
    dsn = await migrated_database(TSDB_URL)
    try:
        end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
        readings = await fill(dsn, devices, minutes, end)
        await import_rules(dsn, DEFAULT_RULES)
        settings = Settings(alerts={"first_lookback_s": minutes * 60 + 600})  # type: ignore[call-arg]
        conn = await asyncpg.connect(dsn)
        times, events = [], 0
        try:
            for _ in range(runs + 1):  # the first run compiles nothing (warm kernels) but warms caches
                await conn.execute("DELETE FROM alert_cursors; DELETE FROM alert_open; DELETE FROM alerts")
                started = time.perf_counter()
                events = await evaluate_alerts(conn, settings)
                times.append(time.perf_counter() - started)
        finally:
            await conn.close()
        median = statistics.median(times[1:])
        return {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "devices": devices,
            "minutes": minutes,
            "readings": readings,
            "rules": 10,
            "evaluation_s_median": round(median, 3),
            "readings_evaluated_per_s": round(readings / median),
            "events_stored": events,
        }
    finally:
        await drop_database(TSDB_URL, dsn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=400)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    a = parser.parse_args()
    result = asyncio.run(run(a.devices, a.minutes, a.runs))
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
