"""FIWARE NGSI-v2 and NGSI-LD entities (Smart Data Models), normalized or key-values.

One lenient decoder serves both names: it accepts an entity, a list of entities or a notification
(`{"subscriptionId": ..., "data": [...]}`), and per attribute any of the v2 form
(`{"value", "metadata": {"unitCode": {"value"}}}`), the LD form (`{"type": "Property", "value",
"unitCode", "observedAt"}`), a JSON-LD typed literal (`{"@value"}`) or a bare key-values value.

* Device id: the entity id (URN or not), never `ctx.device_id`: a notification carries many entities.
* Time: the attribute's own `observedAt` (LD) or metadata `TimeInstant`/`timestamp`/`observedAt`
  (v2); else the entity's `dateObservedFrom` (the start of the interval a value covers: it
  belongs to that interval), `TimeInstant`, `dateObserved`, `dateObservedTo`, `dateLastReported`,
  `dateModified`, first present; an interval "A/B" is stamped at A. Only an entity with none of
  these falls back to `ctx.default_time`.
* Units: `unitCode` when present; otherwise the Smart Data Models' documented unit:
  relativeHumidity, occupancy and fillingLevel are 0..1 (unit "1" -> %), waterConsumption is m³.
  The published examples carry implausible values (CO 500 "GP" = 500 mg/m³, 191051 m³ of water): the
  stated unit is applied as is and plausibility checks downstream reject what is implausible.
* Noise: LAeq -> laeq, LAmax -> lamax, LAmin -> lamin; LAS (slow-weighted level at one instant) is
  used as laeq only when the entity has no LAeq. LAeq_d (a day indicator) is not a reading.
* ParkingSpot status free/occupied -> parking_occupied 0/1; closed/unknown are skipped.
* WaterQualityObserved temperature is `water_temperature`, never air `temperature`.
* Numbers may come as text ("21.4", as IoT Agents send them); other text for a number is a rejected
  part `data[i].<attr>`, and the entity's other attributes are still read. An entity without an id
  or with a bad time is a rejected part `data[i]`. An empty notification yields nothing (no error).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from schemas.decoders._common import as_utc, load_json, numeric_value, parse_time
from schemas.decoders._registry import register
from schemas.metrics import canonical_metric_name
from schemas.readings import DecodeContext, Decoded, DecodeError, Reading

# Attributes whose meaning depends on the entity type, and those the generic alias table must not guess.
_MODEL_ATTRS: dict[str, dict[str, str]] = {
    "TrafficFlowObserved": {"intensity": "vehicle_count", "averageVehicleSpeed": "vehicle_speed"},
    "NoiseLevelObserved": {"LAeq": "laeq", "LAmax": "lamax", "LAmin": "lamin"},
    "ParkingSpot": {"status": "parking_occupied"},
    "WaterQualityObserved": {"temperature": "water_temperature"},
}
# Smart Data Models define these as fractions 0..1 whatever the entity type.
_DEFAULT_UNITS: dict[str, str] = {"relativeHumidity": "1", "occupancy": "1", "fillingLevel": "1"}
_PARKING_STATES: dict[str, float | None] = {"free": 0.0, "occupied": 1.0, "closed": None, "unknown": None}
# the start of the observed interval first: a value is attributed to the interval it covers
_ENTITY_TIMES = (
    "dateObservedFrom",
    "TimeInstant",
    "dateObserved",
    "dateObservedTo",
    "dateLastReported",
    "dateModified",
)
_METADATA_TIMES = ("TimeInstant", "timestamp", "observedAt")
_SKIP_KEYS = frozenset({"id", "type", "@context", "location", "address"})


def _entities(doc: Any) -> tuple[str, list[Any]]:
    """(path prefix, entities): a notification's `data`, a list, or one entity."""
    if isinstance(doc, list):
        return "[{}]", doc
    if isinstance(doc, dict):
        if "data" in doc and ("subscriptionId" in doc or doc.get("type") == "Notification"):
            data = doc["data"]
            if not isinstance(data, list):
                raise DecodeError("bad_structure", "notification data must be an array")
            return "data[{}]", data
        return "", [doc]
    raise DecodeError("bad_structure", "expected an entity, an array of entities or a notification")


def _code(raw: Any, what: str) -> str | None:
    """A unitCode or time given bare or wrapped as v2 metadata `{"value": ...}`."""
    if isinstance(raw, dict):
        raw = raw.get("value")
    if raw is None or isinstance(raw, str):
        return raw
    raise DecodeError("wrong_type", f"{what} must be a string")


