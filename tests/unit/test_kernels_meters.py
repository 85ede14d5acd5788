"""consumption_from_cumulative against the reference, plus hand-made meter stories."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_reference import consumption_ref

from processors.kernels import (
    FLAG_DUPLICATE,
    FLAG_FIRST,
    FLAG_IMPLAUSIBLE,
    FLAG_MISSING,
    FLAG_RESET,
    FLAG_ROLLOVER,
    consumption_from_cumulative,
)

MIN = 60_000_000


def check(series, ts, idx, rollover_at=None, max_step=None):
    got = consumption_from_cumulative(series, ts, idx, rollover_at, max_step)
    want = consumption_ref(series, ts, idx, rollover_at, max_step)
    np.testing.assert_array_equal(got.consumption, want[0])
    np.testing.assert_array_equal(got.interval_us, want[1])
    np.testing.assert_array_equal(got.flags, want[2])
    return got


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("rollover_at", "max_step"), [(None, None), (1000.0, None), (1000.0, 60.0), (None, 30.0)]
)
def test_matches_reference_on_random_meters(seed, rollover_at, max_step):
    rng = np.random.default_rng(seed)
    n = 400
    series = rng.integers(0, 6, n)
    ts = rng.integers(0, 120, n) * MIN  # unsorted, with duplicates
    order = np.lexsort((ts, series))
    idx = np.empty(n)
    level = np.zeros(6)
    for i in order:  # a rising index that sometimes wraps, resets or misses
        s = series[i]
        level[s] += rng.integers(0, 40)
        if rng.random() < 0.03:
            level[s] = rng.integers(0, 5)
        idx[i] = level[s] % 1000
    idx[rng.random(n) < 0.03] = np.nan
    check(series, ts, idx, rollover_at, max_step)


def test_story_of_one_meter():
    ts = np.array([0, 10, 10, 20, 30, 40, 50, 60], dtype=np.int64) * MIN
    idx = np.array([100.0, 150.0, 150.0, 170.0, 5.0, np.nan, 15.0, 16.0])
    perm = np.array([7, 3, 0, 5, 1, 6, 2, 4])
    got = check(np.zeros(8, np.int64)[perm], ts[perm], idx[perm])
    inv = np.argsort(perm)
    assert got.consumption[inv].tolist()[1:] == [
        50.0,
        0.0,
        20.0,
        5.0,
        pytest.approx(np.nan, nan_ok=True),
        10.0,
        1.0,
    ]
    assert np.isnan(got.consumption[inv][0])
    assert got.flags[inv].tolist() == [FLAG_FIRST, 0, FLAG_DUPLICATE, 0, FLAG_RESET, FLAG_MISSING, 0, 0]
    assert got.interval_us[inv].tolist() == [0, 10 * MIN, 0, 10 * MIN, 10 * MIN, 0, 20 * MIN, 10 * MIN]


def test_rollover_versus_reset():
    ts = np.arange(4, dtype=np.int64) * MIN
    # 99990 -> 5 wraps at 100000 (15 units); 50000 -> 5 is a reset (50005 would be half the dial).
    wrap = check(np.zeros(4, np.int64), ts, np.array([99980.0, 99990.0, 5.0, 10.0]), rollover_at=100000.0)
    assert wrap.consumption.tolist()[1:] == [10.0, 15.0, 5.0]
    assert wrap.flags.tolist() == [FLAG_FIRST, 0, FLAG_ROLLOVER, 0]
    reset = check(np.zeros(4, np.int64), ts, np.array([49990.0, 50000.0, 5.0, 10.0]), rollover_at=100000.0)
    assert reset.consumption.tolist()[1:] == [10.0, 5.0, 5.0]
    assert reset.flags[2] == FLAG_RESET
    capped = check(np.zeros(3, np.int64), ts[:3], np.array([0.0, 500.0, 520.0]), max_step=100.0)
    assert capped.flags.tolist() == [FLAG_FIRST, FLAG_IMPLAUSIBLE, 0]
    assert capped.consumption[1] == 500.0  # kept, flagged


def test_totals_telescope_per_series():
    rng = np.random.default_rng(11)
    ts = np.sort(rng.integers(0, 10_000, 300)) * MIN
    idx = np.cumsum(rng.integers(0, 9, 300)).astype(float)
    got = consumption_from_cumulative(np.zeros(300, np.int64), ts, idx)
    assert np.nansum(got.consumption) == idx[-1] - idx[0]


def test_edges():
    empty = consumption_from_cumulative([], [], [])
    assert len(empty) == 0 and empty.flags.dtype == np.uint8
    one = consumption_from_cumulative([4], [0], [12.0])
    assert np.isnan(one.consumption[0]) and one.flags.tolist() == [FLAG_FIRST]
    with pytest.raises(ValueError, match="rollover_at"):
        consumption_from_cumulative([0], [0], [1.0], rollover_at=0)
    with pytest.raises(TypeError, match="series must be integers"):
        consumption_from_cumulative([0.5], [0], [1.0])
