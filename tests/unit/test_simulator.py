"""The simulator: every kind decodes to plausible readings; faults appear at the configured rate."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from core.config import Settings, SimulatorSettings
from ingest.routing import Router
from ingest.simulator import CitySimulator, SimMessage
from ingest.validation import Rejected, Validator
from schemas.decoders import DECODERS
from schemas.readings import DecodeContext
from schemas.sparkplug import SparkplugSessions

T0 = datetime(2026, 6, 3, 0, 0, tzinfo=UTC)  # a Wednesday


def decode_all(sim: CitySimulator, hours: int) -> tuple[Counter[str], Counter[str], dict[str, list[float]]]:
    router, validator = Router(Settings().mqtt.routes), Validator(Settings().validation)
    metrics: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    by_hour: dict[str, list[float]] = {}
    t = T0
    while t < T0 + timedelta(hours=hours):
        for m in sim.tick(t):
            route = router.match(m.topic)
            assert route is not None, m.topic
            ctx = DecodeContext(
                default_time=t, topic=m.topic, headers=m.headers, device_id=route.device, city=route.city
            )
            try:
                for r in DECODERS[route.format](m.payload, ctx):
                    route.device_of(r.device_id), route.city_of(r.city)  # the route's identity rules
                    validator.canonical(r, t)
                    metrics[r.metric] += 1
                    if r.metric == "no2":
                        by_hour.setdefault(f"{t.hour:02d}", []).append(r.value)
            except (Rejected, ValueError) as e:
                errors[getattr(e, "reason", type(e).__name__)] += 1
        t += timedelta(minutes=10)
    return metrics, errors, by_hour


def test_every_device_kind_produces_valid_readings_without_faults() -> None:
    sim = CitySimulator(SimulatorSettings(fault_rate=0.0, interval_s=600))
    metrics, errors, _ = decode_all(sim, hours=2)
    assert not errors
    for metric in (
        "pm25",
        "pm10",
        "no2",
        "o3",
        "so2",
        "co",
        "laeq",
        "vehicle_count",
        "vehicle_speed",
        "occupancy",
        "water_volume_total",
        "energy_total",
        "parking_occupied",
        "fill_level",
        "temperature",
        "humidity",
        "pressure",
    ):
        assert metrics[metric] > 0, metric


def test_no2_peaks_at_rush_hour_not_at_night() -> None:
    sim = CitySimulator(SimulatorSettings(fault_rate=0.0, interval_s=600))
    _, _, by_hour = decode_all(sim, hours=24)
    mean = {h: sum(v) / len(v) for h, v in by_hour.items()}
    assert mean["07"] > 1.5 * mean["02"]  # 08:00 local (UTC+1) against 03:00 local


def test_faults_are_injected_and_garbage_is_rejected() -> None:
    sim = CitySimulator(SimulatorSettings(fault_rate=0.05, interval_s=600, seed=7))
    _, errors, _ = decode_all(sim, hours=6)
    assert {"duplicate", "late", "dropout", "garbage"} <= set(sim.faults)
    assert sum(errors.values()) > 0


def test_an_outage_silences_a_device_for_its_ticks_then_it_reports_again() -> None:
    """The fault behind the demo's no_data alerts."""
    from itertools import pairwise

    from ingest.simulator import OUTAGE_TICKS

    sim = CitySimulator(SimulatorSettings(fault_rate=0.2, interval_s=10, air_stations=3))
    seen: dict[str, list[int]] = {}
    for tick in range(300):
        for m in sim.tick(T0 + timedelta(seconds=10 * tick)):
            seen.setdefault(m.topic.rsplit("/", 1)[1], []).append(tick)
    assert sim.faults["outage"] > 0
    gaps = [b - a for ticks in seen.values() for a, b in pairwise(ticks) if b - a > 5]
    assert gaps and max(gaps) >= OUTAGE_TICKS


def test_sparkplug_meters_send_one_nbirth_then_ndata_by_alias_that_decode_in_sequence() -> None:
    """Electricity meters as Sparkplug B edge nodes: the NBIRTH names the metrics (kWh, W), every
    NDATA sends aliases only; decoded with one pipeline's sessions, in order, without a seq gap."""
    settings = SimulatorSettings(fault_rate=0.0, interval_s=600, sparkplug_kind="electricity", air_stations=0)
    sim, router, sessions = CitySimulator(settings), Router(Settings().mqtt.routes), SparkplugSessions()
    kinds: Counter[str] = Counter()
    values: dict[str, list[float]] = {}
    t = T0
    for _ in range(3):
        for m in sim.tick(t):
            if not m.topic.startswith("spBv1.0/"):
                continue
            kinds[m.topic.split("/")[2]] += 1
            route = router.match(m.topic)
            assert route is not None and route.format == "sparkplug-b" and route.city == "demo"
            ctx = DecodeContext(default_time=t, topic=m.topic, city=route.city, sparkplug=sessions)
            decoded = DECODERS["sparkplug-b"](m.payload, ctx)
            assert not decoded.rejected
            for r in decoded:
                values.setdefault(f"{r.device_id}/{r.metric}", []).append(r.value)
        t += timedelta(minutes=10)
    assert kinds == {"NBIRTH": 40, "NDATA": 80}
    assert sessions.seq_gaps == 0
    energy = values["electricity-0001/energy_total"]
    assert len(energy) == 3 and energy == sorted(energy) and len(values["electricity-0001/power"]) == 3


