"""MQTT -> citykpi -> TimescaleDB on real servers: exactly once through crashes and restarts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import asyncpg
import pytest

from bench.stack import count_readings
from core import telemetry
from core.config import Settings
from ingest.publishers import MqttPublisher
from ingest.service import Service
from ingest.simulator import SimMessage
from tests.conftest import REPO, PrivateMosquitto, free_port

pytestmark = pytest.mark.integration
# a day ago, on the hour: inside every retention window (the service drops 1-minute rollups after 90 days)
T_START = int(time.time()) // 3600 * 3600 - 86400


def settings_for(dsn: str, port: int, client_id: str = "citykpi-test", **mqtt: object) -> Settings:
    return Settings(  # type: ignore[call-arg]
        database={"url": dsn},
        kafka={"enabled": False},
        http={"enabled": False},
        mqtt={"port": port, "client_id": client_id, **mqtt},
        writer={"batch_max_delay_s": 0.05},
    )


def senml_messages(n: int, offset: int = 0, per_pack: int = 1) -> list[SimMessage]:
    """n packs from 20 devices, each reading unique (device, metric, time)."""
    out = []
    for i in range(offset, offset + n):
        device = f"air-{i % 20:02d}"
        pack = [{"bn": f"{device}:", "bt": T_START + i, "n": "pm25", "u": "ug/m3", "v": (i % 97) + 0.5}]
        pack += [{"n": "pm10", "t": k, "v": float(k)} for k in range(per_pack - 1)]
        out.append(SimMessage(f"city/demo/senml/{device}", json.dumps(pack).encode()))
    return out


async def wait_for_count(dsn: str, expected: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        n = await count_readings(dsn)
        if n >= expected:
            await asyncio.sleep(0.5)  # anything extra (a duplicate) would show up now
            return await count_readings(dsn)
        await asyncio.sleep(0.2)
    return n


async def publish(port: int, messages: list[SimMessage]) -> None:
    pub = MqttPublisher(Settings(mqtt={"port": port}).mqtt, client_id=f"pub-{os.getpid()}-{time.time_ns()}")  # type: ignore[call-arg]
    await pub.start()
    await pub.publish(messages)
    await pub.stop()


async def rollup_mismatches(dsn: str) -> list[tuple[object, ...]]:
    """Minute rollups that differ from a recomputation from the raw readings (empty when exact)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("""
            WITH raw AS (
              SELECT date_bin('1 minute', time, '2000-01-01') AS bucket, device_key, metric_id,
                     count(*) AS n, round(sum(value)::numeric, 6) AS sum
              FROM readings GROUP BY 1, 2, 3),
            rolled AS (SELECT bucket, device_key, metric_id, n, round(sum::numeric, 6) AS sum FROM rollup_1m)
            (SELECT 'raw' AS side, * FROM (TABLE raw EXCEPT TABLE rolled) a)
            UNION ALL (SELECT 'rollup', * FROM (TABLE rolled EXCEPT TABLE raw) b) LIMIT 10""")
        return [tuple(r) for r in rows]
    finally:
        await conn.close()


@pytest.mark.parametrize("network_process", [True, False], ids=["network-process", "network-thread"])
async def test_senml_packs_land_once_with_rollups(
    tsdb: str, mosquitto: PrivateMosquitto, network_process: bool
) -> None:
    """Both homes of paho's network loop (`mqtt.network_process`); all held messages acked at the end."""
    service = Service(settings_for(tsdb, mosquitto.port, network_process=network_process))
    await service.start()
    source = service.sources[0]
    try:
        await publish(mosquitto.port, senml_messages(500, per_pack=4))
        assert await wait_for_count(tsdb, 2000) == 2000
        assert source.alive and (source.network_pid is not None) == network_process  # type: ignore[attr-defined]
    finally:
        await service.stop()
    assert source.held_messages == 0 and not source.alive  # type: ignore[attr-defined]
    assert await rollup_mismatches(tsdb) == []


