"""Faults that used to grow memory or stall ingestion: a database outage and a stalled database."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from core import telemetry
from ingest.service import Service
from processors.writer import TimescaleWriter, WriteBatch
from tests.conftest import PrivateMosquitto, TcpProxy, free_port
from tests.integration.test_health import children, get, wait_for_status
from tests.integration.test_mqtt_ingest import (
    count_readings,
    publish,
    senml_messages,
    service_process,
    settings_for,
    wait_for_count,
)

pytestmark = pytest.mark.integration


def get_or_none(port: int, path: str) -> tuple[int, str] | None:
    """`get`, or None while nothing listens on the port."""
    try:
        return get(port, path)
    except (urllib.error.URLError, ConnectionError):
        return None


async def wait_for_log(log: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in (log.read_text(errors="replace") if log.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} not logged"
        await asyncio.sleep(0.1)


def one_reading(i: int) -> WriteBatch:
    b = WriteBatch(source="test")
    b.add("demo", "air-1", "pm25", datetime(2026, 3, 1, tzinfo=UTC) + timedelta(seconds=i), 5.0)
    return b


@pytest.mark.slow
async def test_writes_resume_within_a_second_of_the_database_returning(tsdb: str) -> None:
    """An 8 s outage grows the retry backoff past 1 s; the writer probes and resumes anyway."""
    parts = urlsplit(tsdb)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.up()
    failures = telemetry.WRITE_FAILURES.labels("connection", "retriable")
    before = failures._value.get()
    async with TimescaleWriter(proxy.url(tsdb), max_backoff_s=30, connect_timeout_s=2) as writer:
        await writer.write(one_reading(0))
        await proxy.down()
        pending = asyncio.create_task(writer.write(one_reading(1)))
        await asyncio.sleep(8)
        assert not pending.done()
        await proxy.up()
        back = time.monotonic()
        result = await asyncio.wait_for(pending, 10)
        resumed_after = time.monotonic() - back
    await proxy.down()
    assert result.stored == 1
    assert resumed_after < 1.0, f"writes resumed {resumed_after:.2f} s after the database returned"
    assert failures._value.get() > before  # the outage shows in /metrics


@pytest.mark.slow
async def test_a_stalled_database_keeps_the_mqtt_backlog_in_the_broker(
    tsdb: str, mosquitto: PrivateMosquitto
) -> None:
    """MQTT 3.1.1, Mosquitto `max_inflight_messages 0` (stack.sh): it pushes all it has. The service
    stops reading at `max_inflight` held messages; after the stall every message is stored once."""
    bound = 1000
    settings = settings_for(tsdb, mosquitto.port, max_inflight=bound, protocol="3.1.1")
    settings.writer.batch_max_rows = 500
    service = Service(settings)
    await service.start()
    source = service.sources[0]
    lock = await asyncpg.connect(tsdb)
    try:
        await publish(mosquitto.port, senml_messages(100))
        assert await wait_for_count(tsdb, 100) == 100
        tx = lock.transaction()
        await tx.start()
        await lock.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
        await publish(mosquitto.port, senml_messages(8000, offset=100))
        deadline = time.monotonic() + 20
        while source.held_messages < bound and time.monotonic() < deadline:  # type: ignore[attr-defined]
            await asyncio.sleep(0.05)
        peak = 0
        for _ in range(20):
            await asyncio.sleep(0.1)
            peak = max(peak, source.held_messages)  # type: ignore[attr-defined]
        assert bound <= peak <= bound + 1, peak  # reading stopped at the bound: the rest is in the broker
        await tx.rollback()
        assert await wait_for_count(tsdb, 8100) == 8100
    finally:
        await lock.close()
        await service.stop()
    assert source.held_messages == 0  # type: ignore[attr-defined]


def metric(body: str, name: str) -> float:
    """A metric's value in a /metrics page: its MQTT sample when labelled by source (0 when absent)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith((f"{name} ", f'{name}{{source="mqtt"}}'))
    )


@pytest.mark.slow
async def test_a_blocked_write_turns_readyz_then_healthz_red_and_shows_in_metrics(
    tsdb: str, mosquitto: PrivateMosquitto
) -> None:
    port = free_port()
    settings = settings_for(tsdb, mosquitto.port)
    settings.http.enabled, settings.http.port = True, port
    settings.writer.unready_after_s, settings.writer.stalled_after_s = 1.0, 6.0
    service = Service(settings)
    await service.start()
    lock = await asyncpg.connect(tsdb)
    try:
        assert (await asyncio.to_thread(get, port, "/readyz"))[0] == 200
        tx = lock.transaction()
        await tx.start()
        await lock.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
        await publish(mosquitto.port, senml_messages(300))
        await wait_for_status(port, "/readyz", 503, within=5)
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
        body = await wait_for_status(port, "/healthz", 503, within=10)
        assert "no commit for" in body
        page = (await asyncio.to_thread(get, port, "/metrics"))[1]
        assert metric(page, "citykpi_write_blocked_seconds") >= 5
        assert metric(page, "citykpi_held_messages") == 300
        assert metric(page, "citykpi_oldest_unacked_seconds") >= 5
        assert metric(page, "citykpi_queue_readings") == 300
        assert metric(page, "citykpi_source_connected") == 1
        await tx.rollback()
        assert await wait_for_count(tsdb, 300) == 300
        await asyncio.sleep(1.5)  # the monitor's next round
        assert (await asyncio.to_thread(get, port, "/readyz"))[0] == 200
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
        page = (await asyncio.to_thread(get, port, "/metrics"))[1]
        for name in ("citykpi_held_messages", "citykpi_queue_readings", "citykpi_write_blocked_seconds"):
            assert metric(page, name) == 0, name
    finally:
        await lock.close()
        await service.stop()


