"""What the indicator state costs the writer: `python -m bench.writer_rollups [--batches 40]`.

Batches of 1,000 readings (200 devices: PM2.5, NO2, LAeq, a water and an electricity meter each,
one new timestamp per batch) go through `TimescaleWriter.write` on a fresh database, once with
everything the writer keeps for the KPIs (1m/15m/1h/1d rollups, meter steps, late-day marks) and
once without the 15-minute rollups and the meter steps (the rest unchanged). Medians of the write
and of its rollup share, per batch. Figures go to bench/results/writer_rollups.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.stack import TSDB_URL, drop_database, migrated_database
from processors import rollups
from processors.writer import TimescaleWriter, WriteBatch

RESULTS = Path(__file__).parent / "results" / "writer_rollups.json"
AVERAGED = {"pm25": 10.0, "no2": 30.0, "laeq": 60.0}
METERS = ("water_volume_total", "energy_total")


def batches(n: int, devices: int = 200) -> list[WriteBatch]:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    out = []
    for b in range(n):
        wb = WriteBatch(source="bench")
        t = t0 + timedelta(seconds=10 * b)
        for d in range(devices):
            for metric, level in AVERAGED.items():
                wb.add("demo", f"{metric}-{d}", metric, t, level + d % 7)
            for metric in METERS:
                wb.add("demo", f"{metric}-{d}", metric, t, 100.0 + d + 0.01 * b)
        out.append(wb)
    return out


async def timed(n: int, indicator_state: bool) -> dict[str, float]:
    dsn = await migrated_database(TSDB_URL)
    tables = dict(rollups.ROLLUP_TABLES)
    try:
        if not indicator_state:
            del rollups.ROLLUP_TABLES["rollup_15m"]
        work = batches(n + 1)
        writes, rollup_shares = [], []
        async with TimescaleWriter(dsn) as w:
            await w.write(work[0])  # registers the devices
            if not indicator_state:
                w._cumulative_ids = frozenset()  # no meter steps
            for b in work[1:]:
                r = await w.write(b)
                writes.append(r.seconds)
                rollup_shares.append(r.rollup_seconds)
        return {"write_s": statistics.median(writes), "rollups_s": statistics.median(rollup_shares)}
    finally:
        rollups.ROLLUP_TABLES.clear()
        rollups.ROLLUP_TABLES.update(tables)
        await drop_database(TSDB_URL, dsn)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {
        "without_15m_rollups_and_meter_steps": [],
        "with_indicator_state": [],
    }
    for _ in range(2):  # interleaved: the machine is shared and noisy
        runs["without_15m_rollups_and_meter_steps"].append(await timed(args.batches, False))
        runs["with_indicator_state"].append(await timed(args.batches, True))
    result: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "readings_per_batch": 1000,
        "batches": args.batches,
        "median_per_batch": {
            k: {m: statistics.median(r[m] for r in v) for m in ("write_s", "rollups_s")}
            for k, v in runs.items()
        },
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
