"""Sparkplug B messages shaped like the specification's examples (Sparkplug 3.0, "Payloads":
NBIRTH with bdSeq, Node Control/* and Properties/*, DBIRTH with named and aliased metrics, DATA by
alias), built with the generated protobuf module, plus city metrics the alias table knows."""

from __future__ import annotations

from schemas.sparkplug import sparkplug_b_pb2 as pb
from schemas.sparkplug.payloads import MetricValue, bd_seq_metric, payload

T0 = 1486144502122  # the specification's example timestamp (2017-02-03T17:55:02.122Z)
GROUP, NODE, DEVICE = "Sparkplug B Devices", "Raspberry Pi", "Emulated Device"

NODE_METRICS = [
    MetricValue("Node Control/Reboot", False, pb.Boolean),
    MetricValue("Node Control/Rebirth", False, pb.Boolean),
    MetricValue("Node Control/Next Server", False, pb.Boolean),
    MetricValue("Node Control/Scan Rate", 3000, pb.Int64),
    MetricValue("Supply Voltage", 12.1, pb.Float),
    MetricValue("Sensors/Temperature", 21.5, pb.Float, alias=1, unit="°C"),
]
DEVICE_METRICS = [
    MetricValue("Inputs/A", False, pb.Boolean, alias=0),
    MetricValue("Inputs/Water Flow", 12.0, pb.Double, alias=2, unit="L/min"),
    MetricValue("Inputs/Water Temp", 61.7, pb.Float, alias=3, unit="°F"),
    MetricValue("Outputs/Water Level", -3, pb.Int8, alias=4, unit="cm"),
]


def topic(kind: str, device: str | None = None, group: str = GROUP, node: str = NODE) -> str:
    return f"spBv1.0/{group}/{kind}/{node}" + (f"/{device}" if device else "")


def nbirth(bd_seq: int = 0, seq: int = 0, t: int = T0) -> bytes:
    return payload([bd_seq_metric(bd_seq), *NODE_METRICS], seq, t, birth=True)


def ndeath(bd_seq: int = 0, t: int = T0) -> bytes:
    return payload([bd_seq_metric(bd_seq)], None, t, birth=True)


def dbirth(seq: int = 1, t: int = T0) -> bytes:
    return payload(DEVICE_METRICS, seq, t, birth=True)


def ddata(seq: int, t: int, flow: float = 15.0, level: int = -7) -> bytes:
    """DDATA by alias only, as the specification sends it after the DBIRTH."""
    return payload(
        [MetricValue("", flow, pb.Double, alias=2), MetricValue("", level, pb.Int8, alias=4)], seq, t
    )


def ddeath(seq: int, t: int = T0) -> bytes:
    return payload([], seq, t)
