"""Sensor.Community (luftdaten) firmware JSON and the archive CSV.

The vocabulary is the project's own: P1 = PM10, P2 = PM2.5, P0 = PM1, noise_LA_min/max, and pressure
in pascal (BME280/BMP firmware). Firmware posts to custom APIs prefix names with the sensor ("SDS_P1",
"BME280_pressure"); the prefix is dropped. Values travel as strings; an empty string is missing,
any other text that is not a number is a rejected part `sensordatavalues[i]`.

One post may carry a quantity twice (a DHT22 `temperature` and a `BME280_temperature`). The value of
the more accurate sensor is stored, whatever the payload order (`SENSOR_PRECEDENCE`: SDS011, SPS30,
PMS, HPM, NPM for particles; BME280, SHT3x, HTU21D, BMP280, BMP180, DS18B20 for weather; a bare
`temperature`/`humidity` is the firmware's DHT22, ranked last); the other is not stored.

Device: `X-Sensor` header, `esp8266-<esp8266id>`, `sensor-community-<sensor.id>`, else the topic's.
`timestamp` (API format) is UTC, as the Sensor.Community API writes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from schemas.decoders._common import as_utc, load_json, number_from_text, parse_iso, parse_time, text_field
from schemas.decoders._registry import register
from schemas.readings import DecodeContext, Decoded, DecodeError, Reading

# value_type -> (canonical metric, unit when not canonical)
VALUE_TYPES: dict[str, tuple[str, str | None]] = {
    "P0": ("pm1", None),
    "P1": ("pm10", None),
    "P2": ("pm25", None),
    "temperature": ("temperature", None),
    "humidity": ("humidity", None),
    "pressure": ("pressure", "Pa"),
    "noise_LAeq": ("laeq", None),
    "noise_LA_min": ("lamin", None),
    "noise_LA_max": ("lamax", None),
}
CSV_DEVICE_PREFIX = "sensor-community-"


# Sensor prefixes, most accurate first, for a quantity carried twice in one post.
SENSOR_PRECEDENCE = (
    "SDS",
    "SPS30",
    "PMS",
    "HPM",
    "NPM",
    "BME280",
    "SHT3X",
    "SHT31",
    "SHT35",
    "HTU21D",
    "BMP280",
    "BMP",
    "DS18B20",
)
_PARTICLES = frozenset({"P0", "P1", "P2"})


def _rank(name: str) -> int:
    """Precedence of a value_type's sensor: a bare P0/P1/P2 is the SDS011, any other bare name the DHT22."""
    if name in VALUE_TYPES:
        return 0 if name in _PARTICLES else len(SENSOR_PRECEDENCE)
    prefix = name.partition("_")[0]
    return SENSOR_PRECEDENCE.index(prefix) if prefix in SENSOR_PRECEDENCE else len(SENSOR_PRECEDENCE) + 1


def value_type(name: str) -> tuple[str, str | None] | None:
    """(metric, unit) for a value_type or CSV column, with or without a sensor prefix."""
    return VALUE_TYPES.get(name) or VALUE_TYPES.get(name.partition("_")[2])


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.casefold()
    return next((v for k, v in headers.items() if k.casefold() == wanted and v), None)


def _device(entry: dict[str, Any], ctx: DecodeContext) -> str:
    """X-Sensor header, then esp8266id (as "esp8266-<id>", like the header), then sensor.id."""
    if header := _header(ctx.headers, "X-Sensor"):
        return header
    if chip := text_field(entry, "esp8266id"):
        return f"esp8266-{chip}"
    sensor = entry.get("sensor")
    if isinstance(sensor, dict) and (sensor_id := text_field(sensor, "id")):
        return f"{CSV_DEVICE_PREFIX}{sensor_id}"
    if ctx.device_id:
        return ctx.device_id
    raise DecodeError("missing_device", "no X-Sensor header, esp8266id or sensor.id")


def _decode_entry(entry: Any, ctx: DecodeContext, path: str, out: Decoded) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("sensordatavalues"), list):
        raise DecodeError("bad_structure", "expected an object with a sensordatavalues array")
    device = _device(entry, ctx)
    stamp = entry.get("timestamp")
    time = parse_time(stamp) if stamp is not None else as_utc(ctx.default_time)
    best: dict[str, tuple[int, Reading]] = {}
    for i, item in enumerate(entry["sensordatavalues"]):
        where = f"{path}sensordatavalues[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("value_type"), str):
            out.reject(DecodeError("bad_structure", "item without a value_type string"), where, device)
            continue
        name = item["value_type"]
        if (known := value_type(name)) is None:
            continue
        try:
            value = number_from_text(item.get("value"), name)
        except DecodeError as e:
            out.reject(e, where, device)
            continue
        rank = _rank(name)
        if value is not None and (known[0] not in best or rank < best[known[0]][0]):
            best[known[0]] = (rank, Reading(device, known[0], time, value, known[1], ctx.city, where))
    out.extend(r for _rank, r in best.values())


@register("sensor-community")
def decode(payload: bytes, ctx: DecodeContext) -> Decoded:
    doc = load_json(payload)
    out = Decoded()
    if isinstance(doc, list):
        for i, entry in enumerate(doc):
            try:
                _decode_entry(entry, ctx, f"[{i}].", out)
            except DecodeError as e:
                out.reject(e, f"[{i}]")
    else:
        _decode_entry(doc, ctx, "", out)
    return out.or_raise("no_known_metrics", "no sensordatavalues entry is a known metric")


def iter_sensor_community_csv(lines: Iterable[str]) -> Iterator[Reading | DecodeError]:
    """Readings of a Sensor.Community archive CSV (`sensor_id;sensor_type;...;timestamp;P1;...`).

    The first non-empty line is the header; it decides which columns are metrics, so SDS011, BME280
    and noise files all work. Timestamps without zone are UTC. Bad rows yield a `DecodeError` (with
    the line number) and the iteration goes on; a bad header ends it.
    """
    columns: list[tuple[int, str, str | None]] = []
    id_col = time_col = width = -1
    for lineno, line in enumerate(lines, start=1):
        fields = line.rstrip("\r\n").split(";")
        if fields == [""]:
            continue
        if width < 0:
            if "sensor_id" not in fields or "timestamp" not in fields:
                yield DecodeError("bad_csv", f"line {lineno}: header lacks sensor_id or timestamp")
                return
            id_col, time_col, width = fields.index("sensor_id"), fields.index("timestamp"), len(fields)
            columns = [(i, *known) for i, name in enumerate(fields) if (known := value_type(name))]
            continue
        try:
            yield from _csv_row(fields, lineno, width, id_col, time_col, columns)
        except DecodeError as exc:
            yield exc


def _csv_row(
    fields: list[str],
    lineno: int,
    width: int,
    id_col: int,
    time_col: int,
    columns: list[tuple[int, str, str | None]],
) -> list[Reading]:
    if len(fields) != width:
        raise DecodeError("bad_csv", f"line {lineno}: {len(fields)} fields, header has {width}")
    if not fields[id_col]:
        raise DecodeError("missing_device", f"line {lineno}: empty sensor_id")
    device = CSV_DEVICE_PREFIX + fields[id_col]
    time: datetime = parse_iso(fields[time_col])
    readings = []
    for col, metric, unit in columns:
        value = number_from_text(fields[col], f"line {lineno} column {col + 1}")
        if value is not None:
            readings.append(Reading(device, metric, time, value, unit))
    return readings
