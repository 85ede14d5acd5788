"""The Things Stack uplinks (schemas/decoders/ttn.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.decoders import DECODERS
from tests.unit.decoder_cases import by_metric, ctx, decode_error, sample


def test_ttn_aws_envelope() -> None:
    (r,) = DECODERS["ttn"](sample("ttn/uplink-aws-iot-docs.json"), ctx(city="demo"))
    assert (r.device_id, r.metric, r.value, r.unit, r.city) == (
        "my-motion-sensor-1",
        "temperature",
        6.0,
        None,
        "demo",
    )
    assert r.time == datetime(2020, 1, 15, 16, 2, 10, 448769, tzinfo=UTC)  # uplink received_at, ns truncated


def test_ttn_bare_uplink_and_field_map_units() -> None:
    uplink = json.loads(sample("ttn/uplink-aws-iot-docs.json"))["payload"]
    uplink["uplink_message"]["decoded_payload"] = {
        "pm2_5": 12.5,
        "nested": {"pm10": 3},
        "humidity": None,
        "temp": 68,
    }
    del uplink["uplink_message"]["received_at"]
    readings = DECODERS["ttn"](json.dumps(uplink).encode(), ctx(field_map={"unit:temperature": "°F"}))
    r = by_metric(readings)
    assert set(r) == {"pm25", "temperature"}
    assert (r["temperature"].unit, r["pm25"].unit) == ("°F", None)
    assert r["pm25"].time == datetime(2020, 1, 15, 16, 2, 10, 668892, tzinfo=UTC)  # top-level received_at


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (
            {"end_device_ids": {"device_id": "d"}, "uplink_message": {"frm_payload": "AQ=="}},
            "no_decoded_payload",
        ),
        (
            {"end_device_ids": {"device_id": "d"}, "uplink_message": {"decoded_payload": {"temp": "6"}}},
            "wrong_type",
        ),
        ({"end_device_ids": {}, "uplink_message": {"decoded_payload": {"temp": 6}}}, "missing_device"),
        ({"end_device_ids": {"device_id": "d"}}, "bad_structure"),
    ],
)
def test_ttn_errors(doc: dict[str, Any], reason: str) -> None:
    assert decode_error("ttn", json.dumps(doc)) == reason


def test_ttn_device_fallbacks() -> None:
    doc = {
        "end_device_ids": {"dev_eui": "70B3D57ED0000001"},
        "uplink_message": {"decoded_payload": {"temp": 1}},
    }
    payload = json.dumps(doc).encode()
    assert DECODERS["ttn"](payload, ctx(device_id="from-topic"))[0].device_id == "70B3D57ED0000001"
    del doc["end_device_ids"]
    assert DECODERS["ttn"](json.dumps(doc).encode(), ctx(device_id="from-topic"))[0].device_id == "from-topic"
