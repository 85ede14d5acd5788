"""Sparkplug B (Eclipse Tahu protobuf) on `spBv1.0/<group>/<type>/<edge node>[/<device>]`.

The payload is parsed by the module protoc generated from the official `sparkplug_b.proto`; nothing
here reads the wire format. Identity is the topic's: an edge node's metrics are stored under device
`<edge node>`, a device's under `<edge node>:<device>`, in the route's city; a payload never names either.

State lives in `ctx.sparkplug` (schemas/sparkplug/sessions.py), kept per edge node and device:
- NBIRTH/DBIRTH learn each metric's name, alias, datatype and unit (property `engUnit`) and store
  the values they carry; a later DATA metric sent by alias alone is resolved through them.
- NDATA/DDATA before their BIRTH (or after their DEATH) cannot be read (`no_birth`: the aliases
  are unknown) and the node is marked for a rebirth request; requeued after the BIRTH, they decode.
- `seq` (0..255, per node) is checked on every message after NBIRTH; a gap is counted and wants a
  rebirth, the data is still stored (aliases do not change without a BIRTH).
- NDEATH takes the node and its devices offline unless its `bdSeq` differs from the NBIRTH's
  (`stale_death`: an old session's will, delivered late); DDEATH takes one device offline.
- A DBIRTH of a device new to its node beyond `max_devices_per_node` is `too_many_devices`: a
  node held to its own topics still cannot grow the host's state and the sessions table at will.
- NCMD/DCMD (commands to edge nodes) and `spBv1.0/STATE/<host>` store nothing.

Names map to metrics through the route's field map (`metric:<m>` = "<sparkplug name>"), else the
alias table, by the full name or its last `/` segment (`Sensors/Temperature`). Unknown names are
skipped. Values by datatype: Int8..Int64 (two's complement in the unsigned fields), UInt8..UInt64,
Float, Double, Boolean (state metrics only), DataSet (each row a reading of the columns that name a
metric, at the row's DateTime column or the metric's time); String, Text, UUID, DateTime for a
measurement are `wrong_type`, Bytes, File, Template, arrays and property sets `unsupported_datatype`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import DecodeError as ProtobufDecodeError

from schemas.decoders._common import as_utc, metric_fields
from schemas.decoders._registry import register
from schemas.metrics import METRICS, canonical_metric_name
from schemas.readings import DecodeContext, Decoded, DecodeError, Reading
from schemas.sparkplug import sparkplug_b_pb2 as pb
from schemas.sparkplug.sessions import (
    SEQ_MODULUS,
    MetricDefinition,
    Session,
    SessionKey,
    SparkplugSessions,
)

NAMESPACE = "spBv1.0"
NODE_TYPES = frozenset({"NBIRTH", "NDATA", "NDEATH", "NCMD"})
DEVICE_TYPES = frozenset({"DBIRTH", "DDATA", "DDEATH", "DCMD"})
BD_SEQ = "bdSeq"
ENG_UNIT_KEYS = ("engUnit", "engUnits")
MAX_BD_SEQ = 2**63  # bdSeq counts 0..255; anything up to a bigint is stored as sent

# datatype -> (the value field it travels in, bits of a signed integer or 0)
_INTEGERS: dict[int, tuple[str, int]] = {
    pb.Int8: ("int_value", 8),
    pb.Int16: ("int_value", 16),
    pb.Int32: ("int_value", 32),
    pb.Int64: ("long_value", 64),
    pb.UInt8: ("int_value", 0),
    pb.UInt16: ("int_value", 0),
    pb.UInt32: ("int_value", 0),
    pb.UInt64: ("long_value", 0),
}
_FLOATS: dict[int, str] = {pb.Float: "float_value", pb.Double: "double_value"}
_TEXTS = frozenset({pb.String, pb.Text, pb.UUID})
_DATATYPE_NAMES: dict[int, str] = {number: name for name, number in pb.DataType.items()}


@dataclass(frozen=True, slots=True)
class SparkplugTopic:
    group: str
    message_type: str
    edge_node: str
    device: str = ""

    def device_id(self) -> str:
        return f"{self.edge_node}:{self.device}" if self.device else self.edge_node


def parse_topic(topic: str | None) -> SparkplugTopic | None:
    """The topic's parts; None for `spBv1.0/STATE/<host>`; `bad_topic` for anything not Sparkplug B."""
    levels = (topic or "").split("/")
    if len(levels) == 3 and levels[0] == NAMESPACE and levels[1] == "STATE":
        return None
    if len(levels) not in (4, 5) or levels[0] != NAMESPACE or not all(levels[1:]):
        shape = "spBv1.0/<group>/<type>/<node>[/<device>]"
        raise DecodeError("bad_topic", f"{(topic or '')[:200]!r} is not {shape}")
    kind = levels[2]
    expected = 5 if kind in DEVICE_TYPES else 4 if kind in NODE_TYPES else 0
    if len(levels) != expected:
        raise DecodeError("bad_topic", f"{kind[:32]!r} with {len(levels)} topic levels")
    return SparkplugTopic(levels[1], kind, levels[3], levels[4] if len(levels) == 5 else "")