@pytest.mark.slow
async def test_sigterm_drain_stops_at_its_deadline_and_leaves_the_rest_for_redelivery(
    tsdb: str, mosquitto: PrivateMosquitto, tmp_path: Path
) -> None:
    log = tmp_path / "service.log"
    env = {"CITYKPI_SHUTDOWN_TIMEOUT_S": "3", "CITYKPI_HTTP__ENABLED": "true", "CITYKPI_HTTP__PORT": "0"}
    proc = service_process(tsdb, mosquitto.port, log, env)
    lock = await asyncpg.connect(tsdb)
    try:
        await wait_for_log(log, "MQTT connected")
        tx = lock.transaction()
        await tx.start()
        await lock.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
        await publish(mosquitto.port, senml_messages(500))
        await asyncio.sleep(1)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = await asyncio.to_thread(proc.wait, 30)
        took = time.monotonic() - sent
        await tx.rollback()
    finally:
        await lock.close()
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 0 and 3 <= took < 10, (code, took, text[-2000:])
    assert "draining: 500 messages held" in text and "drain deadline of 3 s passed" in text
    assert await count_readings(tsdb) == 0
    again = service_process(tsdb, mosquitto.port, log)  # the broker redelivers the unacknowledged
    try:
        assert await wait_for_count(tsdb, 500) == 500
    finally:
        again.send_signal(signal.SIGTERM)
        await asyncio.to_thread(again.wait, 30)


async def test_http_endpoints_answer_within_a_second_of_start_up(
    tsdb: str, mosquitto: PrivateMosquitto, tmp_path: Path
) -> None:
    """/healthz and /metrics answer while the database is reached and the kernels are compiled."""
    port = free_port()
    settings = settings_for(tsdb, mosquitto.port)
    settings.http.enabled, settings.http.port = True, port
    service = Service(settings)
    starting = asyncio.create_task(service.start())
    t0 = time.monotonic()
    while (await asyncio.to_thread(get_or_none, port, "/healthz")) is None:
        await asyncio.sleep(0.02)
    first = time.monotonic() - t0
    assert (await asyncio.to_thread(get, port, "/readyz"))[0] == 503 or starting.done()
    await starting
    await service.stop()
    assert first < 1.0, first


async def test_a_failed_start_undoes_what_it_started(tsdb: str, mosquitto: PrivateMosquitto) -> None:
    port = free_port()
    settings = settings_for(tsdb, mosquitto.port)
    settings.http.enabled, settings.http.port = True, port
    settings.kafka.enabled, settings.kafka.bootstrap_servers = True, f"127.0.0.1:{free_port()}"
    service = Service(settings)
    with pytest.raises(Exception):  # noqa: B017 - aiokafka's connection error
        await service.start()
    mqtt = service.sources[0]
    assert not mqtt.alive  # type: ignore[attr-defined]  # paho's network thread ended
    assert all(t.done() for t in service.pipeline.tasks)
    assert not any(w.connected for w in service.writers)
    assert get_or_none(port, "/healthz") is None  # the HTTP server is closed


@pytest.mark.slow
async def test_the_service_exits_1_when_its_mqtt_network_process_dies_and_a_restart_loses_nothing(
    tsdb: str, mosquitto: PrivateMosquitto, tmp_path: Path
) -> None:
    log = tmp_path / "service.log"
    proc = service_process(tsdb, mosquitto.port, log, {"CITYKPI_MQTT__NETWORK_PROCESS": "true"})
    try:
        await wait_for_log(log, "MQTT connected")
        await publish(mosquitto.port, senml_messages(300))
        assert await wait_for_count(tsdb, 300) == 300
        (network,) = [
            c for c in children(proc.pid) if b"ingest.mqtt.network" in Path(f"/proc/{c}/cmdline").read_bytes()
        ]
        os.kill(network, signal.SIGKILL)
        assert await asyncio.to_thread(proc.wait, 30) == 1
        assert "service failed: mqtt source: network process ended" in log.read_text()
        await publish(mosquitto.port, senml_messages(300, offset=300))  # queued for the session
        proc = service_process(tsdb, mosquitto.port, log)
        assert await wait_for_count(tsdb, 600) == 600
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
