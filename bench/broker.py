"""Mosquitto's own durability window: `python -m bench.broker [--rate 2500] [--seconds 8]`.

Mosquitto persists by snapshot (`autosave_interval` seconds, or changes with
`autosave_on_changes`), so a broker crash loses what it acknowledged since the last snapshot. For
each setting: an offline persistent QoS 1 session (like citykpi's while it restarts) has messages
queued at `--rate` msg/s, every one acknowledged to the publisher; the broker is killed with
SIGKILL 0.4 s after the last acknowledgement, restarted, and the session drained. Reported: the
messages lost, and the broker's CPU per 10,000 messages (the cost of saving more often).
Figures go to bench/results/broker.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.stack import REPO, PrivateMosquitto
from core.config import Settings
from ingest.publishers import MqttPublisher
from ingest.simulator import SimMessage

RESULTS = Path(__file__).parent / "results" / "broker.json"
SETTINGS = [("30", "false"), ("5", "false"), ("1", "false"), ("1000", "true"), ("100", "true")]


def broker_pid(root: Path) -> int:
    """The pid of the Mosquitto that deploy/local/stack.sh started under `root`."""
    hashed = hashlib.md5(str(root).encode()).hexdigest()[:12]  # stack.sh's folder for private roots
    for d in (root, Path("/var/lib/citykpi-stack") / hashed):
        pidfile = d / "mosquitto" / "mosquitto.pid"
        if pidfile.exists() and pidfile.read_text().strip():
            return int(pidfile.read_text().split()[0])
    raise RuntimeError(f"no Mosquitto pid file for {root}")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain_session(port: int, client_id: str, subscribe: bool) -> set[bytes]:
    """Connect the persistent session, (subscribe,) collect what it is sent until 2 s of quiet."""
    got: set[bytes] = set()
    last = [time.monotonic()]
    ready = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        got.add(bytes(m.payload))
        last[0] = time.monotonic()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_message = on_message
    c.on_connect = lambda *_a: ready.set()
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    ready.wait(10)
    if subscribe:
        c.subscribe("durability/#", qos=1)
        time.sleep(0.5)
    while time.monotonic() - last[0] < 2:
        time.sleep(0.1)
    c.disconnect()
    c.loop_stop()
    return got


async def one_setting(interval: str, on_changes: str, rate: int, seconds: float) -> dict[str, object]:
    root = REPO / ".stack" / "test-brokers" / f"dur-{uuid.uuid4().hex[:8]}"
    broker = PrivateMosquitto(root)
    broker.env |= {
        "CITYKPI_STACK_MQTT_AUTOSAVE_INTERVAL": interval,
        "CITYKPI_STACK_MQTT_AUTOSAVE_ON_CHANGES": on_changes,
    }
    broker.up()
    sub = f"dur-sub-{uuid.uuid4().hex[:6]}"
    try:
        await asyncio.to_thread(drain_session, broker.port, sub, True)  # the session, then offline
        pid = broker_pid(root)
        pub = MqttPublisher(Settings(mqtt={"port": broker.port}).mqtt, client_id=f"dur-pub-{sub}")  # type: ignore[call-arg]
        await pub.start()
        n, sent, start, cpu0 = int(rate * seconds), 0, time.perf_counter(), cpu_s(pid)
        while sent < n:
            due = min(n, int((time.perf_counter() - start) * rate)) - sent
            if due > 0:
                await pub.publish(SimMessage("durability/x", b"%d" % (sent + k)) for k in range(due))
                sent += due
            await asyncio.sleep(0.005)
        await pub.stop()  # every message acknowledged by the broker
        cpu = cpu_s(pid) - cpu0
        await asyncio.sleep(0.4)
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        broker.up()
        got = await asyncio.to_thread(drain_session, broker.port, sub, False)
    finally:
        broker.down()
    return {
        "autosave_interval": int(interval),
        "autosave_on_changes": on_changes == "true",
        "acknowledged": n,
        "lost_on_kill_9": n - len(got),
        "broker_cpu_s_per_10k_messages": round(cpu / n * 10_000, 3),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=int, default=2500)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    rows = []
    for interval, on_changes in SETTINGS:
        rows.append(await one_setting(interval, on_changes, args.rate, args.seconds))
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "rate_msg_per_s": args.rate,
        "seconds": args.seconds,
        "kill_after_last_ack_s": 0.4,
        "settings": rows,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
