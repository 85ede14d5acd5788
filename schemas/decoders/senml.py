"""SenML JSON (RFC 8428) packs.

Base fields (bn, bt, bu, bv, bs, bver) carry forward to every later record until replaced. The
resolved name bn + n is split on its last ':' or '/': device id before, measurement name after
(`urn:dev:ow:10e2073a01080063:` + `temp`). Resolved times below 2**28 are relative to
`ctx.default_time`. The device is the name's device part, else `ctx.device_id` (the topic's); the
pipeline checks it against the route (see ingest/routing.py). Records with unknown names are
skipped; a record for a known metric that cannot be stored (a string `vs`, `vd`, `vb` for a number,
no value, a bad `t`) is a rejected part `[i]`; a bad base field rejects the pack, since it shapes
every later record. A pack that yields nothing raises `no_known_metrics`, naming the names it saw.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.decoders._common import as_number, as_utc, load_json, state_value
from schemas.decoders._registry import register
from schemas.metrics import METRICS, canonical_metric_name
from schemas.readings import DecodeContext, Decoded, DecodeError, Reading

SENML_VERSION = 10
_RELATIVE_BELOW = 2**28


def _split_name(name: str) -> tuple[str, str]:
    """("device", "measurement") from a resolved SenML name."""
    cut = max(name.rfind(":"), name.rfind("/"))
    if cut < 0:
        return "", name
    return name[:cut].rstrip(":/"), name[cut + 1 :]


def _text(rec: dict[str, object], key: str, current: str | None) -> str | None:
    value = rec.get(key, current)
    if value is None or isinstance(value, str):
        return value
    raise DecodeError("wrong_type", f"SenML {key} must be a string")


def _timestamp(seconds: float, now: float) -> datetime:
    if seconds < _RELATIVE_BELOW:
        seconds += now
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise DecodeError("bad_time", f"SenML time {seconds!r}: {exc}") from None


# Value fields and the metrics they can carry: `vb` only a state, `s` only a cumulative index.
_VALUE_FIELDS = ("v", "vb", "s", "vs", "vd")


def _value(rec: dict[str, Any], metric: str, raw_metric: str, base_value: float, base_sum: float) -> float:
    aggregation = METRICS[metric].aggregation
    if "v" in rec:
        v = rec["v"]
        if type(v) is float:  # the common case, without building the error's text
            return base_value + v
        return base_value + as_number(v, f"SenML v of {raw_metric}")
    if "vb" in rec:
        if aggregation != "state":
            raise DecodeError("wrong_type", f"SenML vb (a boolean) for {metric}, which is a number; send v")
        return state_value(rec["vb"], f"SenML vb of {raw_metric}")
    if "s" in rec:
        if aggregation != "cumulative":
            raise DecodeError("wrong_type", f"SenML s (a sum) for {metric}, which is not a cumulative index")
        return base_sum + as_number(rec["s"], f"SenML s of {raw_metric}")
    if "vs" in rec or "vd" in rec:
        kind = "vs (a string)" if "vs" in rec else "vd (binary data)"
        raise DecodeError("wrong_type", f"SenML {kind} for {metric}, which is a number; send v")
    raise DecodeError("missing_value", f"SenML record for {metric} has no v, vb or s")


@register("senml")
def decode(payload: bytes, ctx: DecodeContext) -> Decoded:
    pack = load_json(payload)
    if isinstance(pack, dict):
        pack = [pack]
    if not isinstance(pack, list) or not pack:
        raise DecodeError("bad_structure", "SenML pack must be a non-empty array of records")
    now = as_utc(ctx.default_time).timestamp()
    base_name, base_unit = "", None
    base_time = base_value = base_sum = 0.0
    out = Decoded()
    unknown: list[str] = []
    names: dict[str, tuple[str, str | None, str]] = {}  # resolved name -> device, metric, raw metric
    for i, rec in enumerate(pack):
        if not isinstance(rec, dict):
            out.reject(DecodeError("bad_structure", "SenML record must be an object"), f"[{i}]")
            continue
        # base fields shape every later record: a bad one makes the rest of the pack unreadable
        if "bver" in rec:
            version = rec["bver"]
            if type(version) is not int:
                raise DecodeError("wrong_type", f"[{i}].bver: SenML bver must be an integer")
            if version > SENML_VERSION:
                raise DecodeError("unsupported_version", f"SenML version {version}")
        if "bn" in rec:
            base_name = _text(rec, "bn", None) or ""
        if "bt" in rec:
            base_time = as_number(rec["bt"], f"[{i}].bt")
        if "bu" in rec:
            base_unit = _text(rec, "bu", None)
        if "bv" in rec:
            base_value = as_number(rec["bv"], f"[{i}].bv")
        if "bs" in rec:
            base_sum = as_number(rec["bs"], f"[{i}].bs")
        try:
            name = base_name + (_text(rec, "n", None) or "")
        except DecodeError as e:
            out.reject(e, f"[{i}].n")
            continue
        known = names.get(name)
        if known is None:  # a pack mostly repeats its names: each split and looked up once
            device, raw_metric = _split_name(name)
            known = names[name] = (
                device,
                canonical_metric_name(raw_metric) if raw_metric else None,
                raw_metric,
            )
        device, metric, raw_metric = known
        if metric is None:
            if raw_metric and any(k in rec for k in _VALUE_FIELDS):
                unknown.append(raw_metric)
            continue
        device = device or ctx.device_id or ""
        try:
            if not device:
                raise DecodeError("missing_device", f"SenML name {raw_metric!r} has no device part")
            value = _value(rec, metric, raw_metric, base_value, base_sum)
            offset = as_number(rec["t"], "SenML t") if "t" in rec else 0.0
            time = _timestamp(base_time + offset, now)
            unit = _text(rec, "u", base_unit)
        except DecodeError as e:
            out.reject(e, f"[{i}]", device or None)
            continue
        out.append(Reading(device, metric, time, value, unit, ctx.city, f"[{i}]"))
    seen = f" (names: {', '.join(sorted(set(unknown))[:8])})" if unknown else ""
    return out.or_raise("no_known_metrics", f"no SenML record names a known metric{seen}")
