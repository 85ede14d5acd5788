"""`make demo`'s steps on a private database and broker: how soon the first alert is stored, and
whether the run prints an ERROR line. The shared stack's broker and demo are left alone.

    .venv/bin/python -m bench.demo_first_alert [--seconds 180]

A fresh TimescaleDB database and a Mosquitto of its own (deploy/local/stack.sh, as the tests'
brokers); then, as `make demo`: `citykpi migrate`, `registry import`, `alerts import` of the shipped
rules, `citykpi run --with-simulator` with the demo's Sparkplug B meters (Kafka off: the simulator
publishes over MQTT, and a private run must not consume the shared broker's topics). The database
is polled every 2 s. Figures: seconds from the service's start to the first stored alert event and
its rule, the events stored, the demo live table's alert rows, the ERROR lines. Writes
bench/results/demo_first_alert.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.stack import REPO, TSDB_URL, PrivateMosquitto, create_database, drop_database, free_port
from core.config import Settings
from kpi_rollups.live import latest_summary

RESULTS = Path(__file__).resolve().parent / "results" / "demo_first_alert.json"
CITYKPI = [str(Path(sys.executable).parent / "citykpi")]


async def first_alert(dsn: str, started: float, seconds: float) -> tuple[float | None, str | None]:
    while time.monotonic() - started < seconds:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow("SELECT rule_id FROM alerts ORDER BY recorded_at LIMIT 1")
        finally:
            await conn.close()
        if row:
            return time.monotonic() - started, row["rule_id"]
        await asyncio.sleep(2)
    return None, None


async def main(seconds: float) -> dict[str, object]:
    dsn = await create_database(TSDB_URL)
    broker = PrivateMosquitto(Path(tempfile.mkdtemp(prefix="demo-broker-")))
    broker.up()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CITYKPI_DATABASE__URL": dsn,
        "CITYKPI_MQTT__PORT": str(broker.port),
        "CITYKPI_KAFKA__ENABLED": "false",
        "CITYKPI_HTTP__PORT": str(free_port()),
    }
    log = Path(tempfile.mkdtemp(prefix="demo-log-")) / "demo.log"
    try:
        for step in (
            ["migrate"],
            ["registry", "import", "kpi_rollups/demo_registry.toml"],
            ["alerts", "import", "processors/default_alert_rules.toml"],
        ):
            subprocess.run([*CITYKPI, *step], env=env, cwd=REPO, check=True, capture_output=True)
        with log.open("w") as out:
            demo = subprocess.Popen(
                [*CITYKPI, "run", "--with-simulator"],
                env={**env, "CITYKPI_SIMULATOR__SPARKPLUG_KIND": "electricity"},
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            started = time.monotonic()
            try:
                after_s, rule = await first_alert(dsn, started, seconds)
                if after_s is not None:
                    await asyncio.sleep(max(0.0, 30 - (time.monotonic() - started - after_s)))
            finally:
                demo.terminate()
                demo.wait(60)
        conn = await asyncpg.connect(dsn)
        try:
            events = await conn.fetchval("SELECT count(*) FROM alerts")
        finally:
            await conn.close()
        live = await latest_summary(Settings(database={"url": dsn}))  # type: ignore[call-arg]
    finally:
        broker.down()
        await drop_database(TSDB_URL, dsn)
    errors = [line for line in log.read_text().splitlines() if "ERROR" in line]
    return {
        "first_alert_after_s": None if after_s is None else round(after_s, 1),
        "first_alert_rule": rule,
        "alert_events": events,
        "live_alert_rows": [list(r) for r in live if r[0].startswith("alert ")],
        "error_lines": errors,
        "exit_code": demo.returncode,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=180.0, help="give up waiting for an alert after this")
    result = asyncio.run(main(p.parse_args().seconds))
    print(json.dumps(result, indent=2))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
