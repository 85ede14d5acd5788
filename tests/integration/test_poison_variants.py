"""Poison text outside the device id (audit of issue 10): a NUL or a lone surrogate in a SenML metric
name, unit or string value, an NGSI attribute name or unit code, a flat-JSON key, among valid
messages over MQTT. Valid neighbours are stored, the poison never reaches PostgreSQL as text it
rejects, the service stays healthy, and a restart with the poison queued does not crash-loop."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import asyncpg
import pytest

from core.config import Settings
from ingest.service import Service
from ingest.simulator import SimMessage
from tests.conftest import KAFKA_BOOTSTRAP, PrivateMosquitto
from tests.integration.test_kafka_ingest import new_topic
from tests.integration.test_mqtt_ingest import T_START, senml_messages, wait_for_count
from tests.integration.test_poison import (
    assert_healthy,
    dead_letter_reasons,
    poison_among_valid_then_restart,
    wait_for_dead_letters,
)

pytestmark = pytest.mark.integration


def poison_fields(bad: str) -> list[SimMessage]:
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    docs = {
        "city/demo/senml/p1": [{"bn": "p1:", "n": f"pm{bad}25", "u": "ug/m3", "v": 5.0, "bt": T_START}],
        "city/demo/senml/p2": [{"bn": "p2:", "n": "pm25", "u": f"ug{bad}/m3", "v": 5.0, "bt": T_START}],
        "city/demo/senml/p3": [{"bn": "p3:", "n": "status", "vs": f"o{bad}k", "bt": T_START}],
        "city/demo/ngsi-v2/p4": {
            "id": "p4",
            "type": "AirQualityObserved",
            "dateObserved": {"value": now},
            f"temp{bad}erature": {"value": 12.2},
        },
        "city/demo/ngsi-ld/p5": {
            "id": "urn:ngsi-ld:AirQualityObserved:p5",
            "type": "AirQualityObserved",
            "dateObserved": {"type": "Property", "value": {"@type": "DateTime", "@value": now}},
            "temperature": {"type": "Property", "value": 12.2, "unitCode": f"CE{bad}L"},
        },
        "flat/p6": {"device_id": "p6", "city": "demo", "time": now, f"temp{bad}": 12.5},
        "v3/app/devices/p7/up": {
            "end_device_ids": {"device_id": "p7"},
            "received_at": now,
            "uplink_message": {"decoded_payload": {f"t{bad}emp": 12.5}},
        },
    }
    return [SimMessage(t, json.dumps(d).encode()) for t, d in docs.items()]


async def test_poison_text_in_names_units_and_values_never_stops_ingestion(
    tsdb: str, mosquitto: PrivateMosquitto
) -> None:
    bad = poison_fields("\x00") + poison_fields("\ud800")
    first, after_restart = await poison_among_valid_then_restart(tsdb, mosquitto.port, "citykpi-poison2", bad)
    assert len(first) == len(bad)
    assert len(after_restart) == 2 * len(bad)


# A producer that writes a record header key that is not UTF-8 (the Kafka protocol does not check
# it; aiokafka's own builder would refuse, so its pure-Python builder is handed raw bytes), each
# record in a producer batch of its own ("send_and_wait") or batched with its neighbours ("send").
RAW_HEADER_PRODUCER = """
import asyncio, os, sys
os.environ["AIOKAFKA_NO_EXTENSIONS"] = "1"
from aiokafka import AIOKafkaProducer
class RawKey(str):
    def encode(self, *args, **kwargs):
        return b"\\xff\\xfe"
async def main(topic, payloads):
    producer = AIOKafkaProducer(bootstrap_servers=sys.argv[2])
    await producer.start()
    send = getattr(producer, sys.argv[3])
    for i, payload in enumerate(payloads):
        await send(topic, payload, headers=[(RawKey("k"), b"v")] if i == 20 else None)
    await producer.flush()
    await producer.stop()
asyncio.run(main(sys.argv[1], [bytes.fromhex(h) for h in sys.argv[4:]]))
"""


@pytest.mark.parametrize(
    "send",
    [
        "send_and_wait",
        pytest.param(
            "send",
            marks=pytest.mark.xfail(
                strict=True,
                raises=AssertionError,
                reason="open: aiokafka decodes a whole producer batch, so the records after the "
                "unreadable one in its batch are unreadable too and become dead letters as well",
            ),
        ),
    ],
)
async def test_a_kafka_record_with_a_header_key_that_is_not_utf8_stops_nothing(tsdb: str, send: str) -> None:
    """40 SenML records, the 21st with a header key b'\\xff\\xfe': the 39 others are stored and the
    service stays healthy; the bad record becomes one `unreadable_record` dead letter naming its
    topic, partition and offset, and its offset is committed, so a restart reads only what follows."""
    topic = await new_topic(partitions=1)

    def produce(payloads: list[str]) -> None:
        cmd = [sys.executable, "-c", RAW_HEADER_PRODUCER, topic, KAFKA_BOOTSTRAP, send, *payloads]
        subprocess.run(cmd, check=True)

    produce([m.payload.hex() for m in senml_messages(40)])
    settings = Settings(  # type: ignore[call-arg]
        database={"url": tsdb},
        mqtt={"enabled": False},
        http={"enabled": False},
        kafka={
            "bootstrap_servers": KAFKA_BOOTSTRAP,
            "group_id": "g-" + topic,
            "topics": [{"filter": topic, "format": "senml", "city": "demo"}],
        },
        writer={"batch_max_delay_s": 0.05},
    )
    service = Service(settings)
    await service.start()
    try:
        assert await wait_for_count(tsdb, 39, timeout=20) == 39
        await wait_for_dead_letters(tsdb, 1)
        await assert_healthy(service)
    finally:
        await service.stop()
    conn = await asyncpg.connect(tsdb)
    try:
        rows = await conn.fetch('SELECT reason, topic, "partition", "offset" FROM dead_letters')
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [("unreadable_record", topic, 0, 20)]
    produce([m.payload.hex() for m in senml_messages(5, offset=40)])
    again = Service(settings)
    await again.start()
    try:
        assert await wait_for_count(tsdb, 44, timeout=20) == 44
        await assert_healthy(again)
    finally:
        await again.stop()
    assert await dead_letter_reasons(tsdb) == ["unreadable_record"]
