"""The reading: what every decoder produces and every sink consumes.

A decoder turns one payload into `Decoded`: the readings it could read and a `RejectedPart` for each
part it could not (the valid neighbours of a bad value are kept). A payload it cannot read at all
raises `DecodeError` with a reason.
Units are still the payload's own at that point; `schemas.units.normalize` turns them into the
metric's canonical unit before validation and storage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schemas.sparkplug.sessions import SparkplugSessions


class DecodeError(ValueError):
    """A payload that cannot be turned into readings; `reason` is short and stable for dead letters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Reading:
    device_id: str
    metric: str
    time: datetime
    value: float
    unit: str | None = None
    city: str | None = None
    path: str = ""  # where in the payload it was read (`data[1].pm25`), for its dead letter if rejected


@dataclass(slots=True)
class DecodeContext:
    """What a source knows about a payload besides its bytes; decoders read it, never change it
    (not frozen: a frozen dataclass costs a microsecond more per message to build)."""

    default_time: datetime  # of readings without a time of their own: when the message was sent or received
    topic: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    device_id: str | None = None  # the topic's device: used where the payload names none
    city: str | None = None
    field_map: Mapping[str, str] = field(default_factory=dict)
    timezone: tzinfo | None = None  # zone-less payload times are read in it (the city's); None = UTC
    sparkplug: SparkplugSessions | None = None  # Sparkplug B aliases and seq, kept by the pipeline


@dataclass(slots=True)
class RejectedPart:
    """One part of a payload that could not be read; `path` locates it (e.g. `data[1].pm25`)."""

    reason: str
    detail: str
    path: str
    device_id: str | None = None

    def describe(self) -> str:
        return f"{self.path}: {self.detail}" if self.path else self.detail


class Decoded(list[Reading]):
    """The readings of one payload, plus `rejected`: the parts that could not be read."""

    __slots__ = ("rejected",)

    def __init__(self, readings: Iterable[Reading] = (), rejected: Iterable[RejectedPart] = ()) -> None:
        super().__init__(readings)
        self.rejected: list[RejectedPart] = list(rejected) if rejected else []

    def reject(self, error: DecodeError, path: str, device_id: str | None = None) -> None:
        self.rejected.append(RejectedPart(error.reason, error.detail, path, device_id))

    def or_raise(self, reason: str, detail: str) -> Decoded:
        """Itself, unless nothing was read nor rejected: then `DecodeError(reason, detail)`."""
        if not self and not self.rejected:
            raise DecodeError(reason, detail)
        return self


Decoder = Callable[[bytes, DecodeContext], Decoded]