async def test_bad_payloads_are_dead_lettered_and_the_service_keeps_going(
    tsdb: str, mosquitto: PrivateMosquitto
) -> None:
    bad = [
        SimMessage("city/demo/senml/x", b"{not json"),
        SimMessage(
            "city/demo/senml/x",
            json.dumps([{"bn": "x:", "n": "pm25", "v": 5, "bt": T_START + 10**9}]).encode(),
        ),
        SimMessage(
            "city/demo/senml/x", json.dumps([{"bn": "x:", "n": "pm25", "v": 5, "bt": 300_000_000}]).encode()
        ),
        SimMessage(
            "city/demo/senml/x",
            json.dumps([{"bn": "x:", "n": "pm25", "u": "dB", "v": 5, "bt": T_START}]).encode(),
        ),
        SimMessage("city/demo/senml/x", b'[{"bn": "x:", "n": "pm25", "v": NaN, "bt": %d}]' % T_START),
        SimMessage("city/demo/senml/x", b"[" + b'{"n":"pm25","v":1},' * 30000 + b"{}]"),
    ]
    service = Service(settings_for(tsdb, mosquitto.port))
    await service.start()
    try:
        await publish(mosquitto.port, bad + senml_messages(50))
        assert await wait_for_count(tsdb, 50) == 50
        await asyncio.sleep(0.5)
    finally:
        await service.stop()
    conn = await asyncpg.connect(tsdb)
    try:
        reasons = {r["reason"] for r in await conn.fetch("SELECT reason FROM dead_letters")}
        payload_sizes = await conn.fetch("SELECT payload_size, length(payload) AS kept FROM dead_letters")
    finally:
        await conn.close()
    assert {"time_in_future", "time_too_old", "wrong_unit", "payload_too_large"} <= reasons
    assert len(reasons) >= 5, reasons  # malformed JSON and NaN have reasons of their own
    cap = Settings().validation.dead_letter_payload_bytes
    assert all((r["kept"] or 0) <= cap for r in payload_sizes)
    assert any(r["payload_size"] > cap and r["kept"] == cap for r in payload_sizes)  # cut, and it says so


