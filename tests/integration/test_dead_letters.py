"""Dead letters as an operator meets them: every one replayable, requeued once, with its original time."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from core.config import Settings
from ingest.deadletters import DeadLetterFilter, requeue_dead_letters
from ingest.pipeline import Delivery, Message, Pipeline
from ingest.routing import Router
from ingest.service import Service
from ingest.simulator import SimMessage
from processors.writer import TimescaleWriter
from tests.conftest import REPO, PrivateMosquitto
from tests.integration.test_cli import run
from tests.integration.test_mqtt_ingest import publish, settings_for

pytestmark = pytest.mark.integration

# Sensor.Community firmware posts carry no time: the receive time is the reading's time.
NAN_AND_GOOD = {
    "esp8266id": "4711",
    "sensordatavalues": [{"value_type": "SDS_P1", "value": "nan"}, {"value_type": "SDS_P2", "value": "4.0"}],
}
TWO_GOOD = {
    "esp8266id": "4711",
    "sensordatavalues": [{"value_type": "SDS_P1", "value": "12.5"}, {"value_type": "SDS_P2", "value": "7.5"}],
}


async def fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def readings(dsn: str) -> list[tuple[str, str, str, object, float]]:
    rows = await fetch(
        dsn,
        "SELECT d.city_id, d.device_id, m.name, r.time, r.value FROM readings r "
        "JOIN devices d USING (device_key) JOIN metrics m USING (metric_id) ORDER BY 1, 3",
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def ingest(dsn: str, port: int, messages: list[SimMessage]) -> None:
    """Run the service until every message is stored or dead-lettered."""
    service = Service(settings_for(dsn, port))
    await service.start()
    try:
        await publish(port, messages)
        for _ in range(100):
            if service.pipeline.stats.messages >= len(messages):
                break
            await asyncio.sleep(0.1)
    finally:
        await service.stop()


def cli(dsn: str, *args: str, config: Path | None = None) -> str:
    out = run(
        "deadletters",
        *args,
        *(["--config", str(config)] if config else []),
        env={"CITYKPI_DATABASE__URL": dsn, "COLUMNS": "80"},
    )
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


async def test_unknown_city_then_add_the_city_then_requeue_stores_each_reading_once_at_its_receive_time(
    tsdb: str, mosquitto: PrivateMosquitto, tmp_path: Path
) -> None:
    await ingest(
        tsdb,
        mosquitto.port,
        [
            SimMessage("city/atlantis/sensor-community/esp8266-4711", json.dumps(TWO_GOOD).encode()),
            SimMessage("city/demo/sensor-community/esp8266-4711", json.dumps(NAN_AND_GOOD).encode()),
        ],
    )
    dead = await fetch(
        tsdb, "SELECT id, reason, topic, city_id, source, received_at, message_id, payload FROM dead_letters"
    )
    by_reason = {r["reason"]: r for r in dead}
    assert sorted(r["reason"] for r in dead) == ["not_finite", "unknown_city", "unknown_city"]
    lost = [r for r in dead if r["reason"] == "unknown_city"]
    assert {r["topic"] for r in lost} == {"city/atlantis/sensor-community/esp8266-4711"}
    assert {r["city_id"] for r in lost} == {"atlantis"}
    assert len({r["message_id"] for r in lost}) == 1  # one message, its payload stored once
    assert [json.loads(r["payload"]) for r in lost if r["payload"] is not None] == [TWO_GOOD]
    received = lost[0]["received_at"]
    (demo_p2,) = await readings(tsdb)
    assert demo_p2[2:] == ("pm25", by_reason["not_finite"]["received_at"], 4.0)

    listing = cli(tsdb, "list")
    assert max(len(line) for line in listing.splitlines()) <= 80, listing
    assert "atlantis" in listing and "unknown_city" in listing and "…ommunity/esp8266-4711" in listing
    shown = cli(tsdb, "show", str(lost[-1]["id"]))  # the row without the payload shows its message's
    assert json.loads(shown.split(" bytes):\n", 1)[1]) == TWO_GOOD
    assert "topic: city/atlantis/sensor-community/esp8266-4711" in shown

    city_topic = cli(tsdb, "list", "--city", "demo", "--topic", "city/+/sensor-community/#")
    assert "not_finite" in city_topic and "unknown_city" not in city_topic
    assert "unknown_city" not in cli(tsdb, "list", "--topic", "city/atlantis/senml/+")
    assert "would requeue 0 messages" in cli(tsdb, "requeue", "--since", "2999-01-01", "--dry-run")
    by_id = cli(tsdb, "requeue", "--id", str(lost[0]["id"]), "--dry-run")  # brings its message's siblings
    assert "would requeue 1 messages (2 dead letters: unknown_city 2)" in by_id

    no_filter = run("deadletters", "requeue", env={"CITYKPI_DATABASE__URL": tsdb})
    assert no_filter.returncode == 2 and "--all" in no_filter.stderr

    config = tmp_path / "citykpi.toml"
    config.write_text(
        '[[cities]]\ncity_id = "demo"\nname = "Demo City"\ntimezone = "Europe/Paris"\n'
        '[[cities]]\ncity_id = "atlantis"\nname = "Atlantis"\ntimezone = "UTC"\n'
    )
    assert run("migrate", "--config", str(config), env={"CITYKPI_DATABASE__URL": tsdb}).returncode == 0

    dry = cli(tsdb, "requeue", "--reason", "unknown_city", "--dry-run", config=config)
    assert "would requeue 1 messages (2 dead letters: unknown_city 2)" in dry
    assert len(await readings(tsdb)) == 1

    done = cli(tsdb, "requeue", "--reason", "unknown_city", config=config)
    assert "2 readings stored, 0 already stored, 0 rejected again" in done
    stored = await readings(tsdb)
    assert [r for r in stored if r[0] == "atlantis"] == [
        ("atlantis", "esp8266-4711", "pm10", received, 12.5),
        ("atlantis", "esp8266-4711", "pm25", received, 7.5),
    ]

    for _ in range(2):  # the nan part fails again; its valid neighbour is never stored twice
        again = cli(tsdb, "requeue", "--all", config=config)
        assert (
            "requeued 1 messages (1 dead letters: not_finite 1): 0 readings stored, 1 already stored" in again
        )
    assert await readings(tsdb) == stored
    dead = await fetch(tsdb, "SELECT source, requeued_at, message_id, received_at FROM dead_letters")
    assert {r["source"] for r in dead} == {"mqtt"}  # no growing "requeue:" prefix
    waiting = [r for r in dead if r["requeued_at"] is None]
    assert len(waiting) == 1 and waiting[0]["message_id"] == by_reason["not_finite"]["message_id"]
    assert waiting[0]["received_at"] == by_reason["not_finite"]["received_at"]
    assert "0 messages" in cli(tsdb, "requeue", "--reason", "unknown_city", config=config)


async def through_pipeline(dsn: str, *messages: tuple[str, bytes], **overrides: object) -> Pipeline:
    """Decode, validate and write `(topic, payload)` messages as the MQTT source would."""
    settings = Settings(database={"url": dsn}, **overrides)  # type: ignore[arg-type]
    async with TimescaleWriter(dsn, unknown_device=settings.validation.unknown_device) as writer:
        pipeline = Pipeline(settings, writer)
        await pipeline.start()
        now = datetime.now(UTC)
        await pipeline.submit(
            Delivery("mqtt", Router(settings.mqtt.routes), [Message(p, t, now) for t, p in messages])
        )
        await pipeline.drain_and_stop()
    return pipeline


async def test_writer_made_dead_letters_keep_their_message(tsdb: str) -> None:
    first = json.dumps([{"bn": "air-1:", "bt": 1_760_000_000, "n": "pm25", "v": 5.0}]).encode()
    clash = json.dumps([{"bn": "air-1:", "bt": 1_760_000_000, "n": "pm25", "v": 6.0}]).encode()
    await through_pipeline(tsdb, ("city/demo/senml/air-1", first))
    unknown = first.replace(b"air-1", b"new-1")
    await through_pipeline(
        tsdb,
        ("city/demo/senml/air-1", clash),
        ("city/demo/senml/new-1", unknown),
        validation={"unknown_device": "reject"},
    )
    rows = await fetch(tsdb, "SELECT reason, topic, payload, message_id FROM dead_letters ORDER BY reason")
    assert [(r["reason"], r["topic"], bytes(r["payload"])) for r in rows] == [
        ("conflicting_duplicate", "city/demo/senml/air-1", clash),
        ("unknown_device", "city/demo/senml/new-1", unknown),
    ]
    assert None not in {r["message_id"] for r in rows}


GATEWAY_PACK = [
    {"bn": "urn:dev:mac:0024befffe804ff1:", "bt": 1_760_000_000, "n": "temp", "u": "Cel", "v": 21.0},
    {"bn": "urn:dev:mac:0024befffe804ff2:", "n": "temp", "u": "Cel", "v": 25.0},
]


async def test_a_gateway_pack_on_a_topic_route_is_never_merged_into_the_topic_device(tsdb: str) -> None:
    topic = "city/demo/senml/urn:dev:mac:0024befffe804ff1"
    await through_pipeline(tsdb, (topic, json.dumps(GATEWAY_PACK).encode()))
    assert [r[1:3] + r[4:] for r in await readings(tsdb)] == [
        ("urn:dev:mac:0024befffe804ff1", "temperature", 21.0)
    ]
    (dead,) = await fetch(tsdb, "SELECT reason, device_id, topic, detail, payload FROM dead_letters")
    assert (dead["reason"], dead["device_id"], dead["topic"]) == (
        "device_mismatch",
        "urn:dev:mac:0024befffe804ff2",
        topic,
    )
    assert json.loads(dead["payload"]) == GATEWAY_PACK
    assert dead["detail"].startswith("[1] (temperature): payload names device 'urn:dev:mac:0024befffe804ff2'")


async def test_a_gateway_route_stores_each_payload_device(tsdb: str) -> None:
    routes = [{"filter": "gw/+/senml", "format": "senml", "city_level": 2}]
    await through_pipeline(
        tsdb, ("gw/demo/senml", json.dumps(GATEWAY_PACK).encode()), mqtt={"routes": routes}
    )
    assert [r[1:3] + r[4:] for r in await readings(tsdb)] == [
        ("urn:dev:mac:0024befffe804ff1", "temperature", 21.0),
        ("urn:dev:mac:0024befffe804ff2", "temperature", 25.0),
    ]


async def test_a_bad_entity_value_is_dead_lettered_with_its_path_and_requeue_stores_nothing_twice(
    tsdb: str,
) -> None:
    notification = {
        "subscriptionId": "urn:ngsi-ld:Subscription:air",
        "data": [
            {"id": "a-1", "type": "AirQualityObserved", "pm25": {"type": "Property", "value": 12.0}},
            {"id": "a-2", "type": "AirQualityObserved", "pm25": {"type": "Property", "value": "n/a"},
             "no2": {"type": "Property", "value": "40"}},
        ],
    }  # fmt: skip
    routes = [{"filter": "ngsi/+", "format": "ngsi-ld", "city_level": 2}]
    await through_pipeline(tsdb, ("ngsi/demo", json.dumps(notification).encode()), mqtt={"routes": routes})
    first = await readings(tsdb)
    assert sorted((r[1], r[2], r[4]) for r in first) == [("a-1", "pm25", 12.0), ("a-2", "no2", 40.0)]
    (dead,) = await fetch(tsdb, "SELECT reason, device_id, detail FROM dead_letters")
    assert (dead["reason"], dead["device_id"]) == ("wrong_type", "a-2")
    assert dead["detail"].startswith("data[1].pm25: ")

    settings = Settings(database={"url": tsdb}, mqtt={"routes": routes})  # type: ignore[arg-type]
    for _ in range(2):
        result = await requeue_dead_letters(settings, DeadLetterFilter(reasons=("wrong_type",)))
        assert (result.messages, result.stored, result.already_stored, result.still_rejected) == (1, 0, 2, 1)
    assert await readings(tsdb) == first


async def test_a_payload_city_on_an_untrusted_route_is_dead_lettered_not_stored_elsewhere(tsdb: str) -> None:
    routes = [{"filter": "json/+/+", "format": "json", "city_level": 2, "device_level": 3}]
    doc = {"device_id": "d1", "city": "atlantis", "pm25": 5}
    await through_pipeline(tsdb, ("json/demo/d1", json.dumps(doc).encode()), mqtt={"routes": routes})
    assert await readings(tsdb) == []
    (dead,) = await fetch(tsdb, "SELECT reason, city_id, detail FROM dead_letters")
    assert dead["reason"] == "city_mismatch" and "trust_payload_city" in dead["detail"]
    assert dead["city_id"] == "demo"  # the topic's city, never the one the payload claims


async def test_a_gateway_messages_dead_letter_is_the_platforms_not_a_claimed_citys(tsdb: str) -> None:
    """On a route that lets payloads choose their city, one message carries two cities' readings;
    the bad one's dead letter (which holds the whole message, demo's reading included) is filed
    under no city, so only platform readers see it, not `other`'s reader."""
    routes = [{"filter": "gw/+", "format": "json", "trust_payload_city": True, "city": "demo"}]
    await fetch(tsdb, "INSERT INTO cities (city_id, name) VALUES ('other', 'Other') RETURNING city_id")
    good = {"device_id": "d1", "city": "demo", "pm25": 5}
    bad = {"device_id": "d2", "city": "other", "pm25": "five"}
    await through_pipeline(tsdb, ("gw/1", json.dumps([good, bad]).encode()), mqtt={"routes": routes})
    assert [(r[0], r[1], r[4]) for r in await readings(tsdb)] == [("demo", "d1", 5.0)]
    (dead,) = await fetch(tsdb, "SELECT reason, city_id, device_id FROM dead_letters")
    assert (dead["reason"], dead["city_id"], dead["device_id"]) == ("wrong_type", None, "d2")


