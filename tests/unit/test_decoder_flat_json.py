"""Flat JSON (schemas/decoders/flat_json.py): field maps, aliases, identity from the topic."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas.decoders import DECODERS
from schemas.units import normalize
from tests.unit.decoder_cases import RECEIVED, by_metric, ctx, decode_error, utc


def test_json_with_field_map() -> None:
    doc = {"sensor": "lamp-7", "ts": 1718000000123, "town": "Oulu", "no2_ppb": 10, "t": 68, "other": 1}
    fm = {"device": "sensor", "time": "ts", "city": "town", "metric:no2": "no2_ppb", "unit:no2": "ppb",
          "metric:temperature": "t", "unit:temperature": "°F"}  # fmt: skip
    r = by_metric(DECODERS["json"](json.dumps(doc).encode(), ctx(field_map=fm, city="fallback")))
    assert set(r) == {"no2", "temperature"}
    assert r["no2"].device_id == "lamp-7" and r["no2"].city == "Oulu"
    assert r["no2"].time == datetime(2024, 6, 10, 6, 13, 20, 123000, tzinfo=UTC)  # epoch ms by magnitude
    assert normalize("no2", r["no2"].value, r["no2"].unit) == pytest.approx(19.0)
    assert normalize("temperature", r["temperature"].value, r["temperature"].unit) == pytest.approx(20.0)


def test_json_auto_mode_uses_known_aliases() -> None:
    doc = {"device_id": "d1", "time": "2024-06-10T08:00:00+02:00", "pm2.5": 4.2, "temp": 18, "battery": 3.1}
    readings = DECODERS["json"](json.dumps(doc).encode(), ctx(city="demo"))
    assert {(r.metric, r.value) for r in readings} == {("pm25", 4.2), ("temperature", 18.0)}
    assert {(r.device_id, r.time, r.city) for r in readings} == {("d1", utc(2024, 6, 10, 6), "demo")}


def test_json_device_from_topic_and_received_time() -> None:
    (r,) = DECODERS["json"](b'{"laeq": 61.5}', ctx(device_id="topic-device"))
    assert (r.device_id, r.metric, r.time) == ("topic-device", "laeq", RECEIVED)


@pytest.mark.parametrize(
    ("payload", "field_map", "reason"),
    [
        ('{"laeq": 61.5}', {}, "missing_device"),
        ('{"device_id": "d", "laeq": "61.5"}', {}, "wrong_type"),
        ('{"device_id": "d", "battery": 3}', {}, "no_known_metrics"),
        ('{"device_id": "d", "x": 3}', {"metric:pm2.5": "x"}, "bad_field_map"),
        ('{"device_id": "d", "x": 3, "time": [1]}', {"metric:pm25": "x"}, "bad_time"),
        ("[]", {}, "bad_structure"),
        ("5", {}, "bad_structure"),
    ],
)
def test_json_errors(payload: str, field_map: dict[str, str], reason: str) -> None:
    assert decode_error("json", payload, ctx(field_map=field_map)) == reason


def test_remembered_wide_keys_stay_bounded_and_read_each_payload_as_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from schemas.decoders import flat_json

    monkeypatch.setattr(flat_json, "_WIDE_KEYS_MAX", 8)
    monkeypatch.setattr(flat_json, "_WIDE_PAIRS", {})
    for i in range(50):  # attacker-chosen key sets: the memory never grows past its bound
        doc = {"device_id": "d1", f"junk{i}": 1, "pm25": float(i)}
        (r,) = DECODERS["json"](json.dumps(doc).encode(), ctx(city="demo"))
        assert (r.metric, r.value) == ("pm25", float(i))
        assert len(flat_json._WIDE_PAIRS) <= 8
    twice = {"device_id": "d1", "temp": 18.5, "temperature": 19.5}  # same keys again: same outcome
    for _ in range(2):
        decoded = DECODERS["json"](json.dumps(twice).encode(), ctx(city="demo"))
        assert [(r.metric, r.value) for r in decoded] == [("temperature", 18.5)]
        assert [p.reason for p in decoded.rejected] == ["same_quantity"]
