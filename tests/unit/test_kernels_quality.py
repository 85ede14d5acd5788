"""coverage, stuck_value_flags, hampel_flags and the flag constants."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_reference import hampel_ref, stuck_ref

from processors import kernels
from processors.kernels import FLAG_SPIKE, FLAG_STUCK, coverage, hampel_flags, stuck_value_flags
from processors.kernels._checks import _series_time_order


def test_flags_are_distinct_bits():
    names = [n for n in dir(kernels) if n.startswith("FLAG_")]
    values = [getattr(kernels, n) for n in names]
    assert len(names) == 8
    assert sorted(values) == [1 << k for k in range(8)]


def test_coverage():
    out = coverage([0, 30, 60, 90, -1], bucket_seconds=3600, expected_interval_seconds=60)
    assert out.tolist() == [0.0, 0.5, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="> 0"):
        coverage([1], 0, 60)


@pytest.mark.parametrize("seed", range(4))
def test_stuck_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = 400
    series = rng.integers(0, 5, n)
    ts = rng.integers(0, 150, n)
    value = rng.integers(0, 3, n).astype(float)
    value[rng.random(n) < 0.05] = np.nan
    for min_run in (1, 2, 4):
        np.testing.assert_array_equal(
            stuck_value_flags(series, ts, value, min_run), stuck_ref(series, ts, value, min_run)
        )


def test_stuck_story():
    value = np.array([1.0, 2.0, 2.0, 2.0, 3.0, np.nan, np.nan, np.nan, 3.0])
    ts = np.arange(9)[::-1].copy()  # given newest first
    flags = stuck_value_flags(np.zeros(9, np.int64), ts, value[::-1].copy(), 3)
    assert flags[::-1].tolist() == [0, FLAG_STUCK, FLAG_STUCK, FLAG_STUCK, 0, 0, 0, 0, 0]
    assert stuck_value_flags([], [], [], 2).shape == (0,)
    assert stuck_value_flags(np.zeros(4, np.int64), np.arange(4), np.full(4, 5.0), 4).tolist() == [1] * 4
    with pytest.raises(ValueError, match="min_run"):
        stuck_value_flags([0], [0], [1.0], 0)


@pytest.mark.parametrize("seed", range(4))
def test_hampel_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = 300
    series = rng.integers(0, 3, n)
    ts = rng.permutation(n)
    value = rng.normal(20, 1, n)
    value[rng.random(n) < 0.05] += rng.choice([-15, 15], 1)
    value[rng.random(n) < 0.05] = np.nan
    quantized = np.round(value * 2) / 2  # ties in windows and deviations, MAD often 0
    for v in (value, quantized):
        for half_window, n_sigmas in ((3, 3.0), (5, 2.0), (1, 3.0), (2, 0.5)):
            np.testing.assert_array_equal(
                hampel_flags(v, half_window, n_sigmas, series=series, ts_us=ts),
                hampel_ref(v, half_window, n_sigmas, series=series, ts_us=ts),
            )


def test_hampel_story():
    value = np.array([10.0, 10.2, 9.9, 10.1, 50.0, 10.0, 9.95, 10.1, 10.0])
    assert hampel_flags(value, 3).tolist() == [0, 0, 0, 0, FLAG_SPIKE, 0, 0, 0, 0]
    assert hampel_flags(np.full(6, 4.0), 2).tolist() == [0] * 6
    assert hampel_flags([1.0, 100.0], 3).tolist() == [0, 0]  # under 3 valid values: no verdict
    assert hampel_flags([], 3).shape == (0,)
    with pytest.raises(ValueError, match="half_window"):
        hampel_flags([1.0], 0)


@pytest.mark.parametrize("series_scale", [1, 10**12])  # dense counting sort, and the lexsort fallback
def test_series_time_order_equals_lexsort(series_scale):
    rng = np.random.default_rng(21)
    series = rng.integers(0, 30, 2000) * series_scale
    ts = rng.integers(0, 50, 2000)
    ts[series == 0] = np.arange(int((series == 0).sum()))  # one series already in time order
    np.testing.assert_array_equal(_series_time_order(series, ts), np.lexsort((ts, series)))
    value = rng.integers(0, 2, 2000).astype(float)
    np.testing.assert_array_equal(stuck_value_flags(series, ts, value, 2), stuck_ref(series, ts, value, 2))


def test_series_time_order_of_a_shuffled_long_series():
    # Far from time order: the insertion sort gives up and the stable argsort finishes the segment.
    rng = np.random.default_rng(22)
    series = np.zeros(3000, dtype=np.int64)
    series[::7] = 1
    ts = rng.integers(0, 500, 3000)
    np.testing.assert_array_equal(_series_time_order(series, ts), np.lexsort((ts, series)))
