"""NGSI v2 and NGSI-LD (schemas/decoders/ngsi.py) against the Smart Data Models samples."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.decoders import DECODERS
from schemas.units import normalize
from tests.unit.decoder_cases import RECEIVED, by_metric, ctx, decode_error, sample, utc


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
