"""The service's HTTP endpoints, as an operator's tooling sees them."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from ingest.service import Service
from tests.conftest import PrivateMosquitto, free_port
from tests.integration.test_mqtt_ingest import publish, senml_messages, settings_for, wait_for_count

pytestmark = pytest.mark.integration


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def wait_for_status(port: int, path: str, status: int, within: float) -> str:
    deadline = time.monotonic() + within
    while True:
        got, body = await asyncio.to_thread(get, port, path)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"{path} still {got}"
        await asyncio.sleep(0.1)


async def http_service(tsdb: str, mqtt_port: int, **mqtt: object) -> tuple[Service, int]:
    """A started service with its HTTP endpoints on a free port."""
    port = free_port()
    settings = settings_for(tsdb, mqtt_port, **mqtt)
    settings.http.enabled, settings.http.port = True, port
    service = Service(settings)
    await service.start()
    return service, port


async def test_healthz_readyz_and_metrics(tsdb: str, mosquitto: PrivateMosquitto) -> None:
    service, port = await http_service(tsdb, mosquitto.port)
    try:
        assert await asyncio.to_thread(get, port, "/healthz") == (200, "ok\n")
        assert (await asyncio.to_thread(get, port, "/readyz"))[0] == 200
        await publish(mosquitto.port, senml_messages(100))
        assert await wait_for_count(tsdb, 100) == 100
        status, body = await asyncio.to_thread(get, port, "/metrics")
        assert status == 200
        for name in (
            "citykpi_readings_stored_total",
            "citykpi_write_seconds_bucket",
            "citykpi_held_messages",
            "citykpi_oldest_unacked_seconds",
            "citykpi_source_connected",
            "citykpi_queue_readings",
            "citykpi_last_successful_write_timestamp_seconds",
            "citykpi_rejected_total",
            "citykpi_kafka_lag",
        ):
            assert name in body, name
        stored = [
            line
            for line in body.splitlines()
            if line.startswith('citykpi_readings_stored_total{source="mqtt"}')
        ]
        assert stored and float(stored[0].split()[-1]) >= 100
        mosquitto.down()  # no source connected: not ready, still alive
        await asyncio.sleep(1.5)
        assert (await asyncio.to_thread(get, port, "/readyz"))[0] == 503
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
        assert (await asyncio.to_thread(get, port, "/nope"))[0] == 404
    finally:
        mosquitto.up()
        await service.stop()


def children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


async def test_a_killed_mqtt_network_process_turns_healthz_red(
    tsdb: str, mosquitto: PrivateMosquitto
) -> None:
    """mqtt.network_process: paho's loop is a process of the service; its death fails the service."""
    service, port = await http_service(tsdb, mosquitto.port, network_process=True)
    try:
        source = service.sources[0]
        assert source.network_pid in children(os.getpid())  # type: ignore[attr-defined]
        await publish(mosquitto.port, senml_messages(100))
        assert await wait_for_count(tsdb, 100) == 100
        os.kill(source.network_pid, signal.SIGKILL)  # type: ignore[attr-defined]
        body = await wait_for_status(port, "/healthz", 503, within=5)
        assert "network process ended (exit code -9)" in body, body
        assert not source.connected and not source.alive  # type: ignore[attr-defined]
    finally:
        await service.stop()
