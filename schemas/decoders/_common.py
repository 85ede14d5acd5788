"""Helpers shared by the decoders: JSON loading, time parsing and strict number checks."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any

import orjson

from schemas.metrics import METRICS
from schemas.readings import DecodeError

# Epoch numbers above these magnitudes are milli-, micro- or nanoseconds (1e11 s is the year 5138).
_MS_ABOVE = 1e11
_US_ABOVE = 1e14
_NS_ABOVE = 1e17


_UNICODE_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")  # UTF-8, UTF-16/32 LE, UTF-16/32 BE
# orjson reads an integer beyond 64 bits as a float where `json` keeps it exact (an id must stay
# "123..."): payloads with 19 digits in a row (where 64 bits end) are read by `json` alone.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def load_json(payload: bytes) -> Any:
    """Parse JSON bytes (UTF-8, or UTF-16/32 with a BOM); NaN and Infinity pass through as floats.

    orjson reads what it can; what it refuses (NaN, numbers beyond a double, lone surrogates, deep
    nesting, other encodings, broken JSON) is read by the standard `json`, so results and errors
    are those of `json` alone.

    Bytes that are not UTF-8 and carry no BOM are `binary_payload` (a raw LoRaWAN frame, CBOR, a
    protobuf...), not a misleading codec error.
    """
    if type(payload) is bytes and _LONG_DIGITS.search(payload) is None:
        try:
            return orjson.loads(payload)  # 5x faster; what it refuses `json` reads as before
        except orjson.JSONDecodeError:
            pass
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise DecodeError("bad_payload", f"expected bytes, got {type(payload).__name__}")
    payload = bytes(payload) if isinstance(payload, memoryview) else payload
    text: str | bytes = payload
    if not payload.startswith(_UNICODE_BOMS):
        try:
            decoded = payload.decode("utf-8")
        except UnicodeDecodeError:
            head = payload[:16].hex(" ")
            detail = f"{len(payload)} bytes, not UTF-8 text (starts {head})"
            raise DecodeError("binary_payload", detail) from None
        if 0 not in payload[:2]:  # else json.loads(bytes) reads it as BOM-less UTF-16/32
            text = decoded  # parsed from the text decoded here, not decoded a second time
    try:
        return json.loads(text)
    except RecursionError:
        raise DecodeError("too_deep", "JSON nesting exceeds the recursion limit") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise DecodeError("bad_json", str(exc)[:200]) from None


def as_utc(dt: datetime, zone: tzinfo | None = None) -> datetime:
    """Aware datetimes converted to UTC; naive ones read in `zone` (the city's), else UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone or UTC)
    return dt.astimezone(UTC)


def parse_iso(text: str, zone: tzinfo | None = None) -> datetime:
    """ISO 8601 date-time with "Z" or an offset, or without (read in `zone`, else UTC); an interval
    "A/B" gives A.

    Interval-valued observations are stamped at the start of the interval they cover, so a value
    lands in the rollup buckets (the hour, the local day) it describes (kpi_rollups/README.md).
    """
    if "/" in text:
        text = text.partition("/")[0]
    try:
        return as_utc(datetime.fromisoformat(text.strip()), zone)
    except (ValueError, OverflowError) as exc:
        raise DecodeError("bad_time", f"{text[:64]!r}: {exc}") from None


def from_epoch(number: float) -> datetime:
    """Epoch seconds, or milli/micro/nanoseconds detected by magnitude."""
    magnitude = abs(number)
    if magnitude > _NS_ABOVE:
        number /= 1e9
    elif magnitude > _US_ABOVE:
        number /= 1e6
    elif magnitude > _MS_ABOVE:
        number /= 1e3
    try:
        return datetime.fromtimestamp(number, UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise DecodeError("bad_time", f"{number!r}: {exc}") from None


def parse_time(raw: object, zone: tzinfo | None = None) -> datetime:
    """A payload time: ISO 8601 string (zone-less: in `zone`) or epoch number."""
    if isinstance(raw, str):
        return parse_iso(raw, zone)
    if type(raw) is int or type(raw) is float:
        return from_epoch(raw)
    raise DecodeError("bad_time", f"expected an ISO string or epoch number, got {type(raw).__name__}")


def as_number(raw: object, what: str) -> float:
    """A JSON number as float; bools, strings and containers are `wrong_type`."""
    if type(raw) is float:
        return raw
    if type(raw) is int:
        try:
            return float(raw)
        except OverflowError:
            raise DecodeError("bad_number", f"{what}: integer too large") from None
    raise DecodeError("wrong_type", f"{what}: expected a number, got {type(raw).__name__}")


def number_from_text(raw: object, what: str) -> float | None:
    """A number sent as text (or as a number); empty text is a missing value (None)."""
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            return None
        try:
            return float(text)
        except ValueError:
            raise DecodeError("wrong_type", f"{what}: {raw[:32]!r} is not a number") from None
    return as_number(raw, what)


def numeric_value(metric: str, raw: object, what: str, text: bool = False) -> float | None:
    """`raw` as the metric's value: a 0/1 state from a bool or number, else a number (`text`: also
    a number written as text, "" = missing). None for a missing value."""
    if raw is None:
        return None
    if METRICS[metric].aggregation == "state":
        return state_value(raw, what)
    return number_from_text(raw, what) if text else as_number(raw, what)


def state_value(raw: object, what: str) -> float:
    """A 0/1 state from a JSON bool or number."""
    if type(raw) is bool:
        return 1.0 if raw else 0.0
    return as_number(raw, what)


def text_field(doc: Mapping[str, Any], key: str) -> str | None:
    """`doc[key]` when it is a non-empty string, else None; ids given as integers become strings."""
    value = doc.get(key)
    if isinstance(value, str):
        return value or None
    if type(value) is int:
        return str(value)
    return None


def units_from_field_map(field_map: Mapping[str, str]) -> dict[str, str]:
    """The "unit:<metric>" = "<unit>" entries of a field map, keyed by metric."""
    return {k[5:]: v for k, v in field_map.items() if k.startswith("unit:") and isinstance(v, str)}


def check_field_map(field_map: Mapping[str, str]) -> None:
    """`DecodeError("bad_field_map")` unless every "metric:"/"unit:" key names a known metric."""
    for key in field_map:
        kind, sep, metric = key.partition(":")
        if sep and kind in ("metric", "unit") and metric not in METRICS:
            raise DecodeError("bad_field_map", f"{key!r}: {metric!r} is not a known metric")


def metric_fields(field_map: Mapping[str, str]) -> list[tuple[str, str]]:
    """The field map's "metric:<canonical>" = "<field>" entries; an unknown metric is `bad_field_map`."""
    explicit = [(k[7:], v) for k, v in field_map.items() if k.startswith("metric:")]
    for metric, _field in explicit:
        if metric not in METRICS:
            raise DecodeError("bad_field_map", f"unknown metric {metric!r} in field map")
    return explicit
