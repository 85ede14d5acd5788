"""SenML, RFC 8428 (schemas/decoders/senml.py)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from schemas.decoders import DECODERS
from schemas.readings import DecodeContext, Reading
from tests.unit.decoder_cases import RECEIVED, ctx, decode_error, utc


def senml(pack: object, context: DecodeContext | None = None) -> list[Reading]:
    return DECODERS["senml"](json.dumps(pack).encode(), context or ctx())


def test_senml_reference_example() -> None:
    pack = [
        {"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1718000000, "n": "temp", "u": "Cel", "v": 23.1},
        {"n": "pm25", "t": 60, "v": 12.4},
    ]
    t, pm = senml(pack)
    assert (t.device_id, t.metric, t.value, t.unit) == (
        "urn:dev:ow:10e2073a01080063",
        "temperature",
        23.1,
        "Cel",
    )
    assert t.time == utc(2024, 6, 10, 6, 13, 20)
    assert (pm.device_id, pm.metric, pm.value, pm.unit) == ("urn:dev:ow:10e2073a01080063", "pm25", 12.4, None)
    assert pm.time == utc(2024, 6, 10, 6, 14, 20)


def test_senml_relative_times() -> None:
    # RFC 8428 5.1.3 style: no bt, negative offsets relative to "now" (the time of receipt)
    pack = [
        {"bn": "urn:dev:ow:10e2073a01080063:", "n": "temp", "u": "Cel", "v": 23.1, "t": -10},
        {"n": "temp", "u": "Cel", "v": 23.2, "t": -5},
        {"n": "temp", "u": "Cel", "v": 23.3},
        {"bt": -60, "n": "temp", "v": 23.0, "t": 0},
    ]
    times = [r.time for r in senml(pack)]
    assert times == [RECEIVED - timedelta(seconds=s) for s in (10, 5, 0, 60)]


def test_senml_base_values_carry_forward() -> None:
    pack = [
        {"bn": "dev1/", "bt": 1.7e9, "bu": "ppb", "bv": 10, "n": "no2", "v": 0},
        {"n": "no2", "v": 2, "t": 1},
        {"n": "o3", "v": 20, "t": 2, "u": "ug/m3"},
        {"bn": "dev2:", "n": "no2", "v": 1},
        {"bu": "Cel", "bv": 0, "n": "temperature", "v": 20},
    ]
    readings = senml(pack)
    assert [(r.device_id, r.metric, r.value, r.unit) for r in readings] == [
        ("dev1", "no2", 10.0, "ppb"),
        ("dev1", "no2", 12.0, "ppb"),
        ("dev1", "o3", 30.0, "ug/m3"),
        ("dev2", "no2", 11.0, "ppb"),
        ("dev2", "temperature", 20.0, "Cel"),
    ]
    assert [r.time.timestamp() for r in readings] == [1.7e9, 1.7e9 + 1, 1.7e9 + 2, 1.7e9, 1.7e9]


def test_senml_pack_of_many_records() -> None:
    pack = [{"bn": "urn:dev:mac:0024befffe804ff1:", "bt": 1.3e9, "bu": "dB"}]
    pack += [{"n": "LAeq", "t": i, "v": 50 + i % 10} for i in range(500)]
    readings = senml(pack)
    assert len(readings) == 500 and readings[-1].value == 59.0


def test_senml_device_from_the_name_else_the_topic() -> None:
    """The decoder reports the payload's device; the route decides whether it may differ."""
    (r,) = senml([{"bn": "urn:dev:ow:1:", "n": "temp", "v": 1}], ctx(device_id="topic-device"))
    assert r.device_id == "urn:dev:ow:1"
    (r,) = senml([{"n": "temp", "v": 1}], ctx(device_id="topic-device"))
    assert r.device_id == "topic-device"


def test_senml_value_kinds() -> None:
    pack = [
        {"bn": "lot7:", "n": "parking_occupied", "vb": True},
        {"n": "temp", "vs": "warm"},
        {"n": "temp", "vb": True},
        {"n": "energy", "u": "Wh", "s": 1500},
        {"n": "firmware", "vs": "1.2.3"},
        {"n": "image", "vd": "aGk"},
    ]
    readings = senml(pack)
    assert [(r.metric, r.value, r.unit) for r in readings] == [
        ("parking_occupied", 1.0, None),
        ("energy_total", 1500.0, "Wh"),
    ]


@pytest.mark.parametrize(
    ("pack", "reason"),
    [
        (
            [{"bn": "d:", "n": "voltage", "u": "V", "v": 120.1}, {"n": "current", "u": "A", "v": 1.2}],
            "no_known_metrics",
        ),
        ([{"n": "temp", "v": 1}], "missing_device"),
        ([{"bver": 11, "bn": "d:", "n": "temp", "v": 1}], "unsupported_version"),
        ([{"bn": "d:", "n": "temp", "v": "1"}], "wrong_type"),
        ([{"bn": "d:", "n": "temp", "v": 1, "t": 1e300}], "bad_time"),
        ([{"bn": 5, "n": "temp", "v": 1}], "wrong_type"),
        ([], "bad_structure"),
        ([[{"n": "temp"}]], "bad_structure"),
        ({"e": []}, "no_known_metrics"),
    ],
)
def test_senml_errors(pack: object, reason: str) -> None:
    assert decode_error("senml", json.dumps(pack)) == reason


def test_senml_nan_passes_through() -> None:
    (r,) = DECODERS["senml"](b'[{"bn":"d:","n":"temp","v":NaN}]', ctx())
    assert r.value != r.value
