"""traffic_hourly and travel_time_index."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_reference import traffic_ref

from processors.kernels import traffic_hourly, travel_time_index


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("with_counts", [True, False])
def test_matches_reference(seed, with_counts):
    rng = np.random.default_rng(seed)
    n = 500
    g = rng.integers(0, 12, n)
    counts = rng.integers(0, 30, n).astype(float) if with_counts else None
    speeds = np.round(rng.uniform(5, 110, n), 1)
    speeds[rng.random(n) < 0.05] = np.nan
    if counts is not None:
        counts[rng.random(n) < 0.02] = np.nan
    got = traffic_hourly(g, counts, speeds, 14)
    flow, mean, p85, harmonic = traffic_ref(g, counts, speeds, 14)
    np.testing.assert_allclose(got.flow, flow, rtol=1e-12)
    np.testing.assert_allclose(got.mean_speed, mean, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(got.p85_speed, p85)
    np.testing.assert_allclose(got.harmonic_speed, harmonic, rtol=1e-12, equal_nan=True)


def test_harmonic_speed_is_the_speed_of_the_mean_travel_time():
    """10 vehicles at 20 km/h and 10 at 60 km/h over 1 km: 3 and 1 minutes, mean 2 minutes = 30 km/h
    (the arithmetic mean, 40 km/h, would understate the travel time by a quarter); a standing row
    (0 km/h) has no finite travel time and is left out."""
    out = traffic_hourly([0, 0, 0], [10, 10, 5], [20.0, 60.0, 0.0], 1)
    assert out.harmonic_speed[0] == pytest.approx(30.0)
    assert out.mean_speed[0] == pytest.approx((200 + 600) / 25)


def test_p85_is_nearest_rank_over_vehicles():
    speeds = np.arange(1.0, 21.0)  # 20 vehicles at 1..20 km/h: rank ceil(0.85*20) = 17
    out = traffic_hourly(np.zeros(20, np.int64), None, speeds, 1)
    assert out.p85_speed.tolist() == [17.0] and out.flow.tolist() == [20.0]
    # Same vehicles as 2 rows: 17 at 30 km/h and 3 at 80 km/h -> the 17th vehicle drives 30 km/h.
    rows = traffic_hourly([0, 0], [17, 3], [30.0, 80.0], 1)
    assert rows.p85_speed.tolist() == [30.0]
    assert rows.mean_speed[0] == pytest.approx((17 * 30 + 3 * 80) / 20)


def test_edges():
    empty = traffic_hourly([], [], [], 2)
    assert empty.flow.tolist() == [0.0, 0.0] and np.isnan(empty.p85_speed).all()
    flow_only = traffic_hourly([0, 1, 1], [3, 4, 5], None, 2)
    assert flow_only.flow.tolist() == [3.0, 9.0] and np.isnan(flow_only.mean_speed).all()
    with pytest.raises(ValueError, match="counts must be >= 0"):
        traffic_hourly([0], [-1], [50.0], 1)
    with pytest.raises(ValueError, match="equal lengths"):
        traffic_hourly([0, 0], [1], [50.0, 40.0], 1)


def test_travel_time_index():
    out = travel_time_index([50.0, 25.0, 0.0, -3.0, np.nan, 60.0], [50.0, 50.0, 50.0, 50.0, 50.0, 0.0])
    assert out[:3].tolist() == [1.0, 2.0, np.inf]
    assert np.isnan(out[3:]).all()
    assert travel_time_index(np.array([[40.0]]), 60.0).shape == (1, 1)


def test_p85_on_large_groups_with_ties():
    rng = np.random.default_rng(8)
    g = rng.integers(0, 3, 5000)
    counts = rng.integers(0, 4, 5000).astype(float)
    speeds = rng.integers(20, 40, 5000).astype(float)  # many equal speeds
    got = traffic_hourly(g, counts, speeds, 3)
    np.testing.assert_array_equal(got.p85_speed, traffic_ref(g, counts, speeds, 3)[2])
