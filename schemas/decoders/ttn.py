"""The Things Stack v3 uplinks, bare or inside an AWS IoT envelope (`{"format", "payload", "topic"}`).

Readings come from `uplink_message.decoded_payload`, a flat object written by the application's
payload formatter. A key is a metric when `ctx.field_map` maps it ("metric:<canonical>" = "<key>"),
or when its name is in the metric alias table, or when it is a Cayenne LPP name `<type>_<channel>`
(`temperature_1`, `relative_humidity_2`, `barometric_pressure_3`; generic LPP types such as
`analog_in_4` need a field_map entry). Two keys for one metric (`temperature_1`, `temperature_2`):
the mapped or lowest-channel one is read, the others are rejected parts `same_quantity`. Unknown keys
and nested objects are ignored, null is a missing value, a value that is not a number is a rejected
part `decoded_payload.<key>`. Formatters carry no units, so values are canonical unless the field
map has "unit:<metric>" entries; LPP's barometric pressure is hPa, its humidity %.

Device: `end_device_ids.device_id`, then `dev_eui`, then `ctx.device_id`. Time:
`uplink_message.received_at`, then `received_at`, then `ctx.default_time`. Uplinks marked
`"simulated": true` (the console's "simulate uplink") are `simulated_uplink` unless the field map
says "simulated" = "store".
"""

from __future__ import annotations

import re
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
from schemas.metrics import canonical_metric_name
from schemas.readings import DecodeContext, Decoded, DecodeError, Reading

# Cayenne LPP data types (IPSO names as TTN's LPP formatter spells them) that are metrics.
CAYENNE_LPP: dict[str, str] = {
    "temperature": "temperature",
    "relative_humidity": "humidity",
    "barometric_pressure": "pressure",
}
# LPP types that are valid but mean nothing without a field_map entry.
CAYENNE_GENERIC = frozenset(
    {"digital_in", "digital_out", "analog_in", "analog_out", "luminosity", "presence", "generic_sensor"}
)
_LPP_NAME = re.compile(r"^([a-z_]+?)_(\d{1,3})$")


def _uplink_document(doc: Any) -> dict[str, Any]:
    if isinstance(doc, dict) and "uplink_message" not in doc and isinstance(doc.get("payload"), dict):
        doc = doc["payload"]  # AWS IoT Core envelope
    if not isinstance(doc, dict) or not isinstance(doc.get("uplink_message"), dict):
        raise DecodeError("bad_structure", "not a The Things Stack uplink (no uplink_message object)")
    return doc


def _key_metric(key: str) -> tuple[str | None, int]:
    """(metric, LPP channel or -1) of a decoded_payload key by name."""
    if (metric := canonical_metric_name(key)) is not None:
        return metric, -1
    if (lpp := _LPP_NAME.match(key)) is not None and lpp[1] in CAYENNE_LPP:
        return CAYENNE_LPP[lpp[1]], int(lpp[2])
    return None, -1


def _lpp_generic(key: str) -> bool:
    return (lpp := _LPP_NAME.match(key)) is not None and lpp[1] in CAYENNE_GENERIC


@register("ttn")
def decode(payload: bytes, ctx: DecodeContext) -> Decoded:
    doc = _uplink_document(load_json(payload))
    uplink: dict[str, Any] = doc["uplink_message"]
    if (uplink.get("simulated") is True or doc.get("simulated") is True) and ctx.field_map.get(
        "simulated"
    ) != "store":
        raise DecodeError("simulated_uplink", 'a simulated uplink (field_map simulated = "store" keeps them)')
    ids = doc.get("end_device_ids")
    ids = ids if isinstance(ids, dict) else {}
    device = text_field(ids, "device_id") or text_field(ids, "dev_eui") or ctx.device_id
    if not device:
        raise DecodeError("missing_device", "uplink without end_device_ids.device_id")
    decoded = uplink.get("decoded_payload")
    if not isinstance(decoded, dict):
        raise DecodeError(
            "no_decoded_payload",
            "uplink without decoded_payload (only frm_payload): set a payload formatter in The Things Stack",
        )
    stamp = uplink.get("received_at") or doc.get("received_at")
    time = parse_time(stamp) if stamp is not None else as_utc(ctx.default_time)
    units = units_from_field_map(ctx.field_map)
    chosen: dict[str, tuple[int, str]] = {}  # metric -> (rank, key): mapped first, then lowest channel
    for mapped_metric, field in metric_fields(ctx.field_map):
        chosen[mapped_metric] = (-2, field)
    mapped = {field for _rank, field in chosen.values()}
    losers: list[tuple[str, str]] = []
    for key, raw in decoded.items():
        if key in mapped or raw is None or isinstance(raw, dict | list):
            continue
        found, channel = _key_metric(key)
        if found is None:
            continue
        if found in chosen and chosen[found][0] <= channel:
            losers.append((key, found))
        else:
            if found in chosen:
                losers.append((chosen[found][1], found))
            chosen[found] = (channel, key)
    out = Decoded()
    for metric, (_rank, key) in chosen.items():
        try:
            value = numeric_value(metric, decoded.get(key), f"decoded_payload.{key}")
        except DecodeError as e:
            out.reject(e, f"decoded_payload.{key}", device)
            continue
        if value is not None:
            out.append(
                Reading(device, metric, time, value, units.get(metric), ctx.city, f"decoded_payload.{key}")
            )
    for loser, metric in losers:
        detail = f"{metric} is read from {chosen[metric][1]!r}; map {loser!r} in field_map to keep it"
        out.reject(DecodeError("same_quantity", detail), f"decoded_payload.{loser}", device)
    generic = sorted(k for k in decoded if _lpp_generic(k) and k not in mapped)
    hint = f"; Cayenne LPP {', '.join(generic[:5])} need field_map entries" if generic else ""
    return out.or_raise("no_known_metrics", f"no decoded_payload key is a known metric{hint}")
