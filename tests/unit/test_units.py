"""Unit aliases and conversions into canonical units, with hand-worked values."""

from __future__ import annotations

import math

import pytest

from schemas.readings import DecodeError
from schemas.units import UNIT_ALIASES, UnitError, conversion, lookup_unit, normalize


@pytest.mark.parametrize(
    ("metric", "value", "unit", "expected"),
    [
        ("no2", 10, "ppb", 19.0),  # U4SSC: 1.9 µg/m³ per ppb
        ("no2", 0.01, "ppm", 19.0),
        ("no2", 10, "61", 19.0),  # UN/CEFACT ppb
        ("so2", 10, "ppb", 26.2),
        ("o3", 10, "ppb", 19.6),
        ("co", 1, "ppm", 1.145),  # mg/m³ = ppm × 1.145
        ("co", 1, "59", 1.145),
        ("co", 500, "GP", 500.0),
        ("co", 1145, "ug/m3", 1.145),
        ("pm25", 12.5, "GQ", 12.5),
        ("pm25", 0.0125, "mg/m3", 12.5),
        ("temperature", 68, "°F", 20.0),
        ("temperature", 68, "FAH", 20.0),
        ("temperature", 293.15, "K", 20.0),
        ("temperature", 21.5, "Cel", 21.5),
        ("temperature", 21.5, "degC", 21.5),
        ("energy_total", 1500, "Wh", 1.5),
        ("energy_total", 1500, "WHR", 1.5),
        ("energy_total", 2, "MWh", 2000.0),
        ("energy_total", 3.6e6, "J", 1.0),
        ("power", 2500, "W", 2.5),
        ("power", 2, "KWT", 2.0),
        ("water_volume_total", 250, "L", 0.25),
        ("water_volume_total", 250, "LTR", 0.25),
        ("water_volume_total", 250, "litres", 0.25),
        ("water_volume_total", 3, "MTQ", 3.0),
        ("water_flow", 620, "E32", 0.62),  # litre per hour
        ("water_flow", 1, "l/s", 3.6),
        ("pressure", 101325, "Pa", 1013.25),
        ("pressure", 1013, "mbar", 1013.0),
        ("pressure", 1013, "A97", 1013.0),
        ("wind_speed", 36, "km/h", 10.0),
        ("vehicle_speed", 10, "m/s", 36.0),
        ("vehicle_speed", 50, "KMH", 50.0),
        ("humidity", 0.54, "1", 54.0),  # a fraction of one
        ("humidity", 0.54, "C62", 54.0),
        ("humidity", 54, "%RH", 54.0),
        ("humidity", 54, "P1", 54.0),
        ("occupancy", 0.76, "ratio", 76.0),
        ("fill_level", 0.4, "1", 40.0),
        ("vehicle_count", 197, "1", 197.0),  # a count of one
        ("vehicle_count", 197, "count", 197.0),
        ("parking_occupied", 1, "1", 1.0),
        ("laeq", 67.8, "dB(A)", 67.8),
        ("laeq", 67.8, "2N", 67.8),
        ("laeq", 6.78, "Bspl", 67.8),
        ("precipitation", 1, "cm", 10.0),
        ("travel_time", 2, "min", 120.0),
        ("temperature", 20, None, 20.0),
    ],
)
def test_normalize(metric: str, value: float, unit: str | None, expected: float) -> None:
    assert normalize(metric, value, unit) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("spelling", ["ug/m3", "µg/m³", "μg/m³", "µg/m3", "μg/m3", "GQ", " ug/m3 ", "UG/M3"])
def test_microgram_spellings(spelling: str) -> None:
    assert normalize("pm10", 7.0, spelling) == 7.0


def test_micro_sign_and_greek_mu_are_both_known() -> None:
    assert "\u00b5g/m³" in UNIT_ALIASES
    assert "\u03bcg/m³" in UNIT_ALIASES


@pytest.mark.parametrize(
    ("metric", "unit"),
    [
        ("pm25", "dB"),
        ("pm25", "ppb"),  # particles have no mixing ratio
        ("vehicle_count", "%"),
        ("parking_occupied", "%"),
        ("temperature", "hPa"),
        ("laeq", "ug/m3"),
        ("energy_total", "kW"),
    ],
)
def test_wrong_unit(metric: str, unit: str) -> None:
    with pytest.raises(UnitError) as info:
        normalize(metric, 1.0, unit)
    assert info.value.reason == "wrong_unit"
    assert isinstance(info.value, DecodeError)


def test_unknown_unit_and_metric() -> None:
    with pytest.raises(UnitError) as info:
        normalize("pm25", 1.0, "furlong")
    assert info.value.reason == "unknown_unit"
    with pytest.raises(UnitError) as info:
        normalize("pm2.5", 1.0, None)
    assert info.value.reason == "unknown_metric"
    with pytest.raises(UnitError) as info:
        normalize("pm2.5", 1.0, "ug/m3")
    assert info.value.reason == "unknown_metric"


def test_mega_and_milli_are_not_folded_together() -> None:
    assert lookup_unit("MW") is not None
    assert lookup_unit("mW") is None
    assert lookup_unit("mwh") is None
    assert lookup_unit("kwh") == lookup_unit("kWh")


def test_nan_passes_through() -> None:
    assert math.isnan(normalize("pm25", math.nan, "ug/m3"))


def test_conversion_pairs() -> None:
    assert conversion("no2", "ppb") == pytest.approx((1.9, 0.0))
    assert conversion("temperature", "°F") == pytest.approx((5 / 9, -160 / 9))
    assert conversion("temperature", None) == (1.0, 0.0)
    with pytest.raises(UnitError):
        conversion("no2", "dB")
