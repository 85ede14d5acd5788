"""Traffic, air and coverage KPIs end to end per their standards: `citykpi replay` -> `citykpi kpi
refresh` -> kpi_values, on a UTC city (local hours = UTC hours) on Wednesday 2025-06-11."""

from __future__ import annotations

import pytest

from tests.integration.test_kpi_meters_e2e import DAY, at, details, registry, replay_and_refresh, senml

pytestmark = pytest.mark.integration

TTI = "EC:I:T:5A"


async def test_travel_time_index_is_a_ratio_of_travel_times(tsdb, tmp_path) -> None:
    """Item 8, U4SSC EC:I:T:5A: peak-hour travel time / free-flow travel time.
    Peak hours 07, 08, 17, 18 on a weekday, 10 vehicles an hour at each sensor.
    Segment A, 2 km, free flow 60 km/h (2 min): peak speeds 20, 60, 20, 60 km/h -> 6, 2, 6, 2 min,
    mean 4 min (A's ratio 2.0; the mean speed, 40 km/h, would say 1.5).
    Segment B, 1 km, free flow 50 km/h (1.2 min): 50, 25, 50, 25 km/h -> 1.2, 2.4, 1.2, 2.4 min, mean
    1.8 min (ratio 1.5; mean speed 37.5 would say 1.33).
    City: (4 + 1.8) / (2 + 1.2) = 5.8 / 3.2 = 1.8125 (averaging speeds gave (1.5 + 1.33) / 2 = 1.42).
    """
    reg = registry(
        1000,
        1,
        1,
        """
[[devices]]
device_id = "seg-a"
expected_interval_s = 3600
street_km = 2.0
free_flow_kmh = 60
[[devices]]
device_id = "seg-b"
expected_interval_s = 3600
street_km = 1.0
free_flow_kmh = 50
""",
    )
    speeds = {"seg-a": (20.0, 60.0, 20.0, 60.0), "seg-b": (50.0, 25.0, 50.0, 25.0)}
    lines = []
    for dev, sp in speeds.items():
        for h, v in zip((7, 8, 17, 18), sp, strict=True):
            lines.append(senml(dev, "vehicle_speed", "km/h", at(h), v))
            lines.append(senml(dev, "vehicle_count", "veh", at(h), 10))
    v = await replay_and_refresh(tsdb, tmp_path, reg, lines)
    tti = v[(TTI, f"day {DAY}")]
    assert tti["value"] == pytest.approx(1.8125)
    sensors = {s["device_id"]: s for s in details(tti)["sensors"]}
    assert sensors["seg-a"]["tti"] == pytest.approx(2.0) and sensors["seg-b"]["tti"] == pytest.approx(1.5)
