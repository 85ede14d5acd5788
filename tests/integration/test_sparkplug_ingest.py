"""Sparkplug B over the real broker (Mosquitto) into readings: BIRTH certificates, DATA by alias,
DEATH, aliases surviving a restart, DATA before BIRTH dead-lettered and requeued, hostile payloads,
rebirth requests and the simulator's edge nodes answering them."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from core.config import Settings, SimulatorSettings
from ingest.cli import _simulate
from ingest.deadletters import DeadLetterFilter, requeue_dead_letters
from ingest.service import Service
from ingest.simulator import SimMessage
from schemas.sparkplug import sparkplug_b_pb2 as pb
from schemas.sparkplug.payloads import MetricValue, payload
from tests import sparkplug_messages as sp
from tests.conftest import PrivateMosquitto
from tests.integration.test_mqtt_ingest import publish, settings_for

pytestmark = pytest.mark.integration

GROUP = "demo"  # the default route `spBv1.0/+/#` takes the city from the group
T = (int(time.time()) // 3600 * 3600 - 86400) * 1000  # a day ago, in ms
NODE_DEVICE = sp.NODE
DEVICE = f"{sp.NODE}:{sp.DEVICE}"


def msg(kind: str, data: bytes, device: str | None = None) -> SimMessage:
    return SimMessage(sp.topic(kind, device, group=GROUP), data)


async def until(dsn: str, query: str, expected: object, timeout: float = 30) -> object:
    """Poll `query` until it returns `expected` (or the timeout passes); the last answer."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            got = await conn.fetchval(query)
            if got == expected or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def stored(dsn: str) -> dict[tuple[str, str], list[float]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT d.device_id, m.name, r.value FROM readings r JOIN devices d USING (device_key) "
            "JOIN metrics m USING (metric_id) WHERE d.city_id = 'demo' ORDER BY r.time"
        )
    finally:
        await conn.close()
    out: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        out.setdefault((r["device_id"], r["name"]), []).append(round(r["value"], 6))
    return out


