"""The unit alias table and `normalize`: payload value + unit spelling -> value in the canonical unit.

Every spelling (SenML registry symbols, UN/CEFACT common codes as used by FIWARE `unitCode`, and
everyday spellings) maps to a `Unit` of a physical dimension with a linear scale/offset towards that
dimension's base unit. Converting is then `base = v * scale + offset` followed by the inverse for the
metric's canonical unit. Two cross-dimension rules need the metric:

* gas mixing ratio (ppb/ppm) <-> mass concentration, with the U4SSC factors at 20 °C;
* the pure number "one" (SenML "1" or "/", UN/CEFACT C62) is a fraction for percentage metrics
  (0.54 -> 54 %) and a count for vehicle counts; it is also the canonical unit of parking state.

Per (metric, unit) the resulting (scale, offset) pair is cached, so the hot path is one dict lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas import metrics as m
from schemas.readings import DecodeError

Dimension = Literal[
    "mass_concentration",
    "mixing_ratio",
    "temperature",
    "fraction",
    "one",
    "count",
    "pressure",
    "speed",
    "length",
    "level",
    "time",
    "volume",
    "volume_flow",
    "energy",
    "power",
]


class UnitError(DecodeError):
    """A unit that is unknown, or not convertible into the metric's canonical unit."""


@dataclass(frozen=True, slots=True)
class Unit:
    """`value_in_base = value * scale + offset` for the dimension's base unit."""

    dimension: Dimension
    scale: float = 1.0
    offset: float = 0.0


_UG_M3 = Unit("mass_concentration")  # base: µg/m³
_MG_M3 = Unit("mass_concentration", 1000.0)
_PPB = Unit("mixing_ratio")  # base: ppb
_PPM = Unit("mixing_ratio", 1000.0)
_CEL = Unit("temperature")  # base: °C
_FAH = Unit("temperature", 5 / 9, -32 * 5 / 9)
_KEL = Unit("temperature", 1.0, -273.15)
_RATIO = Unit("fraction")  # base: the fraction 0..1
_PCT = Unit("fraction", 0.01)
_ONE = Unit("one")
_COUNT = Unit("count")
_HPA = Unit("pressure")  # base: hPa
_PA = Unit("pressure", 0.01)
_KPA = Unit("pressure", 10.0)
_BAR = Unit("pressure", 1000.0)
_M_S = Unit("speed")  # base: m/s
_KM_H = Unit("speed", 1 / 3.6)
_MPH = Unit("speed", 0.44704)
_KNOT = Unit("speed", 1852 / 3600)
_M = Unit("length")  # base: m
_MM = Unit("length", 0.001)
_CM = Unit("length", 0.01)
_DB = Unit("level")  # base: dB
_BEL = Unit("level", 10.0)
_S = Unit("time")  # base: s
_MS = Unit("time", 0.001)
_MIN = Unit("time", 60.0)
_H = Unit("time", 3600.0)
_M3 = Unit("volume")  # base: m³
_L = Unit("volume", 0.001)
_M3_H = Unit("volume_flow")  # base: m³/h
_M3_S = Unit("volume_flow", 3600.0)
_L_H = Unit("volume_flow", 0.001)
_L_MIN = Unit("volume_flow", 0.06)
_L_S = Unit("volume_flow", 3.6)
_KWH = Unit("energy")  # base: kWh
_WH = Unit("energy", 0.001)
_MWH = Unit("energy", 1000.0)
_J = Unit("energy", 1 / 3.6e6)
_KJ = Unit("energy", 1 / 3600)
_MJ = Unit("energy", 1 / 3.6)
_KW = Unit("power")  # base: kW
_W = Unit("power", 0.001)
_MW = Unit("power", 1000.0)

