"""Flat JSON objects described by `ctx.field_map`.

Field map keys: "device", "time", "city" name the fields holding the device id, the time (ISO 8601
or epoch s/ms/µs/ns by magnitude) and the city; "metric:<canonical>" = "<field>" picks the readings;
"unit:<canonical>" = "<unit>" gives a unit. Without any "metric:" entry, every top-level field whose
name is a known metric alias becomes a reading. Defaults: device from the "device" field, else
`ctx.device_id`, else a "device_id" field; time from the "time" field, else a "time" or "timestamp"
field, else `ctx.received_at`; city from the "city" field, else `ctx.city`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from schemas.decoders._common import (
    as_number,
    as_utc,
    load_json,
    parse_time,
    state_value,
    text_field,
    units_from_field_map,
)
from schemas.decoders._registry import register
from schemas.metrics import METRICS, canonical_metric_name
from schemas.readings import DecodeContext, DecodeError, Reading


def _metric_fields(doc: dict[str, Any], field_map: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """(metric, field) pairs: the explicit "metric:" mappings, else every known alias in the object."""
    explicit = [(k[7:], v) for k, v in field_map.items() if k.startswith("metric:")]
    for metric, _field in explicit:
        if metric not in METRICS:
            raise DecodeError("bad_field_map", f"unknown metric {metric!r} in field map")
    if explicit:
        yield from explicit
        return
    for key in doc:
        if (alias := canonical_metric_name(key)) is not None:
            yield alias, key


@register("json")
def decode(payload: bytes, ctx: DecodeContext) -> list[Reading]:
    doc = load_json(payload)
    if not isinstance(doc, dict):
        raise DecodeError("bad_structure", "expected a JSON object")
    fm = ctx.field_map
    device_field = fm.get("device")
    device = (text_field(doc, device_field) if device_field else None) or ctx.device_id
    device = device or text_field(doc, "device_id")
    if not device:
        raise DecodeError("missing_device", f"no device in field {device_field or 'device_id'!r} nor topic")
    stamp = doc.get(fm.get("time") or ("time" if "time" in doc else "timestamp"))
    time = parse_time(stamp) if stamp is not None else as_utc(ctx.received_at)
    city = text_field(doc, fm["city"]) if "city" in fm else None
    units = units_from_field_map(fm)
    readings: list[Reading] = []
    for metric, field in _metric_fields(doc, fm):
        raw = doc.get(field)
        if raw is None:
            continue
        what = f"field {field!r}"
        value = state_value(raw, what) if METRICS[metric].aggregation == "state" else as_number(raw, what)
        readings.append(Reading(device, metric, time, value, units.get(metric), city or ctx.city))
    if not readings:
        raise DecodeError("no_known_metrics", "no field maps to a known metric")
    return readings