def _payload(data: bytes) -> Any:
    message = pb.Payload()
    try:
        message.ParseFromString(data)
    except ProtobufDecodeError as exc:  # truncated, a wrong wire type, an unterminated varint
        raise DecodeError("bad_protobuf", f"{len(data)} bytes: {exc}"[:200]) from None
    return message


def _time(ms: int) -> datetime:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise DecodeError("bad_time", f"timestamp {ms} ms: {exc}") from None


def _text(raw: object, what: str) -> str:
    """A protobuf string field as text: proto2 hands invalid UTF-8 back as bytes."""
    if not isinstance(raw, str):
        raise DecodeError("bad_text", f"{what} is not UTF-8 text")
    return raw


def _eng_unit(properties: Any) -> str | None:
    for key, value in zip(properties.keys, properties.values, strict=False):
        if key in ENG_UNIT_KEYS and value.WhichOneof("value") == "string_value":
            return _text(value.string_value, "engUnit")
    return None


def _signed(raw: int, bits: int) -> int:
    raw &= (1 << bits) - 1
    return raw - (1 << bits) if raw >> (bits - 1) else raw


def _number(metric: str, datatype: int, holder: Any, what: str) -> float:
    """The value of a metric or a DataSet cell, as its datatype says; DecodeError with the reason."""
    field = holder.WhichOneof("value")
    name = _DATATYPE_NAMES.get(datatype) or str(datatype)
    if datatype in _INTEGERS:
        expected, bits = _INTEGERS[datatype]
    elif datatype in _FLOATS:
        expected, bits = _FLOATS[datatype], 0
    elif datatype == pb.Boolean:
        if METRICS[metric].aggregation != "state":
            raise DecodeError("wrong_type", f"{what}: Boolean for {metric}, which is a number")
        expected, bits = "boolean_value", 0
    elif datatype in _TEXTS or datatype == pb.DateTime:
        raise DecodeError("wrong_type", f"{what}: {name} for {metric}, which is a number")
    else:
        raise DecodeError("unsupported_datatype", f"{what}: datatype {name} cannot be a {metric} reading")
    if field is None:
        raise DecodeError("missing_value", f"{what}: {name} without a value")
    if field != expected:
        raise DecodeError("wrong_type", f"{what}: datatype {name} but the value is in {field}")
    raw = getattr(holder, field)
    value = float(_signed(raw, bits) if bits else raw)
    if not math.isfinite(value):
        raise DecodeError("not_finite", f"{what}: {value}")
    return value