# THE alias table. Sources: SenML registry (RFC 8428, RFC 8798 secondary units), UN/CEFACT Rec. 20
# common codes (FIWARE unitCode), and spellings seen in device payloads. "C" and "F" mean degrees
# here, not coulomb/farad: no city metric is an electric charge or capacitance.
UNIT_ALIASES: dict[str, Unit] = {
    # mass concentration
    "µg/m³": _UG_M3, "μg/m³": _UG_M3, "ug/m³": _UG_M3, "µg/m3": _UG_M3, "μg/m3": _UG_M3,
    "ug/m3": _UG_M3, "ug/m^3": _UG_M3, "µg/m^3": _UG_M3, "μg/m^3": _UG_M3, "ugm3": _UG_M3, "GQ": _UG_M3,
    "mg/m³": _MG_M3, "mg/m3": _MG_M3, "mg/m^3": _MG_M3, "GP": _MG_M3,
    # mixing ratio
    "ppb": _PPB, "61": _PPB, "ppm": _PPM, "59": _PPM,
    # temperature
    "Cel": _CEL, "°C": _CEL, "℃": _CEL, "degC": _CEL, "C": _CEL, "CEL": _CEL, "celsius": _CEL,
    "°F": _FAH, "℉": _FAH, "degF": _FAH, "F": _FAH, "FAH": _FAH, "fahrenheit": _FAH,
    "K": _KEL, "KEL": _KEL, "kelvin": _KEL,
    # dimensionless
    "%": _PCT, "%RH": _PCT, "P1": _PCT, "percent": _PCT, "pct": _PCT,
    "ratio": _RATIO, "fraction": _RATIO,
    "1": _ONE, "/": _ONE, "C62": _ONE,
    "count": _COUNT, "veh": _COUNT, "vehicles": _COUNT, "vehicle": _COUNT, "H87": _COUNT, "NAR": _COUNT,
    # pressure
    "hPa": _HPA, "A97": _HPA, "mbar": _HPA, "mb": _HPA, "MBR": _HPA,
    "Pa": _PA, "PAL": _PA, "kPa": _KPA, "KPA": _KPA, "bar": _BAR, "BAR": _BAR,
    # speed
    "m/s": _M_S, "MTS": _M_S, "km/h": _KM_H, "kmh": _KM_H, "kph": _KM_H, "KMH": _KM_H,
    "mph": _MPH, "HM": _MPH, "kn": _KNOT, "kt": _KNOT, "KNT": _KNOT,
    # length
    "m": _M, "MTR": _M, "mm": _MM, "MMT": _MM, "cm": _CM, "CMT": _CM,
    # sound level
    "dB": _DB, "dBA": _DB, "dB(A)": _DB, "dBa": _DB, "2N": _DB, "Bspl": _BEL,
    # time
    "s": _S, "sec": _S, "SEC": _S, "ms": _MS, "min": _MIN, "MIN": _MIN, "h": _H, "HUR": _H,
    # volume
    "m³": _M3, "m3": _M3, "m^3": _M3, "MTQ": _M3,
    "l": _L, "L": _L, "LTR": _L, "liter": _L, "liters": _L, "litre": _L, "litres": _L,
    # volume flow
    "m³/h": _M3_H, "m3/h": _M3_H, "MQH": _M3_H, "m3/s": _M3_S, "m³/s": _M3_S, "MQS": _M3_S,
    "l/h": _L_H, "L/h": _L_H, "E32": _L_H, "l/min": _L_MIN, "L/min": _L_MIN, "L2": _L_MIN,
    "l/s": _L_S, "L/s": _L_S,
    # energy
    "kWh": _KWH, "kW.h": _KWH, "KWH": _KWH, "Wh": _WH, "WHR": _WH, "MWh": _MWH, "MWH": _MWH,
    "J": _J, "JOU": _J, "kJ": _KJ, "KJO": _KJ, "MJ": _MJ, "3B": _MJ,
    # power
    "kW": _KW, "KWT": _KW, "W": _W, "WTT": _W, "MW": _MW, "MAW": _MW,
}  # fmt: skip

