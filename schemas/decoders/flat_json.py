"""Flat JSON described by `ctx.field_map`: wide objects, long-format records, or arrays of either.

* Wide: `{"device_id": "d1", "time": ..., "pm25": 12.1, "temp": 21.5}`. Field map "metric:<canonical>"
  = "<field>" picks the readings; without any, every top-level field whose name is a known metric
  alias is one. A bad value is a rejected part `<field>` (`[i].<field>` in an array); the others
  are read. Two fields for one metric (`temp`, `temperature`): the first is read, the other is a
  rejected part `same_quantity`.
* Long (Node-RED flows, many gateways): `{"time": ..., "metric": "pm25", "value": 12.1, "unit":
  "ug/m3"}`, one object or an array of them; `metric` goes through the alias table (or a
  "metric:<canonical>" = "<name>" entry), `unit` is the reading's unit. A bad record is a rejected
  part `[i]`.

Field map keys "device", "time", "city" name the fields holding the device id, the time and the
city; "unit:<canonical>" = "<unit>" gives a unit. Defaults: device from the "device" field (or
"device_id", "device"), else `ctx.device_id`; time from the "time" field (or "time", "timestamp"),
ISO 8601 or epoch s/ms/µs/ns by magnitude, zone-less times in `ctx.timezone` (the city's), else
`ctx.default_time`; city from the "city" field (the pipeline uses it only on a route that trusts the
payload's city).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from schemas.decoders._common import (
    as_utc,
    load_json,
    metric_fields,
    numeric_value,
    parse_time,
    text_field,
    units_from_field_map,
)
from schemas.decoders._registry import register
from schemas.metrics import METRICS, canonical_metric_name
from schemas.readings import DecodeContext, Decoded, DecodeError, Reading

_STATES = frozenset(name for name, m in METRICS.items() if m.aggregation == "state")  # 0/1 from bools too


_WIDE_KEYS_MAX = 4096
_WIDE_PAIRS: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}  # a wide object's keys -> its pairs


class _Fields:
    """The field map read once per payload."""

    def __init__(self, fm: Mapping[str, str]) -> None:
        self.device = fm.get("device")
        self.time = fm.get("time")
        self.city = fm.get("city")
        self.units = units_from_field_map(fm)
        self.explicit = metric_fields(fm)
        self.by_name = {name: metric for metric, name in self.explicit}

    def device_of(self, doc: dict[str, Any], ctx: DecodeContext) -> str:
        if self.device:
            device = text_field(doc, self.device)
        else:
            device = text_field(doc, "device_id") or text_field(doc, "device")
        device = device or ctx.device_id
        if not device:
            raise DecodeError(
                "missing_device", f"no device in field {self.device or 'device_id'!r} nor topic"
            )
        return device

    def time_of(self, doc: dict[str, Any], ctx: DecodeContext) -> Any:
        stamp = doc.get(self.time or ("time" if "time" in doc else "timestamp"))
        return parse_time(stamp, ctx.timezone) if stamp is not None else as_utc(ctx.default_time)

    def city_of(self, doc: dict[str, Any], ctx: DecodeContext) -> str | None:
        return text_field(doc, self.city or "city") or ctx.city

    def wide(self, doc: dict[str, Any]) -> Sequence[tuple[str, str]]:
        """(metric, field) pairs of a wide object; a device's payloads repeat their keys, so the
        pairs of a small key tuple are remembered (at most `_WIDE_KEYS_MAX`, then forgotten at once)."""
        if self.explicit:
            return self.explicit
        keys = tuple(doc)
        pairs = _WIDE_PAIRS.get(keys)
        if pairs is None:
            pairs = tuple((alias, k) for k in keys if (alias := canonical_metric_name(k)) is not None)
            if len(keys) <= 32 and sum(map(len, keys)) <= 1024:
                if len(_WIDE_PAIRS) >= _WIDE_KEYS_MAX:
                    _WIDE_PAIRS.clear()
                _WIDE_PAIRS[keys] = pairs
        return pairs


_NO_FIELD_MAP = _Fields({})  # the common case, read once rather than per payload


def _long(doc: dict[str, Any], f: _Fields, ctx: DecodeContext, path: str, out: Decoded) -> None:
    device = f.device_of(doc, ctx)
    try:
        name = doc["metric"]
        if not isinstance(name, str):
            raise DecodeError("wrong_type", "metric must be a string")
        metric = f.by_name.get(name) or canonical_metric_name(name)
        if metric is None:
            raise DecodeError("unknown_metric", f"{name[:64]!r} is not a known metric")
        unit = doc.get("unit")
        if unit is not None and not isinstance(unit, str):
            raise DecodeError("wrong_type", "unit must be a string")
        value = numeric_value(metric, doc["value"], f"{name} value")
        if value is not None:
            unit = unit or f.units.get(metric)
            time, city = f.time_of(doc, ctx), f.city_of(doc, ctx)
            out.append(Reading(device, metric, time, value, unit, city, path or "value"))
    except DecodeError as e:
        out.reject(e, path or "value", device)


def _wide(doc: dict[str, Any], f: _Fields, ctx: DecodeContext, path: str, out: Decoded) -> None:
    device = f.device_of(doc, ctx)
    time = f.time_of(doc, ctx)
    city = f.city_of(doc, ctx)
    read_from: dict[str, str] = {}  # metric -> the field it was read from: the first one in the object
    for metric, field in f.wide(doc):
        where = f"{path}.{field}" if path else field
        if metric in read_from:
            detail = (
                f"{metric} is read from {read_from[metric]!r}; map {field!r} in field_map to read it instead"
            )
            out.reject(DecodeError("same_quantity", detail), where, device)
            continue
        raw = doc.get(field)
        if type(raw) is float and metric not in _STATES:  # the common case, without a call
            value: float | None = raw
        else:
            try:
                value = numeric_value(metric, raw, f"field {field!r}")
            except DecodeError as e:
                out.reject(e, where, device)
                continue
        if value is not None:
            read_from[metric] = field
            out.append(Reading(device, metric, time, value, f.units.get(metric), city, where))


@register("json")
def decode(payload: bytes, ctx: DecodeContext) -> Decoded:
    doc = load_json(payload)
    f = _Fields(ctx.field_map) if ctx.field_map else _NO_FIELD_MAP
    records = (
        (("", doc),) if isinstance(doc, dict) else list(enumerate(doc)) if isinstance(doc, list) else None
    )
    if not records:
        raise DecodeError("bad_structure", "expected a JSON object or a non-empty array of objects")
    out = Decoded()
    for i, record in records:
        path = f"[{i}]" if isinstance(i, int) else ""
        try:
            if not isinstance(record, dict):
                raise DecodeError("bad_structure", "expected an object")
            shape = _long if "metric" in record and "value" in record else _wide
            shape(record, f, ctx, path, out)
        except DecodeError as e:
            out.reject(e, path or "(object)")
    return out.or_raise("no_known_metrics", "no field maps to a known metric")