async def test_water_quality_is_stored_as_water_temperature_on_a_water_device(tsdb: str) -> None:
    sample = (REPO / "tests/data/samples/ngsi-v2/WaterQualityObserved-normalized.json").read_bytes()
    routes = [{"filter": "ngsi/+", "format": "ngsi-v2", "city_level": 2}]
    await through_pipeline(tsdb, ("ngsi/demo", sample), mqtt={"routes": routes})
    (r,) = await readings(tsdb)
    assert (r[1], r[2], r[4]) == ("waterqualityobserved:Sevilla:D1", "water_temperature", 24.4)
    (kind,) = await fetch(tsdb, "SELECT kind FROM devices")
    assert kind["kind"] == "water"


async def test_show_prints_binary_as_hex_and_says_when_a_payload_was_cut(tsdb: str) -> None:
    frame = bytes.fromhex("016700e1026850") + b"\xff" * 10
    long_pack = json.dumps([{"bn": "air-1:", "n": "pm25", "v": 5.0, "bt": 10**12}] * 20).encode()
    await through_pipeline(
        tsdb,
        ("city/demo/senml/air-1", frame),
        ("city/demo/senml/air-1", long_pack),
        validation={"dead_letter_payload_bytes": 64},
    )
    rows = await fetch(tsdb, "SELECT id, reason FROM dead_letters WHERE payload IS NOT NULL ORDER BY id")
    binary, cut = rows[0]["id"], rows[1]["id"]
    assert rows[0]["reason"] == "binary_payload"
    assert "01 67 00 e1 02 68 50 ff" in cli(tsdb, "show", str(binary))
    assert f"cut: kept 64 of {len(long_pack)} bytes" in cli(tsdb, "show", str(cut))
    dry = cli(tsdb, "requeue", "--id", str(cut), "--dry-run")
    assert "would requeue 0 messages" in dry and "1 payload cut" in dry