# Case-insensitive fallback. Mega and milli differ only by case, so megawatt/-hour/-joule need exact
# spelling ("mW" must not become "MW").
_CASE_SENSITIVE = frozenset({"mw", "mwh", "mj"})
_FOLDED_ALIASES: dict[str, Unit] = {
    k.casefold(): u for k, u in UNIT_ALIASES.items() if k.casefold() not in _CASE_SENSITIVE
}

# µg/m³ per ppb at 20 °C, 1013 hPa (molar volume 24.04 L). NO2, SO2, O3 and CO are the U4SSC factors
# (CO: 1 ppm = 1.145 mg/m³); NO, CO2 and CH4 use molar mass / 24.04; NOx is expressed as NO2.
GAS_UG_M3_PER_PPB: dict[str, float] = {
    "no2": 1.9,
    "nox": 1.9,
    "so2": 2.62,
    "o3": 1.96,
    "co": 1.145,
    "no": 1.25,
    "co2": 1.83,
    "methane": 0.667,
}


def lookup_unit(spelling: str) -> Unit | None:
    """The `Unit` for a spelling: exact match first, then trimmed and case-insensitive."""
    unit = UNIT_ALIASES.get(spelling)
    if unit is None:
        trimmed = spelling.strip()
        unit = UNIT_ALIASES.get(trimmed) or _FOLDED_ALIASES.get(trimmed.casefold())
    return unit


_ONE_COMPATIBLE: frozenset[Dimension] = frozenset({"fraction", "count"})


def _conversion(metric: str, spelling: str) -> tuple[float, float]:
    """(scale, offset) taking a value in `spelling` to the metric's canonical unit."""
    meta = m.METRICS.get(metric)
    if meta is None:
        raise UnitError("unknown_metric", f"{metric!r}")
    src = lookup_unit(spelling)
    if src is None:
        raise UnitError("unknown_unit", f"{spelling!r} for {metric}")
    dst = UNIT_ALIASES[meta.canonical_unit]
    scale, offset = src.scale, src.offset
    if src.dimension == "one" and dst.dimension in _ONE_COMPATIBLE:
        pass  # the number one is the base unit of fractions and counts alike
    elif src.dimension != dst.dimension:
        factor = GAS_UG_M3_PER_PPB.get(metric)
        if factor is None or {src.dimension, dst.dimension} != {"mixing_ratio", "mass_concentration"}:
            raise UnitError("wrong_unit", f"{spelling!r} is not a unit for {metric} ({meta.canonical_unit})")
        if src.dimension == "mixing_ratio":
            scale, offset = scale * factor, offset * factor
        else:
            scale, offset = scale / factor, offset / factor
    # value_in_base = v * scale + offset; canonical = (base - dst.offset) / dst.scale
    return scale / dst.scale, (offset - dst.offset) / dst.scale


_CACHE: dict[tuple[str, str], tuple[float, float]] = {}
_CACHE_LIMIT = 4096  # payloads choose the spellings: keep the cache bounded


def conversion(metric: str, unit: str | None) -> tuple[float, float]:
    """Cached (scale, offset) for `normalize`; raises UnitError for unknown or incompatible units."""
    if unit is None:
        if metric not in m.METRICS:
            raise UnitError("unknown_metric", f"{metric!r}")
        return 1.0, 0.0
    key = (metric, unit)
    hit = _CACHE.get(key)
    if hit is None:
        hit = _conversion(metric, unit)
        if len(_CACHE) < _CACHE_LIMIT:
            _CACHE[key] = hit
    return hit


def normalize(metric: str, value: float, unit: str | None) -> float:
    """`value` in `unit` expressed in the metric's canonical unit; `unit=None` means already canonical."""
    if unit is None:
        if metric in m.METRICS:
            return value
        raise UnitError("unknown_metric", f"{metric!r}")
    hit = _CACHE.get((metric, unit))
    scale, offset = hit if hit is not None else conversion(metric, unit)
    return value * scale + offset
