"""Poison messages (text PostgreSQL cannot store) among valid ones, over MQTT and Kafka.

Each kind that once stopped ingestion for good: a NUL or a lone surrogate in a SenML `bn`, an NGSI
entity id (v2 and LD), a TTN `device_id`, a flat-JSON city. Valid neighbours are stored, every
poison message becomes a `bad_text` dead letter, the service stays healthy, and a restart with the
poison still queued for it does not crash-loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import asyncpg
import pytest

from core.config import KafkaSettings, Settings
from ingest.publishers import KafkaPublisher
from ingest.service import Service
from ingest.simulator import SimMessage
from tests.conftest import KAFKA_BOOTSTRAP, PrivateMosquitto
from tests.integration.test_kafka_ingest import new_topic
from tests.integration.test_mqtt_ingest import publish, senml_messages, settings_for, wait_for_count

pytestmark = pytest.mark.integration

FORMATS = ("senml", "ngsi-v2", "ngsi-ld", "ttn", "json")
FLAT_JSON_ROUTE = {"filter": "flat/+", "format": "json", "device_level": 2, "field_map": {"city": "city"}}


def poison_documents(bad: str) -> dict[str, object]:
    """One document per format, its device id (its city for flat JSON) holding `bad`."""
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    return {
        "senml": [{"bn": f"air{bad}:", "n": "pm25", "u": "ug/m3", "v": 5.0, "bt": time.time()}],
        "ngsi-v2": {
            "id": f"poison{bad}",
            "type": "AirQualityObserved",
            "dateObserved": {"value": now},
            "temperature": {"value": 12.2},
        },
        "ngsi-ld": {
            "id": f"urn:ngsi-ld:AirQualityObserved:p{bad}",
            "type": "AirQualityObserved",
            "dateObserved": {"type": "Property", "value": {"@type": "DateTime", "@value": now}},
            "temperature": {"type": "Property", "value": 12.2},
        },
        "ttn": {
            "end_device_ids": {"device_id": f"t{bad}"},
            "received_at": now,
            "uplink_message": {"decoded_payload": {"temperature": 12.5}},
        },
        "json": {"device_id": "f1", "city": f"de{bad}mo", "time": now, "temperature": 12.5},
    }


MQTT_TOPICS = {
    "ngsi-v2": "city/demo/ngsi-v2/x",
    "ngsi-ld": "city/demo/ngsi-ld/x",
    "ttn": "v3/app/devices/ttn-dev/up",
    "json": "flat/f1",
}


def poison(bad: str, mqtt: bool) -> list[SimMessage]:
    """Over MQTT the SenML route takes the device from the topic, so a bad `bn` goes by Kafka only;
    over Kafka the publisher picks the topic by the format in the message's third topic level."""
    docs = poison_documents(bad)
    if mqtt:
        return [SimMessage(t, json.dumps(docs[f]).encode()) for f, t in MQTT_TOPICS.items()]
    return [SimMessage(f"city/demo/{f}/x", json.dumps(docs[f]).encode()) for f in FORMATS]


async def dead_letter_reasons(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["reason"] for r in await conn.fetch("SELECT reason FROM dead_letters")]
    finally:
        await conn.close()


async def wait_for_dead_letters(dsn: str, n: int) -> None:
    for _ in range(50):
        if len(await dead_letter_reasons(dsn)) >= n:
            return
        await asyncio.sleep(0.1)


async def assert_healthy(service: Service) -> None:
    assert all(not t.done() for t in service.pipeline._tasks), "a pipeline task died"
    assert service.ready()


async def poison_among_valid_then_restart(
    tsdb: str, port: int, client_id: str, bad: list[SimMessage]
) -> tuple[list[str], list[str]]:
    """Publish `bad` between valid SenML over MQTT, then again into the persistent session while the
    service is down, and restart it: valid readings stored, the service healthy and no crash loop
    each time. Returns the dead-letter reasons after the first run and after the restart."""
    routes = [*Settings().mqtt.model_dump()["routes"], FLAT_JSON_ROUTE]
    settings = settings_for(tsdb, port, client_id=client_id, routes=routes)
    service = Service(settings)
    await service.start()
    try:
        await publish(port, senml_messages(100) + bad + senml_messages(100, offset=100))
        assert await wait_for_count(tsdb, 200) == 200
        await wait_for_dead_letters(tsdb, len(bad))
        await assert_healthy(service)
    finally:
        await service.stop()
    first = await dead_letter_reasons(tsdb)

    # the same poison queued in the persistent session while the service is down: no crash loop
    await publish(port, bad + senml_messages(100, offset=200))
    again = Service(settings)
    await again.start()
    try:
        assert await wait_for_count(tsdb, 300) == 300
        await asyncio.sleep(0.5)
        await assert_healthy(again)
        await publish(port, senml_messages(100, offset=300))
        assert await wait_for_count(tsdb, 400) == 400
    finally:
        await again.stop()
    return first, await dead_letter_reasons(tsdb)


