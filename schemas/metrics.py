"""The metrics catalog: every metric citykpi stores, its canonical unit and how it aggregates.

Decoders map payload names onto these canonical names through `canonical_metric_name`, the single
metric-name alias table; `schemas.units.normalize` converts values into `Metric.canonical_unit`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from schemas.cache import byte_bounded_cache

Kind = Literal["air", "noise", "traffic", "water", "energy", "parking", "waste", "weather", "drainage"]
Aggregation = Literal["linear", "decibel", "cumulative", "state"]

# Canonical unit strings: the only spellings stored with readings ("µ" is U+00B5 MICRO SIGN).
UG_M3 = "µg/m³"
MG_M3 = "mg/m³"
PPM = "ppm"
CELSIUS = "°C"
PERCENT = "%"
HPA = "hPa"
M_S = "m/s"
KM_H = "km/h"
MM = "mm"
METRE = "m"
DB = "dB"
VEHICLES = "veh"
SECOND = "s"
M3 = "m³"
M3_H = "m³/h"
KWH = "kWh"
KW = "kW"
STATE = "1"


@dataclass(frozen=True, slots=True)
class Metric:
    """One measurable quantity; plausible bounds are for validation, not physics limits."""

    name: str
    canonical_unit: str
    kind: Kind
    aggregation: Aggregation
    plausible_min: float
    plausible_max: float
    description: str

    def __post_init__(self) -> None:
        if self.kind not in get_args(Kind):
            raise ValueError(f"metric {self.name}: unknown kind {self.kind!r}")
        if self.aggregation not in get_args(Aggregation):
            raise ValueError(f"metric {self.name}: unknown aggregation {self.aggregation!r}")
        if not self.plausible_min < self.plausible_max:
            raise ValueError(f"metric {self.name}: empty plausible range")


_CATALOG = (
    Metric("pm25", UG_M3, "air", "linear", 0, 1000, "Particulate matter below 2.5 µm, mass concentration"),
    Metric("pm10", UG_M3, "air", "linear", 0, 2000, "Particulate matter below 10 µm, mass concentration"),
    Metric("pm1", UG_M3, "air", "linear", 0, 1000, "Particulate matter below 1 µm, mass concentration"),
    Metric("no2", UG_M3, "air", "linear", 0, 2000, "Nitrogen dioxide"),
    Metric("o3", UG_M3, "air", "linear", 0, 1000, "Ozone"),
    Metric("so2", UG_M3, "air", "linear", 0, 3000, "Sulphur dioxide"),
    Metric("no", UG_M3, "air", "linear", 0, 2000, "Nitrogen monoxide"),
    Metric("nox", UG_M3, "air", "linear", 0, 4000, "Nitrogen oxides, expressed as NO2"),
    Metric("co", MG_M3, "air", "linear", 0, 100, "Carbon monoxide"),
    Metric("co2", PPM, "air", "linear", 0, 10000, "Carbon dioxide, mixing ratio"),
    Metric("temperature", CELSIUS, "weather", "linear", -60, 70, "Air temperature"),
    Metric("humidity", PERCENT, "weather", "linear", 0, 100, "Relative humidity"),
    Metric("pressure", HPA, "weather", "linear", 300, 1100, "Atmospheric pressure at the station"),
    Metric("wind_speed", M_S, "weather", "linear", 0, 100, "Wind speed"),
    Metric(
        "precipitation", MM, "weather", "linear", 0, 500, "Precipitation amount in the observation interval"
    ),
    Metric("laeq", DB, "noise", "decibel", 0, 150, "A-weighted equivalent continuous sound level"),
    Metric("lamax", DB, "noise", "decibel", 0, 150, "Maximum A-weighted sound level in the interval"),
    Metric("lamin", DB, "noise", "decibel", 0, 150, "Minimum A-weighted sound level in the interval"),
    Metric("vehicle_count", VEHICLES, "traffic", "linear", 0, 100_000, "Vehicles per observation interval"),
    Metric("vehicle_speed", KM_H, "traffic", "linear", 0, 300, "Average vehicle speed"),
    Metric("occupancy", PERCENT, "traffic", "linear", 0, 100, "Share of time a detector is occupied"),
    Metric("travel_time", SECOND, "traffic", "linear", 0, 86_400, "Travel time over a road segment"),
    Metric("water_volume_total", M3, "water", "cumulative", 0, 1e9, "Water meter index (cumulative)"),
    Metric("water_flow", M3_H, "water", "linear", 0, 100_000, "Instantaneous water flow rate"),
    Metric(
        "water_temperature",
        CELSIUS,
        "water",
        "linear",
        -5,
        100,
        "Water temperature (Smart Data Models WaterQualityObserved.temperature), never air temperature",
    ),
    Metric("energy_total", KWH, "energy", "cumulative", 0, 1e10, "Electricity meter index (cumulative)"),
    Metric("power", KW, "energy", "linear", -1e6, 1e6, "Active power; negative when exporting"),
    Metric("parking_occupied", STATE, "parking", "state", 0, 1, "Parking spot state: 1 occupied, 0 free"),
    Metric("fill_level", PERCENT, "waste", "linear", 0, 100, "Waste container filling level"),
    Metric("methane", PPM, "waste", "linear", 0, 1_000_000, "Methane concentration, mixing ratio"),
    Metric("water_level", METRE, "drainage", "linear", -100, 1000, "Water level in drains or channels"),
)

METRICS: dict[str, Metric] = {m.name: m for m in _CATALOG}


# The one metric-name alias table, keyed by the folded spelling (see `_fold`). Format-specific
# vocabularies that clash with ordinary words (Sensor.Community's P1 = PM10) stay in their decoder.
_NAME_ALIASES: dict[str, str] = {
    **{m: m for m in METRICS},
    "pm2.5": "pm25",
    "pm1.0": "pm1",
    "pm10.0": "pm10",
    "nitrogendioxide": "no2",
    "ozone": "o3",
    "sulphurdioxide": "so2",
    "sulfurdioxide": "so2",
    "nitrogenmonoxide": "no",
    "carbonmonoxide": "co",
    "carbondioxide": "co2",
    "temp": "temperature",
    "airtemperature": "temperature",
    "temperaturec": "temperature",
    "hum": "humidity",
    "rh": "humidity",
    "relativehumidity": "humidity",
    "press": "pressure",
    "atmosphericpressure": "pressure",
    "barometricpressure": "pressure",
    "windspeed": "wind_speed",
    "rain": "precipitation",
    "rainfall": "precipitation",
    "noise": "laeq",
    "leq": "laeq",
    "noiselaeq": "laeq",
    "noiselamax": "lamax",
    "noiselamin": "lamin",
    "vehiclecount": "vehicle_count",
    "vehicles": "vehicle_count",
    "averagevehiclespeed": "vehicle_speed",
    "vehiclespeed": "vehicle_speed",
    "traveltime": "travel_time",
    "waterconsumption": "water_volume_total",
    "watervolume": "water_volume_total",
    "watervolumetotal": "water_volume_total",
    "waterflow": "water_flow",
    "watertemperature": "water_temperature",
    "watertemp": "water_temperature",
    "flowrate": "water_flow",
    "energy": "energy_total",
    "energytotal": "energy_total",
    "activeenergy": "energy_total",
    "activepower": "power",
    "parkingoccupied": "parking_occupied",
    "fillinglevel": "fill_level",
    "filllevel": "fill_level",
    "methaneconcentration": "methane",
    "ch4": "methane",
    "waterlevel": "water_level",
}

_DIGIT_SEP_RE = re.compile(r"(?<=\d)[\s_\-,](?=\d)")
_SEP_RE = re.compile(r"[\s_\-]+")


def _fold(raw: str) -> str:
    """Case- and separator-insensitive key; a separator between digits is a decimal point, so
    "PM1_0" folds to "pm1.0" (PM1), never to "pm10"."""
    return _SEP_RE.sub("", _DIGIT_SEP_RE.sub(".", raw.casefold()))


_FOLDED: dict[str, str] = {_fold(k): v for k, v in _NAME_ALIASES.items()}


@byte_bounded_cache(max_bytes=4 * 1024 * 1024, max_key_bytes=256)
def canonical_metric_name(raw: str) -> str | None:
    """Map a payload's measurement name ("PM2_5", "temp", "LAeq") to a canonical metric, or None."""
    direct = METRICS.get(raw)
    if direct is not None:
        return direct.name
    return _FOLDED.get(_fold(raw))