def _metric_of(name: str, field_map: dict[str, str]) -> str | None:
    if name in field_map:
        return field_map[name]
    return canonical_metric_name(name) or canonical_metric_name(name.rpartition("/")[2])


def _definitions(payload: Any) -> tuple[list[MetricDefinition], int | None]:
    """The BIRTH's metric definitions and its bdSeq; a nameless metric or a reused alias is `bad_birth`."""
    definitions: list[MetricDefinition] = []
    aliases: dict[int, str] = {}
    bd_seq = None
    for i, m in enumerate(payload.metrics):
        if not m.name or not isinstance(m.name, str):
            raise DecodeError("bad_birth", f"metrics[{i}]: a BIRTH metric without a name in UTF-8")
        alias = m.alias if m.HasField("alias") else None
        if alias is not None and aliases.setdefault(alias, m.name) != m.name:
            taken = aliases[alias]
            raise DecodeError("bad_birth", f"metrics[{i}]: alias {alias} of {m.name!r} is {taken!r}'s")
        if m.name == BD_SEQ and m.WhichOneof("value") in ("long_value", "int_value"):
            bd_seq = int(getattr(m, m.WhichOneof("value")))
            if bd_seq >= MAX_BD_SEQ:  # 0..255 by the specification; stored as a bigint
                raise DecodeError("bad_birth", f"metrics[{i}]: bdSeq {bd_seq} is not a sequence number")
        definitions.append(MetricDefinition(m.name, m.datatype, _eng_unit(m.properties), alias))
    return definitions, bd_seq


class _Reader:
    """Turns one payload's metrics into readings through a session's definitions."""

    def __init__(self, ctx: DecodeContext, topic: SparkplugTopic, session: Session, sent: datetime) -> None:
        self.ctx, self.session, self.sent = ctx, session, sent
        self.device = topic.device_id()
        self.field_map = {field: metric for metric, field in metric_fields(ctx.field_map)}
        self.out = Decoded()

    def read(self, payload: Any) -> Decoded:
        for i, m in enumerate(payload.metrics):
            path = f"metrics[{i}]"
            try:
                self._metric(m, path)
            except DecodeError as e:
                self.out.reject(e, path, self.device)
        return self.out

    def _metric(self, m: Any, path: str) -> None:
        if m.name:
            name = _text(m.name, "the metric name")
        elif m.HasField("alias"):
            if (known := self.session.aliases.get(m.alias)) is None:
                raise DecodeError("unknown_alias", f"alias {m.alias} is not in the BIRTH certificate")
            name = known
        else:
            raise DecodeError("bad_structure", "a metric with neither name nor alias")
        definition = self.session.metrics.get(name)
        datatype = definition.datatype if definition else pb.Unknown
        if m.HasField("datatype"):
            if definition is not None and m.datatype != definition.datatype:
                raise DecodeError("wrong_type", f"{name!r}: datatype {m.datatype}, its BIRTH said {datatype}")
            datatype = m.datatype
        if m.is_null:
            return
        time = _time(m.timestamp) if m.HasField("timestamp") else self.sent
        if datatype == pb.DataSet:
            self._data_set(m, name, path, time)
            return
        metric = _metric_of(name, self.field_map)
        if metric is None:
            return
        value = _number(metric, datatype, m, f"{name!r}")
        unit = _eng_unit(m.properties) or (definition.unit if definition else None)
        self.out.append(Reading(self.device, metric, time, value, unit, self.ctx.city, f"{path} {name}"))

    def _data_set(self, m: Any, name: str, path: str, time: datetime) -> None:
        """Each row a reading per metric column; a DateTime column stamps its row."""
        if m.WhichOneof("value") != "dataset_value":
            raise DecodeError("wrong_type", f"{name!r}: datatype DataSet but no dataset_value")
        ds = m.dataset_value
        if len(ds.types) != len(ds.columns):
            raise DecodeError("bad_structure", f"{name!r}: {len(ds.columns)} columns, {len(ds.types)} types")
        stamp = next((c for c, t in enumerate(ds.types) if t == pb.DateTime), None)
        metrics = [_metric_of(_text(c, "a column name"), self.field_map) for c in ds.columns]
        for r, row in enumerate(ds.rows):
            where = f"{path}.rows[{r}]"
            if len(row.elements) != len(ds.columns):
                error = DecodeError("bad_structure", f"{len(row.elements)} cells, {len(ds.columns)} columns")
                self.out.reject(error, where, self.device)
                continue
            try:
                at = _time(row.elements[stamp].long_value) if stamp is not None else time
            except DecodeError as e:
                self.out.reject(e, where, self.device)
                continue
            for c, metric in enumerate(metrics):
                if metric is None or c == stamp:
                    continue
                cell = f"{where}.{ds.columns[c]}"
                try:
                    value = _number(metric, ds.types[c], row.elements[c], f"{name!r} {ds.columns[c]!r}")
                except DecodeError as e:
                    self.out.reject(e, cell, self.device)
                    continue
                self.out.append(Reading(self.device, metric, at, value, None, self.ctx.city, cell))


