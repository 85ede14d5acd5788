"""Building Sparkplug B payloads with the generated module: what an edge node sends (the simulator's
BIRTH, DATA and DEATH certificates) and what a host sends it (the `Node Control/Rebirth` command)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from schemas.sparkplug import sparkplug_b_pb2 as pb

REBIRTH = "Node Control/Rebirth"


@dataclass(frozen=True, slots=True)
class MetricValue:
    """One metric to send: `name` in a BIRTH (with its alias), only the alias in DATA when it has one."""

    name: str
    value: float | bool
    datatype: int = pb.Double
    alias: int | None = None
    unit: str | None = None  # sent as the `engUnit` property in a BIRTH
    timestamp_ms: int | None = None


def _set_value(m: pb.Payload.Metric, datatype: int, value: float | bool) -> None:
    if datatype == pb.Boolean:
        m.boolean_value = bool(value)
    elif datatype == pb.Float:
        m.float_value = float(value)
    elif datatype == pb.Double:
        m.double_value = float(value)
    elif datatype in (pb.Int64, pb.UInt64, pb.DateTime):
        m.long_value = int(value) & (2**64 - 1)  # two's complement in the unsigned field
    else:
        m.int_value = int(value) & (2**32 - 1)


def payload(metrics: Iterable[MetricValue], seq: int | None, timestamp_ms: int, birth: bool = False) -> bytes:
    """A serialised payload; `birth` sends names, datatypes and units, otherwise aliases where known."""
    p = pb.Payload(timestamp=timestamp_ms)
    if seq is not None:
        p.seq = seq
    for mv in metrics:
        m = p.metrics.add()
        if birth or mv.alias is None:
            m.name = mv.name
        if mv.alias is not None:
            m.alias = mv.alias
        if birth:
            m.datatype = mv.datatype
            if mv.unit is not None:
                m.properties.keys.append("engUnit")
                m.properties.values.add(type=pb.String, string_value=mv.unit)
        m.timestamp = mv.timestamp_ms if mv.timestamp_ms is not None else timestamp_ms
        _set_value(m, mv.datatype, mv.value)
    return p.SerializeToString()


def bd_seq_metric(bd_seq: int) -> MetricValue:
    """The `bdSeq` metric of an NBIRTH and of the NDEATH registered as its will."""
    return MetricValue("bdSeq", bd_seq, pb.Int64)


def rebirth_command(timestamp_ms: int) -> bytes:
    """The NCMD a host sends to make an edge node publish its BIRTH certificates again."""
    return payload([MetricValue(REBIRTH, True, pb.Boolean)], None, timestamp_ms, birth=True)
