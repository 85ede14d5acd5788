"""Decoders against the real sample payloads in tests/data/samples and hand-written edge cases."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.decoders import DECODERS, get_decoder, iter_openaq_csv, iter_sensor_community_csv
from schemas.readings import DecodeContext, DecodeError, Reading
from schemas.units import normalize

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
RECEIVED = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def ctx(**kw: Any) -> DecodeContext:
    return DecodeContext(default_time=RECEIVED, **kw)


def sample(rel: str) -> bytes:
    return (SAMPLES / rel).read_bytes()


def by_metric(readings: list[Reading]) -> dict[str, Reading]:
    out = {r.metric: r for r in readings}
    assert len(out) == len(readings), "one reading per metric expected"
    return out


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def decode_error(name: str, payload: bytes | str, context: DecodeContext | None = None) -> str:
    """The reason the payload, or its only part, was rejected (nothing may be read from it)."""
    data = payload.encode() if isinstance(payload, str) else payload
    try:
        decoded = DECODERS[name](data, context or ctx())
    except DecodeError as e:
        return e.reason
    assert not decoded and len(decoded.rejected) == 1, decoded.rejected
    return decoded.rejected[0].reason


# --- registry ---------------------------------------------------------------------------------


def test_registry_names() -> None:
    json_formats = {"senml", "ngsi-v2", "ngsi-ld", "ttn", "sensor-community", "openaq", "json"}
    assert set(DECODERS) == json_formats | {"sparkplug-b"}
    assert get_decoder("senml") is DECODERS["senml"]
    with pytest.raises(KeyError, match=r"unknown decoder 'cbor'.*ngsi-ld.*senml"):
        get_decoder("cbor")


# --- NGSI: the Smart Data Models samples --------------------------------------------------------


@pytest.mark.parametrize("fmt", ["ngsi-v2", "ngsi-ld"])
def test_ngsi_v2_air_quality(fmt: str) -> None:
    readings = DECODERS[fmt](sample("ngsi-v2/AirQualityObserved-normalized.json"), ctx())
    r = by_metric(readings)
    assert set(r) == {
        "co",
        "no",
        "no2",
        "nox",
        "so2",
        "temperature",
        "humidity",
        "wind_speed",
        "precipitation",
    }
    assert all(x.device_id == "Madrid-AmbientObserved-28079004-2016-03-15T11:00:00" for x in readings)
    assert all(x.time == utc(2016, 3, 15, 11) for x in readings)  # dateObserved interval, at its start
    assert (r["no2"].value, r["no2"].unit) == (69.0, "GQ")
    assert normalize("no2", r["no2"].value, r["no2"].unit) == 69.0
    assert (r["co"].value, r["co"].unit) == (500.0, "GP")  # as published: 500 mg/m³, rejected downstream
    assert (r["humidity"].value, r["humidity"].unit) == (0.54, "1")
    assert normalize("humidity", r["humidity"].value, r["humidity"].unit) == pytest.approx(54.0)
    assert (r["temperature"].value, r["temperature"].unit) == (12.2, None)
    assert r["wind_speed"].value == 0.64


def test_ngsi_ld_air_quality_key_values() -> None:
    readings = DECODERS["ngsi-ld"](sample("ngsi-ld/AirQualityObserved-normalized.jsonld"), ctx())
    r = by_metric(readings)
    assert len(readings) == 9
    assert (
        r["no2"].device_id
        == "urn:ngsi-ld:AirQualityObserved:Madrid-AmbientObserved-28079004-2016-03-15T11:00:00"
    )
    assert (r["no2"].value, r["no2"].unit) == (69.0, None)
    assert (r["nox"].value, r["so2"].value, r["no"].value) == (139.0, 11.0, 45.0)
    assert r["humidity"].unit == "1"
    assert r["no2"].time == utc(2016, 3, 15, 11)


@pytest.mark.parametrize(
    ("rel", "device"),
    [
        (
            "ngsi-v2/NoiseLevelObserved-normalized.json",
            "Vitoria-NoiseLevelObserved-2016-12-28T11:00:00_2016-12-28T12:00:00",
        ),
        (
            "ngsi-ld/NoiseLevelObserved-normalized.jsonld",
            "urn:ngsi-ld:NoiseLevelObserved:Vitoria-NoiseLevelObserved-2016-12-28T11:00:00_2016-12-28T12:00:00",
        ),
    ],
)
def test_ngsi_noise(rel: str, device: str) -> None:
    r = by_metric(DECODERS["ngsi-ld"](sample(rel), ctx()))
    assert set(r) == {"laeq", "lamax"}  # LAS is not LAeq when LAeq is there; LAeq_d is not a reading
    assert (r["laeq"].value, r["lamax"].value) == (67.8, 94.5)
    assert r["laeq"].device_id == device
    assert r["laeq"].time == utc(2016, 12, 28, 11)  # dateObservedFrom: the hour the LAeq covers


def test_ngsi_noise_las_is_the_fallback_for_laeq() -> None:
    entity = {"id": "n1", "type": "NoiseLevelObserved", "LAS": 91.6, "dateObserved": "2016-12-28T12:00:00Z"}
    (r,) = DECODERS["ngsi-ld"](json.dumps(entity).encode(), ctx())
    assert (r.metric, r.value, r.time) == ("laeq", 91.6, utc(2016, 12, 28, 12))


@pytest.mark.parametrize(
    ("rel", "device"),
    [
        ("ngsi-v2/TrafficFlowObserved-normalized.json", "TrafficFlowObserved-Valladolid-osm-60821110"),
        (
            "ngsi-ld/TrafficFlowObserved-normalized.jsonld",
            "urn:ngsi-ld:TrafficFlowObserved:TrafficFlowObserved-Valladolid-osm-60821110",
        ),
    ],
)
def test_ngsi_traffic_flow(rel: str, device: str) -> None:
    r = by_metric(DECODERS["ngsi-v2"](sample(rel), ctx()))
    assert set(r) == {"vehicle_count", "vehicle_speed", "occupancy"}
    assert (r["vehicle_count"].value, r["vehicle_speed"].value) == (197.0, 52.6)
    assert normalize("occupancy", r["occupancy"].value, r["occupancy"].unit) == pytest.approx(76.0)
    assert r["occupancy"].device_id == device
    assert r["occupancy"].time == utc(2016, 12, 7, 11, 10)  # dateObservedFrom


def test_ngsi_v2_parking_spot_with_ld_style_relationship() -> None:
    (r,) = DECODERS["ngsi-v2"](sample("ngsi-v2/ParkingSpot-normalized.json"), ctx())
    assert (r.device_id, r.metric, r.value) == ("santander:daoiz_velarde_1_5:3", "parking_occupied", 0.0)
    assert r.time == utc(2018, 9, 21, 12)  # status metadata "timestamp", naive = UTC


def test_ngsi_ld_parking_spot() -> None:
    (r,) = DECODERS["ngsi-ld"](sample("ngsi-ld/ParkingSpot-normalized.jsonld"), ctx())
    assert (r.device_id, r.value) == ("urn:ngsi-ld:ParkingSpot:santander:daoiz_velarde_1_5:3", 0.0)
    assert r.time == utc(2018, 9, 21, 12)  # observedAt


def test_ngsi_parking_states() -> None:
    def spot(status: object) -> bytes:
        return json.dumps(
            {"id": "p1", "type": "ParkingSpot", "status": {"type": "Text", "value": status}}
        ).encode()

    assert DECODERS["ngsi-v2"](spot("occupied"), ctx())[0].value == 1.0
    assert decode_error("ngsi-v2", spot("closed")) == "no_known_metrics"
    assert decode_error("ngsi-v2", spot("unknown")) == "no_known_metrics"
    assert decode_error("ngsi-v2", spot("parked")) == "bad_value"


def test_ngsi_v2_waste_container_falls_back_to_received_at() -> None:
    (r,) = DECODERS["ngsi-v2"](sample("ngsi-v2/WasteContainer-normalized.json"), ctx())
    assert (r.device_id, r.metric, r.value, r.unit) == ("wastecontainer:Fleming:12a", "fill_level", 0.4, "1")
    assert normalize("fill_level", r.value, r.unit) == pytest.approx(40.0)
    assert r.time == RECEIVED  # the entity has no observation time at all


def test_ngsi_ld_waste_container_has_no_measurement() -> None:
    # bin* attributes are capacities and thresholds, not a filling level
    assert decode_error("ngsi-ld", sample("ngsi-ld/WasteContainer-normalized.jsonld")) == "no_known_metrics"


def test_ngsi_water_consumption_units() -> None:
    (v2,) = DECODERS["ngsi-v2"](sample("ngsi-v2/WaterConsumptionObserved-normalized.json"), ctx())
    assert (v2.device_id, v2.metric, v2.value, v2.unit) == (
        "urn:ngsi-ld:Consumer:Consumer01",
        "water_volume_total",
        191051.0,
        None,  # the model's documented unit, m³
    )
    assert v2.time == RECEIVED
    (ld,) = DECODERS["ngsi-ld"](sample("ngsi-ld/WaterConsumptionObserved-normalized.jsonld"), ctx())
    assert (ld.value, ld.unit) == (191051.0, "LTR")
    assert normalize(ld.metric, ld.value, ld.unit) == pytest.approx(191.051)
    assert ld.time == utc(2021, 5, 23, 23, 14, 16)


def test_ngsi_notifications_and_lists() -> None:
    entity = json.loads(sample("ngsi-v2/TrafficFlowObserved-normalized.json"))
    other = {
        "id": "t2",
        "type": "TrafficFlowObserved",
        "intensity": {"value": 5},
        "dateObserved": {"value": 0},
    }
    v2_note = {"subscriptionId": "57458eb60962ef754e7c0998", "data": [entity, other]}
    ld_note = {
        "id": "urn:ngsi-ld:Notification:1",
        "type": "Notification",
        "subscriptionId": "s",
        "data": [other],
    }
    readings = DECODERS["ngsi-v2"](json.dumps(v2_note).encode(), ctx())
    assert len(readings) == 4
    assert readings[-1].device_id == "t2" and readings[-1].time == utc(1970, 1, 1)
    assert len(DECODERS["ngsi-ld"](json.dumps(ld_note).encode(), ctx())) == 1
    assert len(DECODERS["ngsi-ld"](json.dumps([entity, other]).encode(), ctx())) == 4


def test_ngsi_attribute_time_wins_over_entity_time() -> None:
    entity = {
        "id": "aq1",
        "type": "AirQualityObserved",
        "dateObserved": {"value": "2024-01-01T10:00:00Z"},
        "no2": {"value": 10, "metadata": {"TimeInstant": {"value": "2024-01-01T09:30:00+01:00"}}},
        "pm25": {"type": "Property", "value": 4, "unitCode": "GQ", "observedAt": "2024-01-01T09:00:00Z"},
        "o3": {"value": 50},
    }
    r = by_metric(DECODERS["ngsi-v2"](json.dumps(entity).encode(), ctx()))
    assert r["no2"].time == utc(2024, 1, 1, 8, 30)
    assert (r["pm25"].time, r["pm25"].unit) == (utc(2024, 1, 1, 9), "GQ")
    assert r["o3"].time == utc(2024, 1, 1, 10)


def test_ngsi_ld_multi_attribute() -> None:
    at = "2024-01-01T00:00:00Z"
    entity = {"id": "w1", "type": "WeatherObserved", "temperature": [
        {"type": "Property", "value": 20.5, "datasetId": "urn:a", "observedAt": at},
        {"type": "Property", "value": 68, "unitCode": "FAH", "datasetId": "urn:b", "observedAt": at},
    ]}  # fmt: skip
    readings = DECODERS["ngsi-ld"](json.dumps(entity).encode(), ctx())
    assert [(r.value, r.unit) for r in readings] == [(20.5, None), (68.0, "FAH")]


@pytest.mark.parametrize(
    ("entity", "reason"),
    [
        ({"id": "a", "type": "AirQualityObserved", "NO2": {"value": "n/a"}}, "wrong_type"),
        ({"id": "a", "type": "AirQualityObserved", "NO2": True}, "wrong_type"),
        ({"id": "a", "NO2": {"value": 1, "unitCode": 5}}, "wrong_type"),
        ({"type": "AirQualityObserved", "NO2": 1}, "missing_device"),
        ({"id": "a", "NO2": 1, "dateObserved": "yesterday"}, "bad_time"),
        ({"subscriptionId": "s", "data": {"id": "a"}}, "bad_structure"),
    ],
)
def test_ngsi_errors(entity: dict[str, Any], reason: str) -> None:
    assert decode_error("ngsi-v2", json.dumps(entity)) == reason


def test_ngsi_null_value_is_missing() -> None:
    entity = {"id": "a", "NO2": {"value": None}, "pm10": {"value": 3}}
    assert [r.metric for r in DECODERS["ngsi-v2"](json.dumps(entity).encode(), ctx())] == ["pm10"]


# --- The Things Stack ---------------------------------------------------------------------------


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


# --- Sensor.Community ---------------------------------------------------------------------------

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


# --- OpenAQ -------------------------------------------------------------------------------------


def test_openaq_api_v3_measurements() -> None:
    readings = DECODERS["openaq"](sample("openaq/measurements-api-v3.json"), ctx(device_id="openaq-7117"))
    assert [(r.device_id, r.metric, r.value, r.unit, r.time) for r in readings] == [
        ("openaq-7117", "pm25", 6.0, "µg/m³", utc(2023, 10, 16, 12)),  # period.datetimeFrom
        ("openaq-7117", "pm25", 7.5, "µg/m³", utc(2023, 10, 16, 13)),
    ]
    assert normalize("pm25", readings[1].value, readings[1].unit) == 7.5


def test_openaq_needs_a_device() -> None:
    decoded = DECODERS["openaq"](sample("openaq/measurements-api-v3.json"), ctx())
    assert not decoded and {p.reason for p in decoded.rejected} == {"missing_device"}
    assert [p.path for p in decoded.rejected] == ["results[0]", "results[1]"]


def test_openaq_latest_shape() -> None:
    doc = {"results": [{"datetime": {"utc": "2024-01-01T00:00:00Z"}, "value": 0.02, "sensorsId": 9,
                        "parameter": {"name": "no2", "units": "ppm"}}]}  # fmt: skip
    (r,) = DECODERS["openaq"](json.dumps(doc).encode(), ctx())
    assert (r.device_id, r.metric, r.time) == ("openaq-9", "no2", utc(2024, 1, 1))
    assert normalize(r.metric, r.value, r.unit) == pytest.approx(38.0)


def test_openaq_archive_csv() -> None:
    lines = [
        "location_id,sensors_id,location,datetime,lat,lon,parameter,units,value",
        '2178,3917,"Del Norte, NM",2023-10-16T06:00:00-06:00,35.13,-106.58,pm25,µg/m³,6.0',
        "2178,3918,Del Norte,2023-10-16T06:00:00-06:00,35.13,-106.58,no2,ppb,10",
        "2178,3919,Del Norte,2023-10-16T06:00:00-06:00,35.13,-106.58,co,ppm,1",
        "2178,3920,Del Norte,2023-10-16T06:00:00-06:00,35.13,-106.58,bc,µg/m³,1",
        "2178,3921,Del Norte,2023-10-16T06:00:00-06:00,35.13,-106.58,o3,ppm,",
        "2178,3922,Del Norte,yesterday,35.13,-106.58,o3,ppm,0.03",
    ]
    items = list(iter_openaq_csv(lines))
    assert isinstance(items[-1], DecodeError) and items[-1].reason == "bad_time"
    readings = [x for x in items if isinstance(x, Reading)]
    assert [(r.device_id, r.metric, r.time) for r in readings] == [
        ("openaq-3917", "pm25", utc(2023, 10, 16, 12)),
        ("openaq-3918", "no2", utc(2023, 10, 16, 12)),
        ("openaq-3919", "co", utc(2023, 10, 16, 12)),
    ]
    assert [normalize(r.metric, r.value, r.unit) for r in readings] == pytest.approx([6.0, 19.0, 1.145])


# --- flat JSON ----------------------------------------------------------------------------------


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


# --- SenML (RFC 8428) ---------------------------------------------------------------------------


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


# --- shared behaviour ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(DECODERS) - {"sparkplug-b"}))  # protobuf: its own tests
@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "bad_json"),
        (b"\xff\xfe\x00", "bad_json"),
        (b"{", "bad_json"),
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (b"1" * 5000, "bad_json"),  # above Python's int digit limit
    ],
)
def test_malformed_payloads(name: str, payload: bytes, reason: str) -> None:
    assert decode_error(name, payload) == reason