def service_process(
    dsn: str, port: int, log: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`citykpi run` in a process of its own, logging to `log`."""
    env = {
        **os.environ,
        "CITYKPI_DATABASE__URL": dsn,
        "CITYKPI_MQTT__PORT": str(port),
        "CITYKPI_KAFKA__ENABLED": "false",
        "CITYKPI_HTTP__ENABLED": "false",
        "CITYKPI_MQTT__CLIENT_ID": "citykpi-crashy",
        "CITYKPI_WRITER__BATCH_MAX_DELAY_S": "0.05",
        **(extra_env or {}),
    }
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "citykpi"), "run", "--no-progress"],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def held_messages(http_port: int) -> float:
    """The service's citykpi_held_messages{source="mqtt"} (0 until its endpoint answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    found = re.search(r'^citykpi_held_messages\{source="mqtt"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
async def test_kill_9_mid_stream_then_restart_stores_every_reading_once(
    tsdb: str, mosquitto: PrivateMosquitto, tmp_path: Path
) -> None:
    """1,500 messages committed, 1,500 received and held behind a locked table when the service is
    killed, 3,000 queued by the broker while it is down: after the restart each is stored once."""
    log = tmp_path / "service.log"
    http_port = free_port()
    http = {"CITYKPI_HTTP__ENABLED": "true", "CITYKPI_HTTP__PORT": str(http_port)}
    proc = service_process(tsdb, mosquitto.port, log, http)
    lock = await asyncpg.connect(tsdb)
    try:
        for _ in range(100):  # until the persistent session exists
            if "MQTT connected" in log.read_text(errors="replace"):
                break
            await asyncio.sleep(0.2)
        messages = senml_messages(6000)
        await publish(mosquitto.port, messages[:1500])
        assert await wait_for_count(tsdb, 1500) == 1500
        tx = lock.transaction()
        await tx.start()
        await lock.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")  # no write commits now
        await publish(mosquitto.port, messages[1500:3000])
        for _ in range(150):
            if held_messages(http_port) >= 1500:
                break
            await asyncio.sleep(0.1)
        assert held_messages(http_port) >= 1500, log.read_text()[-3000:]  # received, unacknowledged
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stored_at_crash = await lock.fetchval("SELECT count(*) FROM readings")
        await tx.rollback()
        assert stored_at_crash == 1500
        await publish(mosquitto.port, messages[3000:])  # queued by the broker for the offline session
        proc = service_process(tsdb, mosquitto.port, log)
        assert await wait_for_count(tsdb, 6000, timeout=90) == 6000, log.read_text()[-3000:]
    finally:
        await lock.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert await rollup_mismatches(tsdb) == []


@pytest.mark.slow
async def test_broker_restart_with_the_default_configuration_loses_no_acknowledged_message(
    tsdb: str, mosquitto: PrivateMosquitto
) -> None:
    """Publishers resume before the service reconnects: the restored session queues for it. The
    service reconnects within the first jittered retries after the broker is back."""
    service = Service(settings_for(tsdb, mosquitto.port))
    await service.start()
    source = service.sources[0]
    reconnects = telemetry.RECONNECTS.labels("mqtt")._value.get()
    try:
        await publish(mosquitto.port, senml_messages(1000))
        mosquitto.down()
        mosquitto.up()
        back = time.monotonic()

        async def reconnected() -> float:
            while not source.connected:
                await asyncio.sleep(0.01)
            return time.monotonic() - back

        watch = asyncio.create_task(reconnected())
        await publish(mosquitto.port, senml_messages(1000, offset=1000))  # acknowledged by the broker
        assert await wait_for_count(tsdb, 2000) == 2000
        assert await watch < 2.0
        assert telemetry.RECONNECTS.labels("mqtt")._value.get() == reconnects + 1
    finally:
        await service.stop()


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_two_processes_on_one_shared_subscription_store_each_reading_once(
    tsdb: str, mosquitto: PrivateMosquitto, protocol: str
) -> None:
    shared = {"protocol": protocol, "shared_group": "citykpi"}
    a = Service(settings_for(tsdb, mosquitto.port, client_id="citykpi-a", **shared))
    b = Service(settings_for(tsdb, mosquitto.port, client_id="citykpi-b", **shared))
    await a.start()
    await b.start()
    try:
        await asyncio.sleep(1)
        await publish(mosquitto.port, senml_messages(4000))
        assert await wait_for_count(tsdb, 4000) == 4000
    finally:
        await a.stop()
        await b.stop()
    assert a.pipeline.stats.stored > 0 and b.pipeline.stats.stored > 0
    assert a.pipeline.stats.stored + b.pipeline.stats.stored == 4000


def _stack(*args: str) -> None:
    stack = REPO / "deploy" / "local" / "stack.sh"
    subprocess.run(["bash", str(stack), *args], check=True, capture_output=True)


@pytest.mark.slow
async def test_database_restart_mid_stream_waits_retries_and_loses_nothing(
    tsdb: str, mosquitto: PrivateMosquitto
) -> None:
    settings = settings_for(tsdb, mosquitto.port)
    settings.writer.retry_max_backoff_s = 1.0
    service = Service(settings)
    await service.start()
    try:
        await publish(mosquitto.port, senml_messages(1000))
        assert await wait_for_count(tsdb, 1000) == 1000
        _stack("down", "tsdb")
        try:
            await publish(mosquitto.port, senml_messages(1000, offset=1000))
            await asyncio.sleep(2)  # the writer meets the dead server and keeps the batch
        finally:
            _stack("up", "tsdb")
        assert await wait_for_count(tsdb, 2000) == 2000
    finally:
        await service.stop()
    assert await rollup_mismatches(tsdb) == []