@register("sparkplug-b")
def decode(payload: bytes, ctx: DecodeContext) -> Decoded:
    topic = parse_topic(ctx.topic)
    if topic is None or topic.message_type in ("NCMD", "DCMD"):
        return Decoded()  # host state and commands to edge nodes carry no readings
    message = _payload(payload)
    sessions = ctx.sparkplug if ctx.sparkplug is not None else SparkplugSessions()
    key = SessionKey(ctx.city or "", topic.group, topic.edge_node, topic.device)
    node_key = key.node
    sent = _time(message.timestamp) if message.HasField("timestamp") else as_utc(ctx.default_time)
    kind = topic.message_type
    seq = int(message.seq) if message.HasField("seq") else None
    if seq is not None and seq >= SEQ_MODULUS:
        raise DecodeError("bad_seq", f"seq {seq} outside 0..{SEQ_MODULUS - 1}")
    if kind == "NBIRTH":
        definitions, bd_seq = _definitions(message)
        session = Session.born(definitions, sent, bd_seq)
        session.seq = seq
        sessions.birth(key, session)
        return _Reader(ctx, topic, session, sent).read(message)
    node = sessions.get(node_key)
    if kind == "NDEATH":
        _, bd_seq = _definitions(message)
        if node is not None and node.bd_seq is not None and bd_seq is not None and bd_seq != node.bd_seq:
            raise DecodeError("stale_death", f"NDEATH bdSeq {bd_seq}, the node's NBIRTH had {node.bd_seq}")
        sessions.death(node_key, sent)
        return Decoded()
    if node is None or not node.online:
        sessions.want_rebirth(node_key)
        when = "before its NBIRTH" if node is None else "after its NDEATH"
        node_name = f"{topic.group}/{topic.edge_node}"
        raise DecodeError("no_birth", f"{kind} of edge node {node_name} {when}: rebirth wanted")
    sessions.note_seq(node_key, seq)
    if kind == "DBIRTH":
        if not sessions.admits(key):
            cap = sessions.max_devices_per_node
            raise DecodeError(
                "too_many_devices", f"edge node {topic.group}/{topic.edge_node} has {cap} devices"
            )
        definitions, _ = _definitions(message)
        session = Session.born(definitions, sent, None)
        sessions.birth(key, session)
        return _Reader(ctx, topic, session, sent).read(message)
    if kind == "DDEATH":
        sessions.death(key, sent)
        return Decoded()
    current = sessions.get(key)
    if current is None or not current.online:
        sessions.want_rebirth(node_key)
        when = "before its DBIRTH" if current is None else "after its death"
        raise DecodeError("no_birth", f"DDATA of device {topic.device_id()} {when}: rebirth wanted")
    return _Reader(ctx, topic, current, sent).read(message)