async def sessions(dsn: str) -> dict[str, tuple[bool, int | None, int | None]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT device_id, online, bd_seq, seq FROM sparkplug_sessions")
    finally:
        await conn.close()
    return {r["device_id"]: (r["online"], r["bd_seq"], r["seq"]) for r in rows}


async def dead_letters(dsn: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT reason, detail FROM dead_letters ORDER BY id")
    finally:
        await conn.close()
    return [(r["reason"], r["detail"]) for r in rows]


def sparkplug_settings(dsn: str, port: int) -> Settings:
    return settings_for(dsn, port, client_id="citykpi-sparkplug")


async def test_births_data_by_alias_and_death_land_in_readings_and_sessions_across_a_restart(
    tsdb: str, mosquitto: PrivateMosquitto
) -> None:
    """NBIRTH/DBIRTH values and units (L/min -> m³/h, °F -> °C, cm -> m), DDATA by alias, then a
    restart: the aliases come back from the database, so DDATA decodes with no new BIRTH."""
    service = Service(sparkplug_settings(tsdb, mosquitto.port))
    await service.start()
    try:
        await publish(
            mosquitto.port,
            [
                msg("NBIRTH", sp.nbirth(bd_seq=3, seq=0, t=T)),
                msg("DBIRTH", sp.dbirth(seq=1, t=T), sp.DEVICE),
                msg("DDATA", sp.ddata(seq=2, t=T + 60_000, flow=30.0, level=-7), sp.DEVICE),
            ],
        )
        assert await until(tsdb, "SELECT count(*) FROM readings", 6) == 6
    finally:
        await service.stop()
    assert await stored(tsdb) == {
        (NODE_DEVICE, "temperature"): [21.5],
        (DEVICE, "water_flow"): [0.72, 1.8],
        (DEVICE, "water_temperature"): [16.5],
        (DEVICE, "water_level"): [-0.03, -0.07],
    }
    assert await sessions(tsdb) == {"": (True, 3, 2), sp.DEVICE: (True, None, None)}

    restarted = Service(sparkplug_settings(tsdb, mosquitto.port))
    await restarted.start()
    try:
        await publish(
            mosquitto.port, [msg("DDATA", sp.ddata(seq=3, t=T + 120_000, flow=6.0, level=-9), sp.DEVICE)]
        )
        assert await until(tsdb, "SELECT count(*) FROM readings", 8) == 8
        assert restarted.pipeline.sparkplug.seq_gaps == 0  # seq 3 follows the stored 2
        await publish(mosquitto.port, [msg("NDEATH", sp.ndeath(bd_seq=3, t=T + 130_000))])
        assert await until(tsdb, "SELECT bool_or(online) FROM sparkplug_sessions", False) is False
        await publish(mosquitto.port, [msg("DDATA", sp.ddata(seq=4, t=T + 180_000), sp.DEVICE)])
        assert await until(tsdb, "SELECT count(*) FROM dead_letters", 1) == 1
    finally:
        await restarted.stop()
    assert (await stored(tsdb))[(DEVICE, "water_flow")] == [0.72, 1.8, 0.36]
    assert await sessions(tsdb) == {"": (False, 3, 3), sp.DEVICE: (False, None, None)}  # no seq when dead
    [(reason, detail)] = await dead_letters(tsdb)
    assert reason == "no_birth" and "after its NDEATH" in detail


async def test_data_before_its_birth_is_a_dead_letter_that_a_requeue_stores_after_the_birth(
    tsdb: str, mosquitto: PrivateMosquitto
) -> None:
    service = Service(sparkplug_settings(tsdb, mosquitto.port))
    await service.start()
    try:
        await publish(mosquitto.port, [msg("DDATA", sp.ddata(seq=5, t=T, flow=12.0), sp.DEVICE)])
        assert await until(tsdb, "SELECT count(*) FROM dead_letters", 1) == 1
        assert service.pipeline.sparkplug.rebirths_wanted
        await publish(
            mosquitto.port,
            [msg("NBIRTH", sp.nbirth(t=T + 1000)), msg("DBIRTH", sp.dbirth(seq=1, t=T + 1000), sp.DEVICE)],
        )
        assert await until(tsdb, "SELECT count(*) FROM readings", 4) == 4
    finally:
        await service.stop()
    [(reason, detail)] = await dead_letters(tsdb)
    assert reason == "no_birth" and "before its NBIRTH" in detail
    result = await requeue_dead_letters(
        sparkplug_settings(tsdb, mosquitto.port), DeadLetterFilter(("no_birth",))
    )
    assert (result.messages, result.stored, result.still_rejected) == (1, 2, 0)
    assert (await stored(tsdb))[(DEVICE, "water_flow")] == [0.72, 0.72]  # DBIRTH's 12 L/min, then the DDATA's
    assert await sessions(tsdb) == {
        "": (True, 0, 1),
        sp.DEVICE: (True, None, None),
    }  # the requeue changed none


async def test_hostile_sparkplug_payloads_are_dead_lettered_and_their_neighbours_stored(
    tsdb: str, mosquitto: PrivateMosquitto
) -> None:
    """Truncated protobuf, JSON on a Sparkplug topic, 3 MB of metrics, a wrong value type, a stale
    NDEATH (an older bdSeq) and a seq gap, among valid messages of the same node."""
    huge = payload([MetricValue(f"m{i}", 1.0) for i in range(150_000)], 3, T)
    wrong_type = pb.Payload(timestamp=T + 2000, seq=3)
    wrong_type.metrics.add(alias=2, datatype=pb.String, string_value="12.5")
    wrong_type.metrics.add(alias=4, int_value=0xFE)  # Int8 -2 cm, stored
    service = Service(sparkplug_settings(tsdb, mosquitto.port))
    await service.start()
    try:
        await publish(
            mosquitto.port,
            [
                msg("NBIRTH", sp.nbirth(bd_seq=7, t=T)),
                msg("DBIRTH", sp.dbirth(seq=1, t=T), sp.DEVICE),
                msg("DDATA", sp.ddata(seq=2, t=T + 1000)[:-4], sp.DEVICE),
                msg("DDATA", b'{"water_flow": 1}', sp.DEVICE),
                msg("NDATA", huge),
                msg("DDATA", wrong_type.SerializeToString(), sp.DEVICE),
                msg("NDEATH", sp.ndeath(bd_seq=6, t=T + 3000)),
                msg("DDATA", sp.ddata(seq=9, t=T + 4000, flow=60.0, level=-1), sp.DEVICE),
            ],
        )
        assert await until(tsdb, "SELECT count(*) FROM readings", 7) == 7
        assert await until(tsdb, "SELECT count(*) FROM dead_letters", 5) == 5
        assert service.pipeline.sparkplug.seq_gaps == 2  # seq 2 never arrived readable; 9 after 3
        assert service.healthy()
    finally:
        await service.stop()
    reasons = [r for r, _d in await dead_letters(tsdb)]
    assert sorted(reasons) == [
        "bad_protobuf",
        "bad_protobuf",
        "payload_too_large",
        "stale_death",
        "wrong_type",
    ]
    assert (await stored(tsdb))[(DEVICE, "water_level")] == [-0.03, -0.02, -0.01]
    assert (await sessions(tsdb))[""][0] is True  # the stale NDEATH left the node online


async def test_data_before_birth_sends_one_ncmd_rebirth_to_that_edge_node(
    tsdb: str, mosquitto: PrivateMosquitto
) -> None:
    """The host asks the node for its BIRTH (NCMD `Node Control/Rebirth` = true), once per
    `sparkplug_rebirth_s` however many unreadable DATA it sends; a node that was born is not asked."""
    received: list[tuple[str, bytes]] = []
    listener = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="i16s-edge-node")
    listener.on_message = lambda _c, _u, m: received.append((m.topic, m.payload))
    listener.connect("127.0.0.1", mosquitto.port)
    listener.subscribe("spBv1.0/+/NCMD/#", qos=1)
    listener.loop_start()
    service = Service(sparkplug_settings(tsdb, mosquitto.port))
    await service.start()
    try:
        born = SimMessage(sp.topic("NBIRTH", node="born-node", group=GROUP), sp.nbirth(t=T))
        await publish(mosquitto.port, [born])
        await publish(mosquitto.port, [msg("DDATA", sp.ddata(seq=i, t=T + i), sp.DEVICE) for i in range(3)])
        assert await until(tsdb, "SELECT count(*) FROM dead_letters", 3) == 3
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # a second request would have been published by now
    finally:
        await service.stop()
        listener.loop_stop()
        listener.disconnect()
    assert [t for t, _p in received] == [sp.topic("NCMD", group=GROUP)]
    command = pb.Payload()
    command.ParseFromString(received[0][1])
    assert [(m.name, m.datatype, m.boolean_value) for m in command.metrics] == [
        ("Node Control/Rebirth", pb.Boolean, True)
    ]


async def test_the_simulators_edge_node_answers_a_rebirth_request_and_the_host_stops_asking(
    tsdb: str, mosquitto: PrivateMosquitto
) -> None:
    """`citykpi simulate`'s Sparkplug B meter (one tick every 4 s) is born, then a stray NDATA with
    a seq out of order breaks its sequence (as a late or lost message would): the host asks it once
    for its BIRTH, the node answers at once with an NBIRTH (seq 0, the values of its last tick, so
    nothing is stored twice) and goes on with NDATA from seq 1. The host is satisfied: no second
    request, although it would repeat one every second, and no dead letter."""
    settings = sparkplug_settings(tsdb, mosquitto.port)
    settings.mqtt.sparkplug_rebirth_s = 1.0
    kinds = ("air_stations", "noise_sensors", "traffic_counters", "water_meters", "parking_spots")
    kinds += ("waste_bins", "weather_stations")
    settings.simulator = SimulatorSettings(
        **dict.fromkeys(kinds, 0),
        electricity_meters=1,
        interval_s=4.0,
        fault_rate=0.0,
        sparkplug_kind="electricity",
    )
    node = "electricity-0001"
    seen: list[tuple[str, bytes]] = []
    listener = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rebirth-watch")
    listener.on_message = lambda _c, _u, m: seen.append((m.topic.split("/")[2], m.payload))
    listener.connect("127.0.0.1", mosquitto.port)
    listener.subscribe(f"spBv1.0/demo/+/{node}", qos=1)
    listener.loop_start()

    async def after(kind: str, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while sum(k == kind for k, _ in seen) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    service = Service(settings)
    await service.start()
    simulator = asyncio.create_task(_simulate(settings, None))
    try:
        await after("NBIRTH", 1)
        stray = SimMessage(f"spBv1.0/demo/NDATA/{node}", payload([], 200, int(time.time() * 1000)))
        await publish(mosquitto.port, [stray])
        await after("NBIRTH", 2)
        await after("NDATA", 3)  # the stray, then two ticks after the rebirth
        await asyncio.sleep(1.5)
        wanted, gaps = set(service.pipeline.sparkplug.rebirths_wanted), service.pipeline.sparkplug.seq_gaps
    finally:
        simulator.cancel()
        await asyncio.gather(simulator, return_exceptions=True)
        await service.stop()
        listener.loop_stop()
        listener.disconnect()
    assert [k for k, _ in seen] == ["NBIRTH", "NDATA", "NCMD", "NBIRTH", "NDATA", "NDATA"]
    seqs = []
    for _k, data in seen:
        message = pb.Payload()
        message.ParseFromString(data)
        seqs.append(message.seq if message.HasField("seq") else None)
    assert seqs == [0, 200, None, 0, 1, 2]
    assert (wanted, gaps) == (set(), 1)
    assert await dead_letters(tsdb) == []
    values = await stored(tsdb)
    assert len(values[(node, "energy_total")]) == 3  # the birth's and two ticks': the rebirth adds none
