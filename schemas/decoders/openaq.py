"""OpenAQ: API v3 measurement responses and the archive CSV.

API v3 `/sensors/{id}/measurements` results carry no sensor id, so the caller names the device in
`ctx.device_id` (a result's own `sensorsId`, as in `/latest`, wins). A result is an interval average;
like every interval in citykpi it is stamped at its end, `period.datetimeTo.utc` (then
`period.datetimeFrom.utc`, `datetime.utc`). A result without a time is an error, never "now".
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import Any

from schemas.decoders._common import as_number, load_json, number_from_text, parse_iso, parse_time, text_field
from schemas.decoders._registry import register
from schemas.metrics import canonical_metric_name
from schemas.readings import DecodeContext, Decoded, DecodeError, Reading

DEVICE_PREFIX = "openaq-"
_CSV_COLUMNS = ("sensors_id", "datetime", "parameter", "units", "value")


def _utc_of(doc: Any, *path: str) -> Any:
    for key in (*path, "utc"):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _decode_result(result: Any, ctx: DecodeContext) -> Reading | None:
    if not isinstance(result, dict):
        raise DecodeError("bad_structure", "OpenAQ result must be an object")
    parameter = result.get("parameter")
    if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
        raise DecodeError("bad_structure", "OpenAQ result without parameter.name")
    metric = canonical_metric_name(parameter["name"])
    if metric is None or result.get("value") is None:
        return None
    sensor = text_field(result, "sensorsId")
    device = DEVICE_PREFIX + sensor if sensor else ctx.device_id
    if not device:
        raise DecodeError("missing_device", "OpenAQ measurements need ctx.device_id")
    stamp = (  # the start of the averaging period: the value belongs to the interval it covers
        _utc_of(result, "period", "datetimeFrom")
        or _utc_of(result, "period", "datetimeTo")
        or _utc_of(result, "datetime")
    )
    if stamp is None:
        raise DecodeError("bad_time", "OpenAQ result without period or datetime")
    units = parameter.get("units")
    return Reading(
        device_id=device,
        metric=metric,
        time=parse_time(stamp),
        value=as_number(result["value"], f"OpenAQ {parameter['name']}"),
        unit=units if isinstance(units, str) and units else None,
        city=ctx.city,
    )


@register("openaq")
def decode(payload: bytes, ctx: DecodeContext) -> Decoded:
    doc = load_json(payload)
    results = doc.get("results") if isinstance(doc, dict) else doc
    if not isinstance(results, list):
        raise DecodeError("bad_structure", "expected an OpenAQ response with a results array")
    out = Decoded()
    for i, result in enumerate(results):
        try:
            if (r := _decode_result(result, ctx)) is not None:
                r.path = f"results[{i}]"
                out.append(r)
        except DecodeError as e:
            out.reject(e, f"results[{i}]")
    return out.or_raise("no_known_metrics", "no OpenAQ result has a known parameter and a value")


def iter_openaq_csv(lines: Iterable[str]) -> Iterator[Reading | DecodeError]:
    """Readings of an OpenAQ archive CSV (`location_id,sensors_id,location,datetime,...,value`).

    Times carry the station's UTC offset and become UTC; units (µg/m³, ppm, ppb) stay as given.
    Devices are "openaq-<sensors_id>". Unknown parameters are skipped, bad rows yield a `DecodeError`
    and the iteration goes on; a header without the needed columns ends it.
    """
    rows = csv.reader(lines)
    index: dict[str, int] = {}
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            yield DecodeError("bad_csv", f"line {rows.line_num}: {exc}")
            continue
        if not row:
            continue
        if not index:
            if not set(_CSV_COLUMNS) <= set(row):
                yield DecodeError("bad_csv", f"line {rows.line_num}: header lacks one of {_CSV_COLUMNS}")
                return
            index = {name: row.index(name) for name in _CSV_COLUMNS}
            continue
        try:
            reading = _csv_row(row, index, rows.line_num)
        except DecodeError as exc:
            yield exc
        else:
            if reading is not None:
                yield reading


def _csv_row(row: list[str], index: dict[str, int], lineno: int) -> Reading | None:
    if len(row) <= max(index.values()):
        raise DecodeError("bad_csv", f"line {lineno}: {len(row)} fields")
    metric = canonical_metric_name(row[index["parameter"]])
    value = number_from_text(row[index["value"]], f"line {lineno} value")
    if metric is None or value is None:
        return None
    sensor = row[index["sensors_id"]]
    if not sensor:
        raise DecodeError("missing_device", f"line {lineno}: empty sensors_id")
    unit = row[index["units"]] or None
    return Reading(DEVICE_PREFIX + sensor, metric, parse_iso(row[index["datetime"]]), value, unit)