def _instances(raw: Any) -> Iterator[tuple[Any, str | None, Any]]:
    """(value, unitCode, own time) of one attribute; LD multi-attributes yield one per instance."""
    for attr in raw if isinstance(raw, list) and raw and isinstance(raw[0], dict) else (raw,):
        if not isinstance(attr, dict):
            yield attr, None, None
        elif "value" in attr:
            value = attr["value"]
            if isinstance(value, dict) and "@value" in value:
                value = value["@value"]
            unit, own_time = _code(attr.get("unitCode"), "unitCode"), attr.get("observedAt")
            meta = attr.get("metadata")
            if isinstance(meta, dict):
                unit = unit or _code(meta.get("unitCode"), "metadata unitCode")
                own_time = own_time or next(
                    (_code(meta[k], f"metadata {k}") for k in _METADATA_TIMES if k in meta), None
                )
            yield value, unit, own_time
        elif "@value" in attr:
            yield attr["@value"], None, None
        else:
            yield attr, None, None  # a relationship or a structured value: not a number


def _entity_time(entity: dict[str, Any], ctx: DecodeContext) -> datetime:
    for key in _ENTITY_TIMES:
        for value, _unit, _own in _instances(entity.get(key)):
            if value is not None:
                try:
                    return parse_time(value, ctx.timezone)
                except DecodeError as e:
                    raise DecodeError(e.reason, f"{key}: {e.detail}") from None
    return as_utc(ctx.default_time)


def _value(metric: str, raw: Any, what: str) -> float | None:
    """Numbers, also as text ("21.4", as IoT Agents send them); ParkingSpot states by name."""
    if metric == "parking_occupied" and isinstance(raw, str):
        if raw not in _PARKING_STATES:
            raise DecodeError("bad_value", f"{what}: expected one of {sorted(_PARKING_STATES)}")
        return _PARKING_STATES[raw]
    return numeric_value(metric, raw, what, text=True)


def _metric(attr: str, model: dict[str, str]) -> str | None:
    return model.get(attr) or canonical_metric_name(attr)


def _decode_entity(entity: Any, ctx: DecodeContext, path: str, out: Decoded) -> None:
    """The entity's readings into `out`; a bad attribute is a rejected part `<path>.<attr>`."""
    where = path + "." if path else ""
    if not isinstance(entity, dict):
        raise DecodeError("bad_structure", "entity must be an object")
    device = entity.get("id")
    if not isinstance(device, str) or not device:
        raise DecodeError("missing_device", "entity without a string id")
    etype = entity.get("type")
    model = _MODEL_ATTRS.get(etype, {}) if isinstance(etype, str) else {}
    las_is_laeq = "LAS" in entity and all(_metric(k, model) != "laeq" for k in entity if k != "LAS")
    entity_time: datetime | None = None
    for attr, raw in entity.items():
        if attr in _SKIP_KEYS:
            continue
        metric = _metric(attr, model) or ("laeq" if attr == "LAS" and las_is_laeq else None)
        if metric is None:
            continue
        try:
            for raw_value, unit, own_time in _instances(raw):
                value = _value(metric, raw_value, f"{device} {attr}")
                if value is None:
                    continue
                if own_time is not None:
                    time = parse_time(own_time, ctx.timezone)
                else:
                    entity_time = entity_time or _entity_time(entity, ctx)
                    time = entity_time
                unit = unit or _DEFAULT_UNITS.get(attr)
                out.append(Reading(device, metric, time, value, unit, ctx.city, where + attr))
        except DecodeError as e:
            out.reject(e, where + attr, device)


@register("ngsi-v2", "ngsi-ld")
def decode(payload: bytes, ctx: DecodeContext) -> Decoded:
    pattern, entities = _entities(load_json(payload))
    out = Decoded()
    for i, entity in enumerate(entities):
        path = pattern.format(i)
        try:
            _decode_entity(entity, ctx, path, out)
        except DecodeError as e:
            entity_id = entity.get("id") if isinstance(entity, dict) else None
            out.reject(e, path or "entity", entity_id if isinstance(entity_id, str) else None)
    if not entities:
        return out  # an empty notification (e.g. the initial one of a subscription): nothing to store
    return out.or_raise("no_known_metrics", "no entity attribute is a known metric")
