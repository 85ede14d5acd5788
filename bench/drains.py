"""The reference consumers of bench/peers.py, each run as its own process so its peak RSS
is its own: `python -m bench.drains bare|network|naive PORT CLIENT_ID MESSAGES [DSN]` or
`python -m bench.drains kafka-bare BOOTSTRAP TOPIC MESSAGES`.

* bare: paho draining its persistent session's QoS 1 backlog and counting (the Python MQTT limit);
* naive: paho callback -> json.loads -> one INSERT per message (auto-ack, nothing batched);
* network: citykpi's MQTT network loop alone (paho with its lean receive path), acking each batch;
* kafka-bare: aiokafka fetching a topic from the start in a new group and counting (no decoding).

Prints one JSON line: messages, seconds from connect to the last message handled, CPU seconds and
seconds its threads waited, runnable, for a core (the machine is shared: a starved consumer is slow).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def runqueue_wait_s(pid: int | str = "self") -> float:
    """Seconds the process's threads spent runnable but waiting for a core (/proc schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError):  # the thread ended meanwhile
            continue
    return total / 1e9


def bare(port: int, client_id: str, n: int) -> tuple[float, float, float]:
    done = threading.Event()
    received = [0]

    def on_message(*_a: object) -> None:
        received[0] += 1
        if received[0] >= n:
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_message = on_message
    t0, cpu0, wait0 = time.perf_counter(), cpu_s(), runqueue_wait_s()
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(900)
    seconds, cpu, wait = time.perf_counter() - t0, cpu_s() - cpu0, runqueue_wait_s() - wait0
    c.loop_stop()
    c.disconnect()
    return seconds, cpu, wait


def naive(port: int, client_id: str, n: int, dsn: str) -> tuple[float, float, float]:
    import asyncio

    import asyncpg

    async def run() -> tuple[float, float, float]:
        conn = await asyncpg.connect(dsn)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.on_message = lambda _c, _u, m: loop.call_soon_threadsafe(queue.put_nowait, m.payload)
        t0, cpu0, wait0 = time.perf_counter(), cpu_s(), runqueue_wait_s()
        c.connect("127.0.0.1", port)
        c.loop_start()
        for _ in range(n):
            doc = json.loads(await queue.get())
            await conn.execute(
                "INSERT INTO naive VALUES (to_timestamp($1), $2, $3) ON CONFLICT DO NOTHING",
                float(doc["time"]),
                doc["device_id"],
                float(doc["pm25"]),
            )
        seconds, cpu, wait = time.perf_counter() - t0, cpu_s() - cpu0, runqueue_wait_s() - wait0
        c.loop_stop()
        c.disconnect()
        await conn.close()
        return seconds, cpu, wait

    return asyncio.run(run())


def network_loop(port: int, client_id: str, n: int) -> tuple[float, float, float]:
    """citykpi's MQTT network loop (ingest/mqtt/network.py) alone: batches acked as they arrive."""
    from multiprocessing import Pipe

    from ingest.mqtt.network import NetworkConfig, NetworkLoop

    config = NetworkConfig(
        host="127.0.0.1",
        port=port,
        client_id=client_id,
        protocol="3.1.1",
        clean_start=False,
        session_expiry_s=3600,
        qos=1,
        subscriptions=["city/+/json/+"],
        keepalive_s=30,
        reconnect_max_s=1.0,
        max_inflight=20000,
        max_held_bytes=64 << 20,
    )
    conn, loop_end = Pipe()
    loop = threading.Thread(target=NetworkLoop(config, loop_end).run)
    t0, cpu0, wait0 = time.perf_counter(), cpu_s(), runqueue_wait_s()
    loop.start()
    seen = 0
    while seen < n:
        item = conn.recv()
        if item[0] == "batch":
            seen += len(item[4])
            conn.send(("ack", item[1]))
    seconds, cpu, wait = time.perf_counter() - t0, cpu_s() - cpu0, runqueue_wait_s() - wait0
    conn.send(("close",))
    loop.join(10)
    return seconds, cpu, wait


def kafka_bare(bootstrap: str, topic: str, n: int) -> tuple[float, float, float]:
    import asyncio

    from aiokafka import AIOKafkaConsumer

    async def run() -> tuple[float, float, float]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=f"bare-{topic}", auto_offset_reset="earliest"
        )
        t0, cpu0, wait0 = time.perf_counter(), cpu_s(), runqueue_wait_s()
        await consumer.start()
        seen = 0
        while seen < n:
            for records in (await consumer.getmany(timeout_ms=500, max_records=10000)).values():
                seen += len(records)
        seconds, cpu, wait = time.perf_counter() - t0, cpu_s() - cpu0, runqueue_wait_s() - wait0
        await consumer.stop()
        return seconds, cpu, wait

    return asyncio.run(run())


if __name__ == "__main__":
    kind, where, client_id, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if kind == "bare":
        seconds, cpu, wait = bare(int(where), client_id, n)
    elif kind == "network":
        seconds, cpu, wait = network_loop(int(where), client_id, n)
    elif kind == "naive":
        seconds, cpu, wait = naive(int(where), client_id, n, sys.argv[5])
    else:
        seconds, cpu, wait = kafka_bare(where, client_id, n)
    print(json.dumps({"messages": n, "seconds": seconds, "cpu_s": cpu, "runqueue_wait_s": wait}), flush=True)
