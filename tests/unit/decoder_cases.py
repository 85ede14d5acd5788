"""What the decoder tests share: the sample payloads, a decode context, and small helpers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas.decoders import DECODERS
from schemas.readings import DecodeContext, DecodeError, Reading

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
RECEIVED = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def ctx(**kw: Any) -> DecodeContext:
    return DecodeContext(default_time=RECEIVED, **kw)


def sample(rel: str) -> bytes:
    return (SAMPLES / rel).read_bytes()


def by_metric(readings: list[Reading]) -> dict[str, Reading]:
    out = {r.metric: r for r in readings}
    assert len(out) == len(readings), "one reading per metric expected"
    return out


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def decode_error(name: str, payload: bytes | str, context: DecodeContext | None = None) -> str:
    """The reason the payload, or its only part, was rejected (nothing may be read from it)."""
    data = payload.encode() if isinstance(payload, str) else payload
    try:
        decoded = DECODERS[name](data, context or ctx())
    except DecodeError as e:
        return e.reason
    assert not decoded and len(decoded.rejected) == 1, decoded.rejected
    return decoded.rejected[0].reason
