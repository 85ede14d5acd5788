"""The service's HTTP endpoints, as an operator's tooling sees them."""

from __future__ import annotations

import asyncio
import urllib.request

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


async def test_healthz_readyz_and_metrics(tsdb: str, mosquitto: PrivateMosquitto) -> None:
    port = free_port()
    settings = settings_for(tsdb, mosquitto.port)
    settings.http.enabled, settings.http.port = True, port
    service = Service(settings)
    await service.start()
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
