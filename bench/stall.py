"""Memory under a database stall: `python -m bench.stall [--rate 2500] [--stall-seconds 120]`.

`citykpi run` (MQTT 3.1.1, the local Mosquitto with `max_inflight_messages 0`, which pushes its
whole backlog at a client) receives SenML packs at `--rate` msg/s while another connection holds
`LOCK TABLE readings` for `--stall-seconds`. The service stops reading at `mqtt.max_inflight` held
messages, so the backlog stays in the broker: its RSS is sampled every 2 s against the idle RSS.
After the lock is released every message must be stored once. Figures go to bench/results/stall.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
import uuid
from pathlib import Path

import asyncpg

from bench.ingest import _readings_or_none, end_service, publish_paced, rss_mib, service_process, wait_rows
from bench.stack import TSDB_URL, count_readings, migrated_database
from core.config import Settings
from ingest.publishers import MqttPublisher

RESULTS = Path(__file__).parent / "results" / "stall.json"


async def stall(rate: int, stall_s: float, warm_s: float) -> dict[str, object]:
    dsn = await migrated_database(TSDB_URL)
    client_id = f"stall-{uuid.uuid4().hex[:6]}"
    proc, service_log = service_process(dsn, client_id, CITYKPI_MQTT__PROTOCOL="3.1.1")
    lock = await asyncpg.connect(dsn)
    try:
        while await _readings_or_none(dsn) is None:
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)
        pub = MqttPublisher(Settings().mqtt, client_id=f"stall-pub-{uuid.uuid4().hex[:6]}")
        await pub.start()
        warm: list[float] = []
        sent = await publish_paced(pub, rate, warm_s, 0, lambda: warm.append(rss_mib(proc.pid)), 2)
        await wait_rows(dsn, sent, timeout=120)
        idle = rss_mib(proc.pid)
        tx = lock.transaction()
        await tx.start()
        await lock.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
        stalled: list[float] = []
        sent = await publish_paced(pub, rate, stall_s, sent, lambda: stalled.append(rss_mib(proc.pid)), 2)
        await tx.rollback()
        released = time.perf_counter()
        await pub.stop()
        await wait_rows(dsn, sent, timeout=600)
        caught_up_s = time.perf_counter() - released
        stored = await count_readings(dsn)
    finally:
        await lock.close()
        await end_service(proc, service_log, dsn, client_id)
    return {
        "rate_msg_per_s": rate,
        "stall_seconds": stall_s,
        "protocol": "3.1.1",
        "broker": "Mosquitto, max_inflight_messages 0 (deploy/local/stack.sh)",
        "max_inflight": Settings().mqtt.max_inflight,
        "messages_sent": sent,
        "readings_stored": stored,
        "lost": sent - stored,
        "idle_rss_mib": round(idle, 1),
        "max_rss_during_stall_mib": round(max(stalled), 1),
        "rss_growth_during_stall_mib": round(max(stalled) - idle, 1),
        "rss_samples_during_stall_mib": [round(x, 1) for x in stalled],
        "caught_up_after_release_s": round(caught_up_s, 1),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=int, default=2500)
    ap.add_argument("--stall-seconds", type=float, default=120.0)
    ap.add_argument("--warm-seconds", type=float, default=20.0)
    args = ap.parse_args()
    result = await stall(args.rate, args.stall_seconds, args.warm_seconds)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
