"""A city that publishes realistic telemetry: the demo's data and the benchmarks' load.

Each device kind speaks a format real deployments use (SenML packs, NGSI-LD and NGSI-v2 Smart
Data Models, Sensor.Community JSON; over MQTT, one meter kind may speak Sparkplug B: each meter an
edge node that sends its NBIRTH certificate once, then NDATA by alias, and its NBIRTH again when its
host asks with an NCMD rebirth request) with diurnal and weekly shapes from KPI_REFERENCE.md: NO2
at rush hours, O3 in the afternoon, PM higher at night, roadside noise 65-75 dB by day, water
peaks morning and evening, cumulative meters that sometimes reset.
Faults are injected at `fault_rate`: duplicates, late (out-of-order) readings, dropouts and garbage
payloads; and, 4 times rarer, an outage: the device goes silent for OUTAGE_TICKS readings
(the demo's no_data alerts). A meter_reset sets a meter's index to zero (the demo's first alerts).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from google.protobuf.message import DecodeError

from core.config import SimulatorSettings
from schemas.sparkplug import sparkplug_b_pb2 as pb
from schemas.sparkplug.payloads import REBIRTH, MetricValue, bd_seq_metric, payload


@dataclass(slots=True)
class SimMessage:
    topic: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class SimDevice:
    device_id: str
    kind: str
    phase: float
    scale: float
    meter_index: float = 0.0
    meter_started: bool = False
    silent_until: datetime | None = None  # an outage: no messages before this time
    sparkplug_seq: int | None = None  # the next Sparkplug B seq, once its NBIRTH is sent
    sparkplug_sent: tuple[datetime, float] | None = None  # its last message's time and power (W)


METER_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
OUTAGE_TICKS = 18
OUTAGE_RARITY = 4  # outages start at fault_rate / OUTAGE_RARITY per device and tick
# A Sparkplug B meter's metrics: (name, alias, engUnit); the alias table maps them to energy_total, power
SPARKPLUG_INDEX = ("Meter/Active Energy", 1, "kWh")
SPARKPLUG_RATE = ("Meter/Active Power", 2, "W")


def _rush(hour: float) -> float:
    """0..1 traffic intensity: peaks 07-09 and 17-20, low at night."""
    return max(math.exp(-((hour - 8) ** 2) / 2), math.exp(-((hour - 18.5) ** 2) / 3), 0.08)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


class CitySimulator:
    """Produces the messages of every device for one tick of simulated time."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.s = settings
        self.rng = random.Random(settings.seed)
        self.devices: list[SimDevice] = []
        counts = {
            "air": settings.air_stations,
            "noise": settings.noise_sensors,
            "traffic": settings.traffic_counters,
            "water": settings.water_meters,
            "electricity": settings.electricity_meters,
            "parking": settings.parking_spots,
            "waste": settings.waste_bins,
            "weather": settings.weather_stations,
        }
        for kind, n in counts.items():
            for i in range(n):
                self.devices.append(
                    SimDevice(
                        f"{kind}-{i + 1:04d}",
                        kind,
                        self.rng.uniform(-0.5, 0.5),
                        self.rng.uniform(0.7, 1.3),
                        self.rng.uniform(100, 5000) if kind in ("water", "electricity") else 0.0,
                    )
                )
        self._late: list[tuple[datetime, SimMessage]] = []
        self.faults: dict[str, int] = {}
        self._outages = random.Random(settings.seed + 1)  # a stream of its own
        self._sparkplug_kind = settings.sparkplug_kind if settings.transport == "mqtt" else None
        self._sparkplug_nodes = {d.device_id: d for d in self.devices if d.kind == self._sparkplug_kind}
        self.rebirths = 0  # rebirth requests answered

    @property
    def command_topic(self) -> str | None:
        """The topic filter of the commands to its Sparkplug B edge nodes (None: it has none)."""
        return f"spBv1.0/{self.s.city}/NCMD/+" if self._sparkplug_nodes else None

    def _fault(self, name: str) -> bool:
        if self.s.fault_rate and self.rng.random() < self.s.fault_rate:
            self.faults[name] = self.faults.get(name, 0) + 1
            return True
        return False

    def tick(self, t: datetime) -> Iterator[SimMessage]:
        """All messages for simulated time `t` (UTC), faults included."""
        local_hour = (t.hour + t.minute / 60 + 1) % 24  # the demo city is one hour ahead of UTC
        weekend = t.weekday() >= 5
        due = [m for when, m in self._late if when <= t]
        self._late = [(when, m) for when, m in self._late if when > t]
        yield from due
        for d in self.devices:
            if d.silent_until is not None and t < d.silent_until:
                continue
            if self.s.fault_rate and self._outages.random() < self.s.fault_rate / OUTAGE_RARITY:
                self.faults["outage"] = self.faults.get("outage", 0) + 1
                d.silent_until = t + timedelta(seconds=self.s.interval_s * OUTAGE_TICKS)
                continue
            if self._fault("dropout"):
                continue
            birth = d.kind == self._sparkplug_kind and d.sparkplug_seq is None
            msg = getattr(self, f"_{d.kind}")(d, t, local_hour, weekend)
            if birth:  # a certificate is never faulted: without it no NDATA of the node can be read
                yield msg
                continue
            if self._fault("garbage"):
                yield self._garbage(msg)
                continue
            if self._fault("late"):
                self._late.append((t + timedelta(seconds=self.s.interval_s * self.rng.randint(3, 30)), msg))
                continue
            yield msg
            if self._fault("duplicate"):
                yield msg

    def _topic(self, fmt: str, device: str) -> str:
        return f"city/{self.s.city}/{fmt}/{device}"

    def _senml(self, d: SimDevice, t: datetime, records: list[tuple[str, str, float]]) -> SimMessage:
        pack: list[dict[str, object]] = [{"bn": f"{d.device_id}:", "bt": round(t.timestamp(), 3)}]
        for i, (name, unit, value) in enumerate(records):
            rec: dict[str, object] = {"n": name, "u": unit, "v": round(value, 3)}
            if i == 0:
                pack[0].update(rec)
            else:
                pack.append(rec)
        return SimMessage(self._topic("senml", d.device_id), json.dumps(pack).encode())

    def _air(self, d: SimDevice, t: datetime, h: float, weekend: bool) -> SimMessage:
        g = self.rng.gauss
        rush = _rush(h) * (0.6 if weekend else 1.0)
        night = 1.0 + 0.4 * math.cos((h - 2) / 24 * 2 * math.pi)
        winter = 1.0 + 0.3 * math.cos((t.timetuple().tm_yday - 15) / 365 * 2 * math.pi)
        pm25 = max(0.5, d.scale * (7 + 5 * night * winter + 3 * rush) + g(0, 1.2))
        no2 = max(1.0, d.scale * (12 + 35 * rush) + g(0, 3))
        o3 = max(1.0, 45 + 35 * math.sin((h - 9) / 24 * 2 * math.pi) - 0.5 * no2 + g(0, 4))
        return self._senml(
            d,
            t,
            [
                ("pm25", "ug/m3", pm25),
                ("pm10", "ug/m3", pm25 * 1.6 + abs(g(0, 2))),
                ("no2", "ug/m3", no2),
                ("o3", "ug/m3", o3),
                ("so2", "ug/m3", max(0.2, 3 + g(0, 0.8))),
                ("co", "mg/m3", max(0.05, 0.3 + 0.5 * rush + g(0, 0.05))),
            ],
        )

    def _noise(self, d: SimDevice, t: datetime, h: float, weekend: bool) -> SimMessage:
        day = 1.0 if 7 <= h < 19 else 0.6 if 19 <= h < 23 else 0.0
        laeq = 52 + 10 * day + 6 * _rush(h) * (0.7 if weekend else 1) + 4 * d.phase + self.rng.gauss(0, 1.5)
        return self._senml(d, t, [("laeq", "dB", laeq), ("lamax", "dB", laeq + abs(self.rng.gauss(9, 3)))])

    def _traffic(self, d: SimDevice, t: datetime, h: float, weekend: bool) -> SimMessage:
        rush = _rush(h) * (0.6 if weekend else 1.0)
        count = max(0, round(d.scale * 120 * rush * self.s.interval_s / 60 + self.rng.gauss(0, 2)))
        speed = max(5.0, 50 - 28 * rush + self.rng.gauss(0, 3))
        entity = {
            "id": f"urn:ngsi-ld:TrafficFlowObserved:{d.device_id}",
            "type": "TrafficFlowObserved",
            "intensity": {"type": "Property", "value": count, "observedAt": _iso(t)},
            "averageVehicleSpeed": {
                "type": "Property",
                "value": round(speed, 1),
                "unitCode": "KMH",
                "observedAt": _iso(t),
            },
            "occupancy": {
                "type": "Property",
                "value": round(min(1.0, 0.05 + 0.6 * rush), 3),
                "observedAt": _iso(t),
            },
            "dateObservedTo": {"type": "Property", "value": _iso(t)},
        }
        return SimMessage(self._topic("ngsi-ld", d.device_id), json.dumps(entity).encode())

    def _meter(
        self, d: SimDevice, t: datetime, h: float, per_hour: float, name: str, unit: str
    ) -> SimMessage:
        peaks = 0.3 + math.exp(-((h - 7.5) ** 2) / 2) + math.exp(-((h - 20) ** 2) / 3)
        if not d.meter_started:  # continue from where a meter would be now, so restarts don't go back
            d.meter_index += d.scale * per_hour * 0.6 * (t - METER_EPOCH).total_seconds() / 3600
            d.meter_started = True
        d.meter_index += max(
            0.0, d.scale * per_hour * peaks * self.s.interval_s / 3600 * self.rng.uniform(0.6, 1.4)
        )
        if self._fault("meter_reset"):
            d.meter_index = 0.0
        if d.kind == self._sparkplug_kind:
            return self._sparkplug(d, t, d.scale * per_hour * peaks)
        return self._senml(d, t, [(name, unit, d.meter_index)])

    def _sparkplug(self, d: SimDevice, t: datetime, rate_per_hour: float) -> SimMessage:
        """The meter as a Sparkplug B edge node: its NBIRTH (names, aliases, units) the first time,
        then NDATA by alias, seq counting 0..255 over both."""
        d.sparkplug_sent = (t, round(rate_per_hour * 1000, 1))  # kWh per hour = kW
        return self._sparkplug_message(d, rebirth=False)

    def _sparkplug_message(self, d: SimDevice, rebirth: bool) -> SimMessage:
        """The node's values of its last tick: an NBIRTH (seq 0) when it has none yet or `rebirth`,
        else NDATA."""
        assert d.sparkplug_sent is not None
        t, watts = d.sparkplug_sent
        metrics = [
            MetricValue(SPARKPLUG_INDEX[0], round(d.meter_index, 3), pb.Double, *SPARKPLUG_INDEX[1:]),
            MetricValue(SPARKPLUG_RATE[0], watts, pb.Float, *SPARKPLUG_RATE[1:]),
        ]
        if rebirth or d.sparkplug_seq is None:
            kind, seq = "NBIRTH", 0
            metrics = [bd_seq_metric(0), MetricValue(REBIRTH, False, pb.Boolean), *metrics]
        else:
            kind, seq = "NDATA", d.sparkplug_seq
        data = payload(metrics, seq, round(t.timestamp() * 1000), birth=kind == "NBIRTH")
        d.sparkplug_seq = (seq + 1) % 256
        return SimMessage(f"spBv1.0/{self.s.city}/{kind}/{d.device_id}", data)

    def answer_command(self, command: SimMessage) -> SimMessage | None:
        """An edge node's answer to its host's NCMD: `Node Control/Rebirth` = true makes the node
        publish its NBIRTH again at once (seq 0, the same bdSeq as its MQTT session's, its current
        values: as of its last tick, so the host stores nothing twice), then NDATA from seq 1
        (Sparkplug B 3.0, "Rebirth Request"). The simulated nodes have no devices, hence no DBIRTH.
        None for anything else: another group's or an unknown node's command, another metric, an
        unreadable payload, a node that has not been born yet (its first tick births it) or is in an
        outage (it answers a later request)."""
        parts = command.topic.split("/")
        if len(parts) != 4 or parts[:3] != ["spBv1.0", self.s.city, "NCMD"]:
            return None
        d = self._sparkplug_nodes.get(parts[3])
        if d is None or d.sparkplug_sent is None:
            return None
        if d.silent_until is not None and d.sparkplug_sent[0] < d.silent_until:
            return None
        message = pb.Payload()
        try:
            message.ParseFromString(command.payload)
        except DecodeError:
            return None
        if not any(m.name == REBIRTH and m.boolean_value for m in message.metrics):
            return None
        self.rebirths += 1
        return self._sparkplug_message(d, rebirth=True)

    def _water(self, d: SimDevice, t: datetime, h: float, weekend: bool) -> SimMessage:
        return self._meter(d, t, h, 0.012, "water_volume_total", "m3")  # ~150 L per person-day, 2 people

    def _electricity(self, d: SimDevice, t: datetime, h: float, weekend: bool) -> SimMessage:
        return self._meter(d, t, h, 0.35, "energy_total", "kWh")

    def _parking(self, d: SimDevice, t: datetime, h: float, weekend: bool) -> SimMessage:
        occupied = self.rng.random() < 0.3 + 0.5 * _rush(h)
        entity = {
            "id": f"urn:ngsi-ld:ParkingSpot:{d.device_id}",
            "type": "ParkingSpot",
            "status": {
                "type": "Text",
                "value": "occupied" if occupied else "free",
                "metadata": {"timestamp": {"type": "DateTime", "value": _iso(t)}},
            },
            "dateModified": {"type": "DateTime", "value": _iso(t)},
        }
        return SimMessage(self._topic("ngsi-v2", d.device_id), json.dumps(entity).encode())

    def _waste(self, d: SimDevice, t: datetime, h: float, weekend: bool) -> SimMessage:
        fill = ((t.timestamp() / 86400 / (2 + d.scale)) + d.phase) % 1.0
        entity = {
            "id": f"urn:ngsi-ld:WasteContainer:{d.device_id}",
            "type": "WasteContainer",
            "fillingLevel": {"type": "Property", "value": round(fill, 3), "observedAt": _iso(t)},
            "temperature": {
                "type": "Property",
                "value": round(12 + 6 * math.sin(h / 24 * 2 * math.pi), 1),
                "unitCode": "CEL",
                "observedAt": _iso(t),
            },
        }
        return SimMessage(self._topic("ngsi-ld", d.device_id), json.dumps(entity).encode())

    def _weather(self, d: SimDevice, t: datetime, h: float, weekend: bool) -> SimMessage:
        temp = 11 + 6 * math.sin((h - 9) / 24 * 2 * math.pi) + self.rng.gauss(0, 0.3)
        payload = {  # no esp8266id: the topic (MQTT) or the X-Sensor header (Kafka) names the station
            "software_version": "NRZ-2020-129",
            "sensordatavalues": [
                {"value_type": "temperature", "value": f"{temp:.2f}"},
                {
                    "value_type": "humidity",
                    "value": f"{min(100.0, 70 - 2 * temp + self.rng.gauss(0, 2)):.2f}",
                },
                {"value_type": "pressure", "value": f"{101325 + self.rng.gauss(0, 150):.2f}"},
            ],
        }
        return SimMessage(
            self._topic("sensor-community", d.device_id),
            json.dumps(payload).encode(),
            {"X-Sensor": d.device_id},
        )

    def _garbage(self, msg: SimMessage) -> SimMessage:
        kind = self.rng.choice(["truncated", "bytes", "nan", "future", "epoch", "sql"])
        p = msg.payload
        if kind == "truncated":
            p = p[: max(1, len(p) // 2)]
        elif kind == "bytes":
            p = self.rng.randbytes(64)
        elif kind == "nan":
            p = p.replace(b'"v": ', b'"v": NaN, "x": ', 1) if b'"v": ' in p else b'{"value": NaN}'
        elif kind == "future":
            p = p.replace(b'"bt": ', b'"bt": 9', 1) if b'"bt": ' in p else p.replace(b"20", b"29", 1)
        elif kind == "epoch":
            p = (
                p.replace(b'"bt": ', b'"bt": 300000000, "x": ', 1)
                if b'"bt": ' in p
                else p.replace(b"20", b"19", 1)
            )
        else:
            p = p.replace(b'"bn": "', b'"bn": "x\'; DROP TABLE readings; --', 1)
        self.faults[f"garbage_{kind}"] = self.faults.get(f"garbage_{kind}", 0) + 1
        return SimMessage(msg.topic, p, msg.headers)