async def test_requeue_pages_through_messages_whose_dead_letters_span_pages(tsdb: str) -> None:
    packs = [
        [
            {"bn": f"air-{i}:", "bt": 1_760_000_000, "n": "pm25", "v": 5.0},
            {"n": "pm10", "vs": "high"},
            {"n": "no2", "vs": "low"},
        ]
        for i in range(3)
    ]
    await through_pipeline(
        tsdb, *((f"city/demo/senml/air-{i}", json.dumps(p).encode()) for i, p in enumerate(packs))
    )
    settings = Settings(database={"url": tsdb})  # type: ignore[arg-type]
    everything = DeadLetterFilter(reasons=("wrong_type",))
    dry = await requeue_dead_letters(settings, everything, dry_run=True, page_size=1)
    assert (dry.messages, dry.dead_letters, dry.stored) == (3, 6, 0)
    done = await requeue_dead_letters(settings, everything, page_size=1)
    assert (done.messages, done.dead_letters, done.already_stored, done.still_rejected) == (3, 6, 3, 6)
    waiting = await fetch(tsdb, "SELECT count(*) AS n FROM dead_letters WHERE requeued_at IS NULL")
    assert waiting[0]["n"] == 6 and len(await readings(tsdb)) == 3


async def test_a_value_validation_rejects_is_dead_lettered_with_its_path(tsdb: str) -> None:
    entities = [
        {"id": "a-1", "type": "AirQualityObserved", "pm25": {"type": "Property", "value": 12.0}},
        {"id": "a-2", "type": "AirQualityObserved", "pm25": {"type": "Property", "value": 5000.0}},
    ]
    routes = [{"filter": "ngsi/+", "format": "ngsi-ld", "city_level": 2}]
    await through_pipeline(tsdb, ("ngsi/demo", json.dumps(entities).encode()), mqtt={"routes": routes})
    assert [(r[1], r[4]) for r in await readings(tsdb)] == [("a-1", 12.0)]
    (dead,) = await fetch(tsdb, "SELECT reason, device_id, detail FROM dead_letters")
    assert (dead["reason"], dead["device_id"]) == ("out_of_range", "a-2")
    assert dead["detail"].startswith("[1].pm25 (pm25): pm25=5000")
