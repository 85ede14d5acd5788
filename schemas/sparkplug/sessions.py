"""What a Sparkplug B host application remembers between messages: per edge node and per device,
the metric aliases of its last BIRTH certificate, `bdSeq`, the last `seq`, and whether it is online.

The decoder (schemas/decoders/sparkplug.py) reads and updates it; the pipeline hands the changed
sessions to the writer, which stores them (`sparkplug_sessions`) in the transaction of the batch
whose messages changed them, and loads them back at start: aliases survive a restart, and a
redelivered message finds the state it left. Pure data: no I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.text import escaped_json

SEQ_MODULUS = 256  # seq counts 0..255 and wraps (Sparkplug B 3.0, "Sequence Number")


@dataclass(frozen=True, slots=True)
class SessionKey:
    """One edge node (device "") or one of its devices; the city is the route's, never the payload's."""

    city: str
    group: str
    edge_node: str
    device: str = ""

    @property
    def node(self) -> SessionKey:
        return SessionKey(self.city, self.group, self.edge_node)


@dataclass(frozen=True, slots=True)
class MetricDefinition:
    """A metric as its BIRTH certificate declared it."""

    name: str
    datatype: int
    unit: str | None = None
    alias: int | None = None


@dataclass(slots=True)
class Session:
    metrics: dict[str, MetricDefinition] = field(default_factory=dict)  # by name
    aliases: dict[int, str] = field(default_factory=dict)  # alias -> name
    bd_seq: int | None = None  # the node's NBIRTH bdSeq; an NDEATH with another one is stale
    seq: int | None = None  # the node's last seq (its devices' messages count on it too)
    online: bool = True
    born_at: datetime | None = None
    died_at: datetime | None = None
    metrics_json: str = "[]"  # `metrics` as stored, serialised once per BIRTH

    @classmethod
    def born(cls, definitions: Iterable[MetricDefinition], at: datetime, bd_seq: int | None) -> Session:
        s = cls(bd_seq=bd_seq, born_at=at)
        for d in definitions:
            s.metrics[d.name] = d
            if d.alias is not None:
                s.aliases[d.alias] = d.name
        s.metrics_json = json.dumps(  # escaped: a name with a NUL must not fail the batch's commit
            escaped_json(
                [
                    {"name": d.name, "datatype": d.datatype, "unit": d.unit, "alias": d.alias}
                    for d in s.metrics.values()
                ]
            )
        )
        return s


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One session as the `sparkplug_sessions` table holds it."""

    key: SessionKey
    online: bool
    bd_seq: int | None
    seq: int | None
    metrics_json: str
    born_at: datetime | None
    died_at: datetime | None

    def record(self) -> tuple[object, ...]:
        k = self.key
        return (
            k.city,
            k.group,
            k.edge_node,
            k.device,
            self.online,
            self.bd_seq,
            self.seq,
            self.metrics_json,
            self.born_at,
            self.died_at,
        )


class SparkplugSessions:
    """Every known session, the ones changed since `take_changed()`, and the counters telemetry reads."""

    def __init__(self, replay: bool = False, max_devices_per_node: int = 1000) -> None:
        self.replay = replay  # a requeue: decode with the stored aliases, leave seq and the store alone
        self.max_devices_per_node = max_devices_per_node
        self._sessions: dict[SessionKey, Session] = {}
        self._devices: dict[SessionKey, int] = {}  # edge node -> how many devices it announced
        self._changed: set[SessionKey] = set()
        self.seq_gaps = 0
        self.rebirths_wanted: set[SessionKey] = set()  # nodes whose state is unknown or broken

    def get(self, key: SessionKey) -> Session | None:
        return self._sessions.get(key)

    def admits(self, key: SessionKey) -> bool:
        """False for a device new to its edge node once the node has `max_devices_per_node`."""
        known = not key.device or key in self._sessions
        return known or self._devices.get(key.node, 0) < self.max_devices_per_node

    def birth(self, key: SessionKey, session: Session) -> None:
        if key.device and key not in self._sessions:
            self._devices[key.node] = self._devices.get(key.node, 0) + 1
        self._sessions[key] = session
        self._changed.add(key)
        self.rebirths_wanted.discard(key.node)

    def death(self, key: SessionKey, at: datetime) -> None:
        """`key` offline; an edge node's death takes all its devices offline with it."""
        for k, s in self._sessions.items():
            if k == key or (key.device == "" and k.node == key and s.online):
                s.online, s.died_at = False, at
                self._changed.add(k)

    def note_seq(self, node: SessionKey, seq: int | None) -> bool:
        """Record the node's `seq`; False (and a rebirth wanted) when it is not the one expected."""
        s = self._sessions[node]
        if self.replay:  # an old message: its seq says nothing about the live session
            return True
        expected = None if s.seq is None else (s.seq + 1) % SEQ_MODULUS
        s.seq = seq
        self._changed.add(node)
        if seq is None or (expected is not None and seq != expected):
            self.seq_gaps += 1
            self.rebirths_wanted.add(node)
            return False
        return True

    def want_rebirth(self, node: SessionKey) -> None:
        self.rebirths_wanted.add(node)

    def take_changed(self) -> list[SessionRow]:
        """The sessions changed since the last call, as rows to store (cities unknown are not stored)."""
        rows: list[SessionRow] = []
        if self.replay:
            self._changed.clear()
            return rows
        for k in self._changed:
            s = self._sessions.get(k)
            if s is not None and k.city:
                rows.append(SessionRow(k, s.online, s.bd_seq, s.seq, s.metrics_json, s.born_at, s.died_at))
        self._changed.clear()
        return rows

    @property
    def changed(self) -> bool:
        return bool(self._changed)

    def counts(self) -> tuple[int, int]:
        """(online, offline) sessions, edge nodes and devices together."""
        online = sum(1 for s in self._sessions.values() if s.online)
        return online, len(self._sessions) - online

    def load(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Sessions as stored (the `sparkplug_sessions` columns); replaces what is known."""
        self._sessions.clear()
        self._changed.clear()
        self._devices.clear()
        for r in rows:
            definitions = [
                MetricDefinition(m["name"], int(m["datatype"]), m.get("unit"), m.get("alias"))
                for m in json.loads(r["metrics"])
            ]
            s = Session.born(definitions, r["born_at"], r["bd_seq"])
            s.seq, s.online, s.died_at = r["seq"], r["online"], r["died_at"]
            key = SessionKey(r["city_id"], r["group_id"], r["edge_node_id"], r["device_id"])
            if key.device:
                self._devices[key.node] = self._devices.get(key.node, 0) + 1
            self._sessions[key] = s
