"""Every decoder, fed garbage, returns readings or raises DecodeError, and never hits its safety net.

The registry wraps decoders so stray exceptions become `DecodeError("internal_error")`; these tests
require that reason never appears, i.e. the decoders' own type checks cover the input.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.decoders import DECODERS, iter_openaq_csv, iter_sensor_community_csv
from schemas.readings import DecodeContext, Decoded, DecodeError, Reading

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
CTX = DecodeContext(
    default_time=datetime(2025, 3, 1, tzinfo=UTC),
    headers={"X-Sensor": "esp8266-1"},
    field_map={"device": "device_id", "metric:pm25": "pm25", "unit:pm25": "ug/m3"},
)

# One valid payload per decoder, mutated below.
SEEDS: dict[str, list[bytes]] = {
    "senml": [
        json.dumps(
            [
                {"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1718000000, "bu": "Cel", "n": "temp", "v": 23.1},
                {"n": "pm25", "t": 60, "v": 12.4, "u": "ug/m3"},
                {"n": "parking_occupied", "vb": True},
            ]
        ).encode()
    ],
    "ngsi-v2": [p.read_bytes() for p in sorted((SAMPLES / "ngsi-v2").iterdir())],
    "ngsi-ld": [p.read_bytes() for p in sorted((SAMPLES / "ngsi-ld").iterdir())],
    "ttn": [
        (SAMPLES / "ttn" / "uplink-aws-iot-docs.json").read_bytes(),
        json.dumps(
            {
                "end_device_ids": {"device_id": "lpp-1"},
                "uplink_message": {
                    "received_at": "2025-03-01T00:00:00Z",
                    "decoded_payload": {"temperature_1": 21.5, "temperature_2": 22.0, "analog_in_4": 1.2},
                },
            }
        ).encode(),
    ],
    "sensor-community": [
        json.dumps(
            {
                "esp8266id": "1",
                "timestamp": "2024-01-01 00:00:00",
                "sensordatavalues": [
                    {"value_type": "P1", "value": "12.40"},
                    {"value_type": "P2", "value": "7.1"},
                ],
            }
        ).encode()
    ],
    "openaq": [(SAMPLES / "openaq" / "measurements-api-v3.json").read_bytes()],
    "json": [
        json.dumps({"device_id": "d", "time": 1718000000, "pm25": 3.5}).encode(),
        json.dumps(
            [
                {
                    "device_id": "d",
                    "time": "2025-03-01T10:00:00",
                    "metric": "pm25",
                    "value": 3.5,
                    "unit": "ug/m3",
                },
                {"device_id": "d", "time": 1718000000, "metric": "no2", "value": 21},
            ]
        ).encode(),
    ],
}
# Binary formats have their own fuzz tests (Sparkplug B: tests/unit/test_decoder_sparkplug.py).
BINARY_DECODERS = {"sparkplug-b"}
JSON_DECODERS = sorted(set(DECODERS) - BINARY_DECODERS)
assert set(SEEDS) == set(JSON_DECODERS)

FAST = settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def check(name: str, payload: bytes) -> None:
    try:
        readings = DECODERS[name](payload, CTX)
    except DecodeError as exc:
        assert exc.reason != "internal_error", f"{name}: {exc} on {payload[:300]!r}"
        return
    assert isinstance(readings, Decoded)
    assert readings or readings.rejected or name.startswith("ngsi")  # only an empty notification is empty
    for part in readings.rejected:
        assert part.reason and part.reason != "internal_error" and isinstance(part.path, str)
    for r in readings:
        assert isinstance(r, Reading)
        assert isinstance(r.value, float) and isinstance(r.device_id, str) and r.device_id
        assert r.time.tzinfo is not None and r.time.utcoffset() == UTC.utcoffset(None)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every location (dict key or list index path) inside a JSON document."""
    found = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += _paths(v, (*prefix, i))
    return found


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


@FAST
@given(name=st.sampled_from(JSON_DECODERS), payload=st.binary(max_size=300))
def test_random_bytes(name: str, payload: bytes) -> None:
    check(name, payload)


@FAST
@given(name=st.sampled_from(JSON_DECODERS), data=st.data())
def test_truncated_payloads(name: str, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(SEEDS[name]))
    check(name, seed[: data.draw(st.integers(0, len(seed)))])


@FAST
@given(name=st.sampled_from(JSON_DECODERS), data=st.data())
def test_mutated_payloads(name: str, data: st.DataObject) -> None:
    doc = json.loads(data.draw(st.sampled_from(SEEDS[name])))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        doc = _replace(doc, path, data.draw(json_values))
    check(name, json.dumps(doc).encode())


@FAST
@given(
    name=st.sampled_from(JSON_DECODERS), depth=st.integers(1, 5000), opener=st.sampled_from(["[", '{"a":'])
)
def test_deep_nesting(name: str, depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    check(name, (opener * depth + "1" + closer * depth).encode())
    doc = json.loads(SEEDS[name][0])
    nested: Any = 1.5
    for _ in range(min(depth, 500)):
        nested = [nested]
    path = _paths(doc)[-1]
    check(name, json.dumps(_replace(doc, path, nested)).encode())


@FAST
@given(lines=st.lists(st.text(max_size=80), max_size=6), keep_header=st.booleans())
def test_csv_iterators_never_raise(lines: list[str], keep_header: bool) -> None:
    sc_header = "sensor_id;sensor_type;location;lat;lon;timestamp;P1;durP1;ratioP1;P2;durP2;ratioP2"
    aq_header = "location_id,sensors_id,location,datetime,lat,lon,parameter,units,value"
    for iterator, header in ((iter_sensor_community_csv, sc_header), (iter_openaq_csv, aq_header)):
        for item in iterator(([header] if keep_header else []) + lines):
            assert isinstance(item, Reading | DecodeError)
