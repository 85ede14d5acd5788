"""Meter specs from the registry attributes, with the per-metric defaults."""

from __future__ import annotations

import math

import pytest

from processors.meters import meter_spec


def test_water_meter_rate_follows_its_nominal_size():
    """ISO 4064: Q4 = 1.25 x Q3; DN20 (default) Q3 = 4 -> 5 m3/h; DN80 Q3 = 63 -> 78.75 m3/h."""
    assert meter_spec("water_volume_total", {}).max_rate_per_h == 5.0
    assert meter_spec("water_volume_total", {"meter_dn": 80}).max_rate_per_h == pytest.approx(78.75)
    assert meter_spec("water_volume_total", {"meter_dn": 80, "max_rate_per_h": 12}).max_rate_per_h == 12.0


def test_electricity_meter_rate_from_current_and_phases():
    """3 x 63 A x 230 V = 43.47 kW by default; a single-phase 40 A meter: 9.2 kW."""
    assert meter_spec("energy_total", {}).max_rate_per_h == pytest.approx(43.47)
    assert meter_spec("energy_total", {"max_current_a": 40, "phases": 1}).max_rate_per_h == pytest.approx(9.2)


def test_register_size_and_noise_from_the_registry_and_bad_values_ignored():
    spec = meter_spec("water_volume_total", {"rollover_at": 100000, "noise_tolerance": 0.02})
    assert (spec.rollover_at, spec.noise_tolerance) == (100000.0, 0.02)
    bad = meter_spec("water_volume_total", {"rollover_at": "lots", "noise_tolerance": -1, "meter_dn": 33})
    assert math.isnan(bad.rollover_at) and bad.noise_tolerance == 0.005 and bad.max_rate_per_h == 5.0
    other = meter_spec("gas_total", {})
    assert math.isnan(other.max_rate_per_h) and other.noise_tolerance == 0.0