def test_sparkplug_is_mqtt_only_so_a_kafka_simulator_keeps_senml() -> None:
    settings = SimulatorSettings(fault_rate=0.0, transport="kafka", sparkplug_kind="electricity")
    topics = {m.topic.split("/")[2] for m in CitySimulator(settings).tick(T0)}
    assert "senml" in topics and not any(t.startswith("N") for t in topics)


def test_a_sparkplug_meter_answers_only_a_rebirth_command_addressed_to_it_with_a_fresh_nbirth() -> None:
    """Node Control/Rebirth = true to a born node: an NBIRTH of seq 0 with the values of its last
    tick (decoded to the same readings), then NDATA from seq 1. Nothing for another group, an
    unknown node, another command, Rebirth = false, a garbled payload, a node not born yet, or a
    node in an outage."""
    from schemas.sparkplug import sparkplug_b_pb2 as pb
    from schemas.sparkplug.payloads import MetricValue, payload, rebirth_command

    sim = CitySimulator(
        SimulatorSettings(
            fault_rate=0.0, interval_s=600, sparkplug_kind="electricity", air_stations=0, electricity_meters=2
        )
    )
    node, rebirth = "electricity-0001", rebirth_command(0)
    assert sim.command_topic == "spBv1.0/demo/NCMD/+"
    assert sim.answer_command(SimMessage(f"spBv1.0/demo/NCMD/{node}", rebirth)) is None  # not born yet
    first = {m.topic: m for m in sim.tick(T0) if m.topic.startswith("spBv1.0/")}
    second = {m.topic: m for m in sim.tick(T0 + timedelta(minutes=10)) if m.topic.startswith("spBv1.0/")}
    reboot = payload([MetricValue("Node Control/Reboot", True, pb.Boolean)], None, 0, birth=True)
    no_rebirth = payload([MetricValue("Node Control/Rebirth", False, pb.Boolean)], None, 0, birth=True)
    for topic, data in (
        (f"spBv1.0/other/NCMD/{node}", rebirth),
        ("spBv1.0/demo/NCMD/water-0001", rebirth),
        (f"spBv1.0/demo/DCMD/{node}", rebirth),
        (f"spBv1.0/demo/NCMD/{node}", reboot),
        (f"spBv1.0/demo/NCMD/{node}", no_rebirth),
        (f"spBv1.0/demo/NCMD/{node}", b"\xff\x00garbage"),
    ):
        assert sim.answer_command(SimMessage(topic, data)) is None, (topic, data)
    answer = sim.answer_command(SimMessage(f"spBv1.0/demo/NCMD/{node}", rebirth))
    assert answer is not None and answer.topic == f"spBv1.0/demo/NBIRTH/{node}"
    third = {m.topic: m for m in sim.tick(T0 + timedelta(minutes=20)) if m.topic.startswith("spBv1.0/")}
    assert sim.rebirths == 1

    sessions, router = SparkplugSessions(), Router(Settings().mqtt.routes)

    def decode(m: SimMessage) -> tuple[int, list[tuple[str, float]]]:
        route = router.match(m.topic)
        assert route is not None
        ctx = DecodeContext(default_time=T0, topic=m.topic, city=route.city, sparkplug=sessions)
        decoded = DECODERS["sparkplug-b"](m.payload, ctx)
        assert not decoded.rejected
        parsed = pb.Payload()
        parsed.ParseFromString(m.payload)
        return parsed.seq, [(r.metric, r.value) for r in decoded]

    topic = f"spBv1.0/demo/%s/{node}"
    decoded = [
        decode(m) for m in (first[topic % "NBIRTH"], second[topic % "NDATA"], answer, third[topic % "NDATA"])
    ]
    assert [seq for seq, _ in decoded] == [0, 1, 0, 1] and sessions.seq_gaps == 0
    assert decoded[2][1] == decoded[1][1] and len(decoded[2][1]) == 2  # the last tick's values again

    [other] = [d for d in sim.devices if d.device_id == "electricity-0002"]
    other.silent_until = T0 + timedelta(hours=1)  # an outage since its last tick
    assert sim.answer_command(SimMessage("spBv1.0/demo/NCMD/electricity-0002", rebirth)) is None
