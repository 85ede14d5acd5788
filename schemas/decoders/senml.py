"""SenML JSON (RFC 8428) packs.

Base fields (bn, bt, bu, bv, bs, bver) carry forward to every later record until replaced. The
resolved name bn + n is split on its last ':' or '/': device id before, measurement name after
(`urn:dev:ow:10e2073a01080063:` + `temp`). Resolved times below 2**28 are relative to
`ctx.received_at`. Records with string/data values, or with unknown names, are skipped; a pack that
yields nothing raises `no_known_metrics`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.decoders._common import as_number, as_utc, load_json, state_value
from schemas.decoders._registry import register
from schemas.metrics import METRICS, canonical_metric_name
from schemas.readings import DecodeContext, DecodeError, Reading

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


@register("senml")
def decode(payload: bytes, ctx: DecodeContext) -> list[Reading]:
    pack = load_json(payload)
    if isinstance(pack, dict):
        pack = [pack]
    if not isinstance(pack, list) or not pack:
        raise DecodeError("bad_structure", "SenML pack must be a non-empty array of records")
    now = as_utc(ctx.received_at).timestamp()
    base_name, base_unit = "", None
    base_time = base_value = base_sum = 0.0
    readings: list[Reading] = []
    for rec in pack:
        if not isinstance(rec, dict):
            raise DecodeError("bad_structure", "SenML record must be an object")
        if "bver" in rec:
            version = rec["bver"]
            if type(version) is not int:
                raise DecodeError("wrong_type", "SenML bver must be an integer")
            if version > SENML_VERSION:
                raise DecodeError("unsupported_version", f"SenML version {version}")
        if "bn" in rec:
            base_name = _text(rec, "bn", None) or ""
        if "bt" in rec:
            base_time = as_number(rec["bt"], "SenML bt")
        if "bu" in rec:
            base_unit = _text(rec, "bu", None)
        if "bv" in rec:
            base_value = as_number(rec["bv"], "SenML bv")
        if "bs" in rec:
            base_sum = as_number(rec["bs"], "SenML bs")

        device, raw_metric = _split_name(base_name + (_text(rec, "n", None) or ""))
        metric = canonical_metric_name(raw_metric) if raw_metric else None
        if metric is None:
            continue
        if "v" in rec:
            value = base_value + as_number(rec["v"], f"SenML v of {raw_metric}")
        elif "vb" in rec and METRICS[metric].aggregation == "state":
            value = state_value(rec["vb"], f"SenML vb of {raw_metric}")
        elif "s" in rec and METRICS[metric].aggregation == "cumulative":
            value = base_sum + as_number(rec["s"], f"SenML s of {raw_metric}")
        else:
            continue  # vs / vd / vb of a numeric metric, or no value at all
        device = ctx.device_id or device
        if not device:
            raise DecodeError("missing_device", f"SenML name {raw_metric!r} has no device part")
        offset = as_number(rec["t"], "SenML t") if "t" in rec else 0.0
        readings.append(
            Reading(
                device_id=device,
                metric=metric,
                time=_timestamp(base_time + offset, now),
                value=value,
                unit=_text(rec, "u", base_unit),
                city=ctx.city,
            )
        )
    if not readings:
        raise DecodeError("no_known_metrics", "no SenML record names a known metric")
    return readings
