"""Sensor.Community (schemas/decoders/sensor_community.py): live JSON and archive CSV."""

from __future__ import annotations

import json

import pytest

from schemas.decoders import DECODERS, iter_sensor_community_csv
from schemas.readings import DecodeError, Reading
from schemas.units import normalize
from tests.unit.decoder_cases import RECEIVED, SAMPLES, by_metric, ctx, decode_error, utc

FIRMWARE = {
    "software_version": "NRZ-2020-129",
    "sensordatavalues": [{"value_type": "P1", "value": "12.40"}, {"value_type": "P2", "value": "7.10"}],
}


def test_sensor_community_firmware_with_header() -> None:
    readings = DECODERS["sensor-community"](
        json.dumps(FIRMWARE).encode(), ctx(headers={"x-sensor": "esp8266-123"})
    )
    r = by_metric(readings)
    assert (r["pm10"].value, r["pm25"].value) == (12.4, 7.1)
    assert {x.device_id for x in readings} == {"esp8266-123"}
    assert r["pm10"].time == RECEIVED


def test_sensor_community_bme280_noise_and_esp_id() -> None:
    doc = {
        "esp8266id": "15092",
        "sensordatavalues": [
            {"value_type": "BME280_pressure", "value": "101325.00"},
            {"value_type": "BME280_temperature", "value": "21.3"},
            {"value_type": "noise_LAeq", "value": "55.1"},
            {"value_type": "noise_LA_min", "value": "40.0"},
            {"value_type": "samples", "value": "1234"},
            {"value_type": "humidity", "value": ""},
        ],
    }
    r = by_metric(DECODERS["sensor-community"](json.dumps(doc).encode(), ctx()))
    assert set(r) == {"pressure", "temperature", "laeq", "lamin"}
    assert r["pressure"].device_id == "esp8266-15092"
    assert normalize("pressure", r["pressure"].value, r["pressure"].unit) == pytest.approx(1013.25)


def test_sensor_community_api_format_with_timestamp() -> None:
    doc = [{"timestamp": "2024-05-01 10:15:02", "sensor": {"id": 15092}, **FIRMWARE}]
    readings = DECODERS["sensor-community"](json.dumps(doc).encode(), ctx())
    assert {(x.device_id, x.time) for x in readings} == {
        ("sensor-community-15092", utc(2024, 5, 1, 10, 15, 2))
    }


def test_sensor_community_errors() -> None:
    bad = {"esp8266id": "1", "sensordatavalues": [{"value_type": "P1", "value": "n/a"}]}
    assert decode_error("sensor-community", json.dumps(bad)) == "wrong_type"
    assert decode_error("sensor-community", json.dumps(FIRMWARE)) == "missing_device"
    assert decode_error("sensor-community", json.dumps({"sensordatavalues": {}})) == "bad_structure"


def test_sensor_community_archive_csv() -> None:
    with (SAMPLES / "sensor-community" / "sds011-archive.csv").open(encoding="utf-8") as f:
        items = list(iter_sensor_community_csv(f))
    assert not [x for x in items if isinstance(x, DecodeError)]
    readings = [x for x in items if isinstance(x, Reading)]
    assert len(readings) == 2 * 95
    assert len({r.time for r in readings}) == 95
    first = by_metric(readings[:2])
    assert (first["pm10"].value, first["pm25"].value) == (17.47, 7.73)
    assert first["pm10"].device_id == "sensor-community-15092"
    assert first["pm10"].time == utc(2018, 7, 7, 20, 3, 6)
    last = by_metric(readings[-2:])
    assert (last["pm10"].value, last["pm25"].value, last["pm10"].time) == (
        13.17,
        9.97,
        utc(2018, 7, 7, 23, 58, 58),
    )


def test_sensor_community_csv_bad_rows_do_not_stop_the_replay() -> None:
    lines = [
        "sensor_id;sensor_type;location;lat;lon;timestamp;pressure;altitude;pressure_sealevel;temperature;humidity\n",
        "1;BME280;2;48.7;9.1;2024-01-01T00:00:00;98000.5;;;3.5;80\n",
        "1;BME280;2;48.7;9.1;not-a-time;98000.5;;;3.5;80\n",
        "1;BME280;2;48.7;9.1\n",
        "\n",
        "1;BME280;2;48.7;9.1;2024-01-01T00:02:30;;;;x;81\n",
        "1;BME280;2;48.7;9.1;2024-01-01T00:05:00;;;;4.0;\n",
    ]
    items = list(iter_sensor_community_csv(lines))
    kinds = [(x.metric, x.value, x.unit) if isinstance(x, Reading) else x.reason for x in items]
    assert kinds == [
        ("pressure", 98000.5, "Pa"),
        ("temperature", 3.5, None),
        ("humidity", 80.0, None),
        "bad_time",
        "bad_csv",
        "wrong_type",
        ("temperature", 4.0, None),
    ]


def test_sensor_community_csv_needs_a_header() -> None:
    (err,) = iter_sensor_community_csv(["15092;SDS011;7647;56.963;-2.211;2018-07-07T20:03:06;17.47;;;7.73;;"])
    assert isinstance(err, DecodeError) and err.reason == "bad_csv"
