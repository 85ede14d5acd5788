"""Per-part outcomes, identity and vocabulary: what issue 11 found mis-stored or lost, on real shapes.

Each test names the payload shape it comes from (FIWARE IoT Agent, The Things Stack, Sensor.Community
firmware, SenML gateways, Node-RED flows).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from core.config import ConfigError, TopicRoute, ValidationSettings, load_settings
from ingest.routing import IdentityMismatch, Router
from schemas.decoders import DECODERS
from schemas.readings import DecodeContext, Decoded, DecodeError

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
RECEIVED = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def decode(fmt: str, doc: Any, **kw: Any) -> Decoded:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return DECODERS[fmt](payload, DecodeContext(default_time=RECEIVED, **kw))


def reason_of(fmt: str, doc: Any, **kw: Any) -> str:
    with pytest.raises(DecodeError) as info:
        decode(fmt, doc, **kw)
    return info.value.reason


def ttn_uplink(decoded_payload: dict[str, Any] | None, **uplink: Any) -> dict[str, Any]:
    """A The Things Stack v3 uplink as its MQTT/webhook integration sends it."""
    message: dict[str, Any] = {"f_port": 1, "frm_payload": "AWcA4QJoUANzJ8IEAgFK", **uplink}
    if decoded_payload is not None:
        message["decoded_payload"] = decoded_payload
    return {
        "end_device_ids": {"device_id": "eui-70b3d57ed0057f2a", "dev_eui": "70B3D57ED0057F2A"},
        "received_at": "2025-03-01T11:59:59.5Z",
        "uplink_message": message,
    }


# --- 2. per-reading outcomes: valid neighbours of a bad part are kept ---------------------------


def test_ngsi_ld_notification_with_one_bad_pm25_keeps_every_other_value() -> None:
    notification = {
        "id": "urn:ngsi-ld:Notification:1",
        "type": "Notification",
        "subscriptionId": "urn:ngsi-ld:Subscription:air",
        "notifiedAt": "2025-03-01T12:00:00Z",
        "data": [
            {"id": "urn:ngsi-ld:AirQualityObserved:a", "type": "AirQualityObserved",
             "pm25": {"type": "Property", "value": 12.0, "observedAt": "2025-03-01T11:55:00Z"}},
            {"id": "urn:ngsi-ld:AirQualityObserved:b", "type": "AirQualityObserved",
             "pm25": {"type": "Property", "value": "n/a", "observedAt": "2025-03-01T11:55:00Z"},
             "no2": {"type": "Property", "value": 40.0, "observedAt": "2025-03-01T11:55:00Z"}},
        ],
    }  # fmt: skip
    decoded = decode("ngsi-ld", notification)
    assert sorted((r.device_id, r.metric, r.value) for r in decoded) == [
        ("urn:ngsi-ld:AirQualityObserved:a", "pm25", 12.0),
        ("urn:ngsi-ld:AirQualityObserved:b", "no2", 40.0),
    ]
    (bad,) = decoded.rejected
    assert (bad.reason, bad.path, bad.device_id) == (
        "wrong_type",
        "data[1].pm25",
        "urn:ngsi-ld:AirQualityObserved:b",
    )
    assert "'n/a'" in bad.detail


def test_ngsi_v2_numbers_sent_as_text_by_an_iot_agent_are_numbers() -> None:
    entity = {
        "id": "urn:ngsi-ld:AirQualityObserved:Madrid-01",
        "type": "AirQualityObserved",
        "TimeInstant": {"type": "DateTime", "value": "2025-03-01T11:00:00.000Z"},
        "temperature": {"type": "Number", "value": "21.4"},
        "NO2": {"type": "Number", "value": "40", "metadata": {"unitCode": {"type": "Text", "value": "GQ"}}},
        "relativeHumidity": {"type": "Number", "value": ""},
    }
    decoded = decode("ngsi-v2", entity)
    assert {(r.metric, r.value, r.unit) for r in decoded} == {
        ("temperature", 21.4, None),
        ("no2", 40.0, "GQ"),
    }
    assert not decoded.rejected


def test_senml_pack_with_one_string_value_keeps_its_neighbours() -> None:
    pack = [
        {"bn": "urn:dev:ow:10e2073a0108006:", "bt": 1.276020076e9, "n": "temp", "u": "Cel", "v": 23.1},
        {"n": "humidity", "u": "%RH", "v": "67"},
        {"n": "pm25", "u": "ug/m3", "v": 7.5},
    ]
    decoded = decode("senml", pack)
    assert [(r.metric, r.value) for r in decoded] == [("temperature", 23.1), ("pm25", 7.5)]
    (bad,) = decoded.rejected
    assert (bad.reason, bad.path, bad.device_id) == ("wrong_type", "[1]", "urn:dev:ow:10e2073a0108006")


def test_ttn_uplink_with_one_string_value_keeps_the_others() -> None:
    decoded = decode("ttn", ttn_uplink({"temperature": 21.5, "humidity": "high", "co2": 415}))
    assert {(r.metric, r.value) for r in decoded} == {("temperature", 21.5), ("co2", 415.0)}
    assert [(p.reason, p.path) for p in decoded.rejected] == [("wrong_type", "decoded_payload.humidity")]


def test_sensor_community_nan_part_is_rejected_and_its_neighbour_read() -> None:
    post = {"esp8266id": "15092", "sensordatavalues": [
        {"value_type": "SDS_P1", "value": "n.a."}, {"value_type": "SDS_P2", "value": "4.0"}]}  # fmt: skip
    decoded = decode("sensor-community", post)
    assert [(r.metric, r.value, r.time) for r in decoded] == [("pm25", 4.0, RECEIVED)]
    assert [(p.reason, p.path) for p in decoded.rejected] == [("wrong_type", "sensordatavalues[0]")]


def test_long_format_array_with_a_bad_record_keeps_the_good_ones() -> None:
    records = [
        {"time": "2025-03-01T10:00:00Z", "metric": "pm25", "value": 12.1, "unit": "ug/m3"},
        {"time": "2025-03-01T10:00:00Z", "metric": "pm10", "value": "high", "unit": "ug/m3"},
        {"time": "2025-03-01T10:00:00Z", "metric": "no2", "value": 21, "unit": "ppb"},
    ]
    decoded = decode("json", records, device_id="node-red-1")
    assert [(r.metric, r.value, r.unit) for r in decoded] == [("pm25", 12.1, "ug/m3"), ("no2", 21.0, "ppb")]
    assert [(p.reason, p.path) for p in decoded.rejected] == [("wrong_type", "[1]")]


# --- 3. identity per route ------------------------------------------------------------------------

TOPIC_ROUTE = TopicRoute(filter="city/+/senml/+", format="senml", city_level=2, device_level=4)
GATEWAY_ROUTE = TopicRoute(filter="gw/+/senml", format="senml", city_level=2)
GATEWAY_PACK = [
    {"bn": "urn:dev:mac:0024befffe804ff1:", "bt": 1.7e9, "n": "temp", "u": "Cel", "v": 21.0},
    {"bn": "urn:dev:mac:0024befffe804ff2:", "n": "temp", "u": "Cel", "v": 25.0},
]


def test_a_route_with_a_device_level_takes_identity_from_the_topic() -> None:
    assert (TOPIC_ROUTE.identity, GATEWAY_ROUTE.identity) == ("topic", "payload")
    route = Router([TOPIC_ROUTE]).match("city/demo/senml/urn:dev:mac:0024befffe804ff1")
    assert route is not None and route.device == "urn:dev:mac:0024befffe804ff1"
    decoded = decode("senml", GATEWAY_PACK, device_id=route.device, city=route.city)
    assert route.device_of(decoded[0].device_id) == "urn:dev:mac:0024befffe804ff1"
    with pytest.raises(IdentityMismatch) as info:
        route.device_of(decoded[1].device_id)  # never merged into the topic's device
    assert info.value.reason == "device_mismatch" and "0024befffe804ff2" in info.value.detail


def test_a_gateway_route_stores_each_bn_as_its_own_device() -> None:
    route = Router([GATEWAY_ROUTE]).match("gw/demo/senml")
    assert route is not None and route.device is None
    decoded = decode("senml", GATEWAY_PACK, device_id=route.device, city=route.city)
    assert [route.device_of(r.device_id) for r in decoded] == [
        "urn:dev:mac:0024befffe804ff1",
        "urn:dev:mac:0024befffe804ff2",
    ]


def test_an_ngsi_urn_ending_in_the_topic_device_agrees_with_it() -> None:
    route = Router([TopicRoute(filter="city/+/ngsi-ld/+", format="ngsi-ld", city_level=2, device_level=4)])
    match = route.match("city/demo/ngsi-ld/traffic-0001")
    assert match is not None
    assert match.device_of("urn:ngsi-ld:TrafficFlowObserved:traffic-0001").endswith(":traffic-0001")
    with pytest.raises(IdentityMismatch):
        match.device_of("urn:ngsi-ld:TrafficFlowObserved:traffic-0002")


def test_a_payload_city_never_overrides_the_topic_city_unless_trusted() -> None:
    doc = {"device_id": "d1", "city": "other", "pm25": 5}
    strict = Router([TopicRoute(filter="json/+/+", format="json", city_level=2, device_level=3)])
    trusting = Router([TopicRoute(filter="json/+/+", format="json", city_level=2, device_level=3,
                                  trust_payload_city=True)])  # fmt: skip
    for router, expected in ((strict, None), (trusting, "other")):
        route = router.match("json/demo/d1")
        assert route is not None
        (r,) = decode("json", doc, device_id=route.device, city=route.city)
        if expected is None:
            with pytest.raises(IdentityMismatch) as info:
                route.city_of(r.city)
            assert info.value.reason == "city_mismatch"
        else:
            assert route.city_of(r.city) == expected
    route = strict.match("json/demo/d1")
    assert route is not None and route.city_of(None) == "demo"


def test_topic_identity_without_a_device_level_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="identity 'topic' needs a device_level"):
        TopicRoute(filter="a/#", format="senml", identity="topic")


# --- 4. The Things Stack: field_map, Cayenne LPP, simulated uplinks -----------------------------


def test_ttn_field_map_maps_formatter_keys_outside_the_alias_table() -> None:
    uplink = ttn_uplink({"occupied": True, "battery_v": 3.6})
    fm = {"metric:parking_occupied": "occupied"}
    (r,) = decode("ttn", uplink, field_map=fm)
    assert (r.device_id, r.metric, r.value) == ("eui-70b3d57ed0057f2a", "parking_occupied", 1.0)
    assert reason_of("ttn", uplink) == "no_known_metrics"


def test_ttn_cayenne_lpp_channel_names_are_understood() -> None:
    # The Things Stack's Cayenne LPP formatter output for a 4-channel node
    lpp = {
        "temperature_1": 22.5,
        "relative_humidity_2": 55.5,
        "barometric_pressure_3": 1013.2,
        "analog_in_4": 1.2,
    }
    decoded = decode("ttn", ttn_uplink(lpp))
    assert {(r.metric, r.value) for r in decoded} == {
        ("temperature", 22.5),
        ("humidity", 55.5),
        ("pressure", 1013.2),
    }
    decoded = decode("ttn", ttn_uplink(lpp), field_map={"metric:water_level": "analog_in_4"})
    assert ("water_level", 1.2) in {(r.metric, r.value) for r in decoded}
    with pytest.raises(DecodeError, match="analog_in_4 need field_map"):
        decode("ttn", ttn_uplink({"analog_in_4": 1.2}))


def test_ttn_two_lpp_channels_of_one_quantity_keep_the_lowest_and_reject_the_other() -> None:
    decoded = decode("ttn", ttn_uplink({"temperature_2": 30.0, "temperature_1": 21.0}))
    assert [(r.metric, r.value) for r in decoded] == [("temperature", 21.0)]
    assert [(p.reason, p.path) for p in decoded.rejected] == [
        ("same_quantity", "decoded_payload.temperature_2")
    ]


def test_ttn_simulated_uplinks_are_skipped_with_a_reason_unless_configured() -> None:
    simulated = ttn_uplink({"temperature": 21.5}, simulated=True)
    assert reason_of("ttn", simulated) == "simulated_uplink"
    (r,) = decode("ttn", simulated, field_map={"simulated": "store"})
    assert r.value == 21.5


# --- 5. route formats validated at load -----------------------------------------------------------


def test_a_route_format_typo_fails_at_load_naming_the_route_and_the_known_formats(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[mqtt.routes]]\nfilter = "city/+/sc/+"\nformat = "sensor.community"\ncity_level = 2\n')
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    text = str(info.value)
    assert "route 'city/+/sc/+': unknown format 'sensor.community'" in text
    assert "sensor-community" in text and "senml" in text


def test_a_field_map_naming_an_unknown_metric_fails_at_load() -> None:
    with pytest.raises(ValueError, match=r"'pm2\.5' is not a known metric"):
        TopicRoute(filter="a/+", format="ttn", device_level=2, field_map={"metric:pm2.5": "pm"})


# --- 6. vocabulary ------------------------------------------------------------------------------


def test_water_quality_observed_temperature_is_water_temperature() -> None:
    decoded = decode("ngsi-v2", (SAMPLES / "ngsi-v2/WaterQualityObserved-normalized.json").read_bytes())
    assert [(r.device_id, r.metric, r.value) for r in decoded] == [
        ("waterqualityobserved:Sevilla:D1", "water_temperature", 24.4)
    ]
    from schemas.metrics import METRICS

    assert METRICS["water_temperature"].kind == "water" and METRICS["temperature"].kind == "weather"


@pytest.mark.parametrize("order", [1, -1])
def test_sensor_community_two_sensors_for_one_quantity_keep_the_more_accurate_whatever_the_order(
    order: int,
) -> None:
    values = [
        {"value_type": "SDS_P1", "value": "9.10"},
        {"value_type": "temperature", "value": "19.90"},  # the firmware's DHT22
        {"value_type": "humidity", "value": "61.00"},
        {"value_type": "BME280_temperature", "value": "20.41"},
        {"value_type": "BME280_humidity", "value": "57.32"},
        {"value_type": "BME280_pressure", "value": "98871.48"},
    ][::order]
    decoded = decode("sensor-community", {"esp8266id": "15092", "sensordatavalues": values})
    assert {r.metric: r.value for r in decoded} == {
        "pm10": 9.1,
        "temperature": 20.41,
        "humidity": 57.32,
        "pressure": 98871.48,
    }


# --- 7. flat JSON: long format and zone-less times ----------------------------------------------


def test_long_format_single_object_from_a_node_red_flow() -> None:
    (r,) = decode(
        "json", {"time": 1740826800, "metric": "PM2.5", "value": 12.1, "unit": "ug/m3"}, device_id="n1"
    )
    assert (r.device_id, r.metric, r.value, r.unit, r.time) == (
        "n1",
        "pm25",
        12.1,
        "ug/m3",
        datetime(2025, 3, 1, 11, 0, tzinfo=UTC),
    )


def test_long_format_with_its_own_device_and_an_unknown_metric() -> None:
    records = [
        {"device": "gw-1/s1", "metric": "temperature", "value": 4.5},
        {"device": "gw-1/s1", "metric": "battery", "value": 3.3},
    ]
    decoded = decode("json", records)
    assert [(r.device_id, r.metric, r.time) for r in decoded] == [("gw-1/s1", "temperature", RECEIVED)]
    assert [(p.reason, p.path) for p in decoded.rejected] == [("unknown_metric", "[1]")]


def test_two_wide_fields_for_one_metric_read_the_first_and_reject_the_other() -> None:
    decoded = decode("json", {"device_id": "d", "temp": 21.5, "temperature": 22.0, "rh": 40})
    assert {(r.metric, r.value) for r in decoded} == {("temperature", 21.5), ("humidity", 40.0)}
    assert [(p.reason, p.path) for p in decoded.rejected] == [("same_quantity", "temperature")]


def test_zone_less_times_are_read_in_the_city_time_zone() -> None:
    paris = ZoneInfo("Europe/Paris")
    (r,) = decode("json", {"device_id": "d", "time": "2025-07-01T14:00:00", "pm25": 3}, timezone=paris)
    assert r.time == datetime(2025, 7, 1, 12, 0, tzinfo=UTC)  # CEST = UTC+2
    (r,) = decode("json", {"device_id": "d", "time": "2025-07-01T14:00:00Z", "pm25": 3}, timezone=paris)
    assert r.time == datetime(2025, 7, 1, 14, 0, tzinfo=UTC)  # an explicit zone wins
    (r,) = decode("json", {"device_id": "d", "time": "2025-07-01T14:00:00", "pm25": 3})
    assert r.time == datetime(2025, 7, 1, 14, 0, tzinfo=UTC)  # naive_times = "UTC"


def test_the_naive_times_setting_defaults_to_the_city() -> None:
    assert ValidationSettings().naive_times == "city"


# --- 8. clear reasons -------------------------------------------------------------------------------


def test_a_senml_record_with_only_vs_says_so() -> None:
    decoded = decode("senml", [{"bn": "d1:", "n": "temp", "vs": "23.1"}])
    (bad,) = decoded.rejected
    assert bad.reason == "wrong_type" and "vs (a string)" in bad.detail and "send v" in bad.detail
    with pytest.raises(DecodeError, match=r"names: firmware"):
        decode("senml", [{"bn": "d1:", "n": "firmware", "vs": "1.2.3"}])


@pytest.mark.parametrize("fmt", sorted(set(DECODERS) - {"sparkplug-b"}))  # a binary format itself
def test_a_binary_payload_is_called_binary(fmt: str) -> None:
    frame = bytes.fromhex("0167 00e1 0268 5003 7327 c204 0201 4a".replace(" ", "")) + b"\x00\xff\x9c"
    assert reason_of(fmt, frame) == "binary_payload"


def test_a_ttn_uplink_without_decoded_payload_says_so() -> None:
    with pytest.raises(DecodeError, match="payload formatter") as info:
        decode("ttn", ttn_uplink(None))
    assert info.value.reason == "no_decoded_payload"


def test_an_empty_ngsi_ld_notification_is_not_an_error() -> None:
    empty = {"id": "urn:ngsi-ld:Notification:2", "type": "Notification", "data": [],
             "subscriptionId": "urn:ngsi-ld:Subscription:air", "notifiedAt": "2025-03-01T12Z"}  # fmt: skip
    decoded = decode("ngsi-ld", empty)
    assert decoded == [] and decoded.rejected == []


def test_every_reading_knows_where_in_its_payload_it_was_read() -> None:
    """The path goes into the dead letter when validation or the route rejects the reading later."""
    assert [r.path for r in decode("senml", GATEWAY_PACK)] == ["[0]", "[1]"]
    assert [r.path for r in decode("ttn", ttn_uplink({"temperature_1": 1.0}))] == [
        "decoded_payload.temperature_1"
    ]
    post = {"esp8266id": "1", "sensordatavalues": [{"value_type": "P2", "value": "4"}]}
    assert [r.path for r in decode("sensor-community", post)] == ["sensordatavalues[0]"]
    assert [r.path for r in decode("json", [{"device_id": "d", "pm25": 1}])] == ["[0].pm25"]
    notification = {"subscriptionId": "s", "data": [{"id": "e", "pm25": 1}, {"id": "f", "no2": 2}]}
    assert [r.path for r in decode("ngsi-ld", notification)] == ["data[0].pm25", "data[1].no2"]
