"""The reading: what every decoder produces and every sink consumes.

A decoder turns one payload into a list of `Reading` (or raises `DecodeError` with a reason).
Units are still the payload's own at that point; `schemas.units.normalize` turns them into the
metric's canonical unit before validation and storage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime


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


@dataclass(slots=True, frozen=True)
class DecodeContext:
    """What a source knows about a payload besides its bytes."""

    received_at: datetime
    topic: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    device_id: str | None = None
    city: str | None = None
    field_map: Mapping[str, str] = field(default_factory=dict)


Decoder = Callable[[bytes, DecodeContext], list[Reading]]
