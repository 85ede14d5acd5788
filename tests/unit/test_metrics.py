"""The metrics catalog and the metric-name alias table."""

from __future__ import annotations

import pytest

from schemas.metrics import METRICS, Metric, canonical_metric_name
from schemas.units import UNIT_ALIASES

EXPECTED_UNITS = {
    "pm25": "µg/m³", "pm10": "µg/m³", "pm1": "µg/m³", "no2": "µg/m³", "o3": "µg/m³", "so2": "µg/m³",
    "no": "µg/m³", "nox": "µg/m³", "co": "mg/m³", "co2": "ppm", "temperature": "°C", "humidity": "%",
    "pressure": "hPa", "wind_speed": "m/s", "precipitation": "mm", "laeq": "dB", "lamax": "dB",
    "lamin": "dB", "vehicle_count": "veh", "vehicle_speed": "km/h", "occupancy": "%", "travel_time": "s",
    "water_volume_total": "m³", "water_flow": "m³/h", "water_temperature": "°C", "energy_total": "kWh",
    "power": "kW",
    "parking_occupied": "1", "fill_level": "%", "methane": "ppm", "water_level": "m",
}  # fmt: skip


def test_catalog_has_exactly_the_canonical_metrics_and_units() -> None:
    assert {name: m.canonical_unit for name, m in METRICS.items()} == EXPECTED_UNITS
    assert "\u00b5" in METRICS["pm25"].canonical_unit  # MICRO SIGN, not Greek mu


@pytest.mark.parametrize(
    ("name", "aggregation", "kind"),
    [
        ("laeq", "decibel", "noise"),
        ("lamax", "decibel", "noise"),
        ("water_volume_total", "cumulative", "water"),
        ("energy_total", "cumulative", "energy"),
        ("parking_occupied", "state", "parking"),
        ("water_level", "linear", "drainage"),
        ("pm25", "linear", "air"),
    ],
)
def test_aggregation_and_kind(name: str, aggregation: str, kind: str) -> None:
    assert (METRICS[name].aggregation, METRICS[name].kind) == (aggregation, kind)


def test_plausible_ranges_are_sensible() -> None:
    assert (METRICS["pm25"].plausible_min, METRICS["pm25"].plausible_max) == (0, 1000)
    assert (METRICS["laeq"].plausible_min, METRICS["laeq"].plausible_max) == (0, 150)
    assert (METRICS["temperature"].plausible_min, METRICS["temperature"].plausible_max) == (-60, 70)
    assert (METRICS["parking_occupied"].plausible_min, METRICS["parking_occupied"].plausible_max) == (0, 1)
    for m in METRICS.values():
        assert m.plausible_min < m.plausible_max
        assert m.description


def test_every_canonical_unit_is_in_the_alias_table() -> None:
    assert all(m.canonical_unit in UNIT_ALIASES for m in METRICS.values())


def test_metric_is_frozen_and_validated() -> None:
    with pytest.raises(AttributeError):
        METRICS["pm25"].plausible_max = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="kind"):
        Metric("x", "1", "space", "linear", 0, 1, "")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aggregation"):
        Metric("x", "1", "air", "median", 0, 1, "")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("pm25", "pm25"),
        ("pm2.5", "pm25"),
        ("PM2_5", "pm25"),
        ("PM2.5", "pm25"),
        ("pm1_0", "pm1"),  # a separator between digits is a decimal point: never PM10
        ("PM10", "pm10"),
        ("pm10_0", "pm10"),
        ("temp", "temperature"),
        ("Temperature", "temperature"),
        ("relativeHumidity", "humidity"),
        ("LAeq", "laeq"),
        ("noise", "laeq"),
        ("noise_LA_max", "lamax"),
        ("NOx", "nox"),
        ("CO", "co"),
        ("windSpeed", "wind_speed"),
        ("wind_speed", "wind_speed"),
        ("waterConsumption", "water_volume_total"),
        ("fillingLevel", "fill_level"),
        ("averageVehicleSpeed", "vehicle_speed"),
        ("status", None),
        ("count", None),
        ("P1", None),  # Sensor.Community's P1 = PM10 lives in that decoder only
        ("LAS", None),
        ("", None),
    ],
)
def test_canonical_metric_name(raw: str, expected: str | None) -> None:
    assert canonical_metric_name(raw) == expected