async def test_poison_over_mqtt_is_dead_lettered_and_valid_neighbours_stored(
    tsdb: str, mosquitto: PrivateMosquitto
) -> None:
    bad = poison("\x00", mqtt=True) + poison("\ud800", mqtt=True)
    first, after_restart = await poison_among_valid_then_restart(tsdb, mosquitto.port, "citykpi-poison", bad)
    assert first == ["bad_text"] * len(bad)
    assert after_restart == ["bad_text"] * (2 * len(bad))


async def test_poison_over_kafka_is_dead_lettered_and_valid_neighbours_stored(tsdb: str) -> None:
    topics = {f: await new_topic(partitions=1) for f in FORMATS}
    routes = [{"filter": t, "format": f, "city": "demo"} for f, t in topics.items()]
    routes[-1]["field_map"] = {"city": "city"}
    routes[-1].pop("city")
    settings = Settings(  # type: ignore[call-arg]
        database={"url": tsdb},
        mqtt={"enabled": False},
        http={"enabled": False},
        kafka={"bootstrap_servers": KAFKA_BOOTSTRAP, "group_id": "g-" + topics["senml"], "topics": routes},
        writer={"batch_max_delay_s": 0.05},
    )
    bad = poison("\x00", mqtt=False) + poison("\ud800", mqtt=False)
    pub = KafkaPublisher(KafkaSettings(bootstrap_servers=KAFKA_BOOTSTRAP), topics)
    await pub.start()
    try:
        await pub.publish(senml_messages(100) + bad + senml_messages(100, offset=100))
        service = Service(settings)
        await service.start()
        try:
            assert await wait_for_count(tsdb, 200) == 200
            await wait_for_dead_letters(tsdb, len(bad))
            await assert_healthy(service)
        finally:
            await service.stop()
        assert await dead_letter_reasons(tsdb) == ["bad_text"] * len(bad)
        await pub.publish(bad + senml_messages(100, offset=200))
    finally:
        await pub.stop()
    again = Service(settings)  # same group: resumes after the committed poison
    await again.start()
    try:
        assert await wait_for_count(tsdb, 300) == 300
        await asyncio.sleep(0.5)
        await assert_healthy(again)
    finally:
        await again.stop()
    assert await dead_letter_reasons(tsdb) == ["bad_text"] * (2 * len(bad))


async def test_a_dead_letter_topic_that_refuses_records_does_not_stop_ingestion(tsdb: str) -> None:
    topic = await new_topic(partitions=1)
    settings = Settings(  # type: ignore[call-arg]
        database={"url": tsdb},
        mqtt={"enabled": False},
        http={"enabled": False},
        kafka={
            "bootstrap_servers": KAFKA_BOOTSTRAP,
            "group_id": "g-" + topic,
            "topics": [{"filter": topic, "format": "senml", "city": "demo"}],
            "dead_letter_topic": "not a valid topic name!",
        },
        writer={"batch_max_delay_s": 0.05},
    )
    pub = KafkaPublisher(KafkaSettings(bootstrap_servers=KAFKA_BOOTSTRAP), {"senml": topic})
    await pub.start()
    service = Service(settings)
    await service.start()
    try:
        await pub.publish([SimMessage("city/demo/senml/x", b"{not json"), *senml_messages(50)])
        assert await wait_for_count(tsdb, 50) == 50
        await pub.publish([SimMessage("city/demo/senml/x", b"{not json"), *senml_messages(50, offset=50)])
        assert await wait_for_count(tsdb, 100) == 100
        await assert_healthy(service)
    finally:
        await service.stop()
        await pub.stop()
    assert await dead_letter_reasons(tsdb) == ["bad_json", "bad_json"]


async def test_a_row_that_keeps_failing_inside_the_server_is_dead_lettered_with_its_message(
    tsdb: str, mosquitto: PrivateMosquitto
) -> None:
    """An internal error (XX000) on one row, on every attempt: after `writer.max_attempts` the batch
    is bisected to that row, which becomes a replayable dead letter; its neighbours are stored."""
    conn = await asyncpg.connect(tsdb)
    try:
        await conn.execute("""
            CREATE FUNCTION cursed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.device_key = (SELECT device_key FROM devices WHERE device_id = 'air-07') THEN
                RAISE EXCEPTION 'simulated internal error' USING ERRCODE = 'XX000';
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER cursed BEFORE INSERT ON readings FOR EACH ROW EXECUTE FUNCTION cursed();""")
    finally:
        await conn.close()
    settings = settings_for(tsdb, mosquitto.port)
    settings.writer.max_attempts, settings.writer.retry_max_backoff_s = 2, 0.2
    service = Service(settings)
    await service.start()
    try:
        await publish(mosquitto.port, senml_messages(100))  # 20 devices: air-07 sends 5 of them
        assert await wait_for_count(tsdb, 95) == 95
        await wait_for_dead_letters(tsdb, 5)
        await assert_healthy(service)
    finally:
        await service.stop()
    conn = await asyncpg.connect(tsdb)
    try:
        letters = await conn.fetch("SELECT reason, device_id, topic, payload FROM dead_letters")
    finally:
        await conn.close()
    assert len(letters) == 5
    assert {(r["reason"], r["device_id"], r["topic"]) for r in letters} == {
        ("db_rejected:XX000", "air-07", "city/demo/senml/air-07")
    }
    assert all(r["payload"] and b"air-07" in r["payload"] for r in letters)  # the raw message, replayable
