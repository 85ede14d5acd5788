"""The Things Stack v3 uplinks, bare or inside an AWS IoT envelope (`{"format", "payload", "topic"}`).

Readings come from `uplink_message.decoded_payload`, a flat object written by the application's
payload formatter: keys go through the metric alias table, unknown keys and nested objects are
ignored, null is a missing value. Formatters carry no units, so values are taken as canonical unless
`ctx.field_map` has "unit:<metric>" entries. Device: `end_device_ids.device_id`, then `ctx.device_id`,
then `dev_eui`. Time: `uplink_message.received_at`, then `received_at`, then `ctx.received_at`.
"""

from __future__ import annotations

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


def _uplink_document(doc: Any) -> dict[str, Any]:
    if isinstance(doc, dict) and "uplink_message" not in doc and isinstance(doc.get("payload"), dict):
        doc = doc["payload"]  # AWS IoT Core envelope
    if not isinstance(doc, dict) or not isinstance(doc.get("uplink_message"), dict):
        raise DecodeError("bad_structure", "not a The Things Stack uplink (no uplink_message object)")
    return doc


@register("ttn")
def decode(payload: bytes, ctx: DecodeContext) -> list[Reading]:
    doc = _uplink_document(load_json(payload))
    uplink: dict[str, Any] = doc["uplink_message"]
    ids = doc.get("end_device_ids")
    ids = ids if isinstance(ids, dict) else {}
    device = text_field(ids, "device_id") or ctx.device_id or text_field(ids, "dev_eui")
    if not device:
        raise DecodeError("missing_device", "uplink without end_device_ids.device_id")
    stamp = uplink.get("received_at") or doc.get("received_at")
    time = parse_time(stamp) if stamp is not None else as_utc(ctx.received_at)
    decoded = uplink.get("decoded_payload")
    units = units_from_field_map(ctx.field_map)
    readings: list[Reading] = []
    if isinstance(decoded, dict):
        for key, raw in decoded.items():
            metric = canonical_metric_name(key)
            if metric is None or raw is None or isinstance(raw, dict | list):
                continue
            what = f"decoded_payload.{key}"
            is_state = METRICS[metric].aggregation == "state"
            value = state_value(raw, what) if is_state else as_number(raw, what)
            readings.append(Reading(device, metric, time, value, units.get(metric), ctx.city))
    if not readings:
        raise DecodeError("no_known_metrics", "decoded_payload has no known metric")
    return readings
