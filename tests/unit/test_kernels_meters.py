"""meter_steps against the NumPy reference, plus hand-made meter stories."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_reference import meter_steps_ref

from processors.kernels import (
    FLAG_FIRST,
    FLAG_IMPLAUSIBLE,
    FLAG_MISSING,
    FLAG_RESET,
    FLAG_ROLLOVER,
    meter_steps,
)

MIN = 60_000_000
HOUR = 60 * MIN
NAN = float("nan")


def check(series, ts, idx, rollover_at, max_rate_per_h, tolerance):
    got = meter_steps(
        series, ts, idx, rollover_at=rollover_at, max_rate_per_h=max_rate_per_h, tolerance=tolerance
    )
    want = meter_steps_ref(series, ts, idx, rollover_at, max_rate_per_h, tolerance)
    np.testing.assert_array_equal(got.consumption, want[0])
    np.testing.assert_array_equal(got.covered_us, want[1])
    np.testing.assert_array_equal(got.excluded_us, want[2])
    np.testing.assert_array_equal(got.flags, want[3])
    np.testing.assert_array_equal(got.noise, want[4])
    return got


def one(idx, ts_min=None, *, rollover_at=NAN, rate=NAN, tol=0.0):
    ts = np.arange(len(idx), dtype=np.int64) * 15 * MIN if ts_min is None else np.array(ts_min) * MIN
    return check(np.zeros(len(idx), np.int64), ts, np.array(idx, dtype=float), [rollover_at], [rate], [tol])


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_random_noisy_meters(seed):
    rng = np.random.default_rng(seed)
    n, k = 600, 6
    series = rng.integers(0, k, n)
    ts = rng.integers(0, 400, n) * MIN  # unsorted, with equal timestamps
    order = np.lexsort((ts, series))
    idx = np.empty(n)
    level = rng.uniform(0, 900, k)
    for i in order:  # rising registers with jitter, wraps, resets, spikes and gaps
        s = series[i]
        level[s] += rng.choice([0.0, 0.5, 3.0, 40.0])
        r = rng.random()
        if r < 0.03:
            level[s] = rng.uniform(0, 5)
        idx[i] = level[s] % 1000 + rng.normal(0, 0.05)
        if r > 0.97:
            idx[i] += 500.0
    idx[rng.random(n) < 0.03] = np.nan
    rollover = np.where(np.arange(k) % 2 == 0, 1000.0, np.nan)
    rate = np.where(np.arange(k) % 3 == 0, np.nan, 60.0)
    check(series, ts, idx, rollover, rate, np.full(k, 0.2))


def test_a_slight_backward_step_is_noise_not_a_reset():
    """100.000 -> 100.010 -> 100.008 -> 100.020 m3: 10 L, noise (0, not a reset from 0 = 100 m3),
    then 100.020 - 100.010 = 10 L from the high-water mark: 20 L in all, last - first."""
    got = one([100.000, 100.010, 100.008, 100.020], tol=0.005)
    assert got.consumption[1:] == pytest.approx([0.010, 0.0, 0.010])
    assert got.noise.tolist() == [False, False, True, False]
    assert got.flags.tolist() == [FLAG_FIRST, 0, 0, 0]
    assert got.covered_us.tolist() == [0, 15 * MIN, 15 * MIN, 15 * MIN]


def test_two_small_backward_steps_are_noise_not_a_reset():
    """0.600 -> 0.675 -> 0.672 -> 0.669 -> 0.750 m3 (5 L tolerance): each step back is 3 L from the
    reading before, so noise, though 0.669 is 6 L below the 0.675 high-water mark (not a reset from
    0, which would add 0.669 m3); then 0.750 - 0.675 = 75 L: 150 L in all, last - first."""
    got = one([0.600, 0.675, 0.672, 0.669, 0.750], rate=5.0, tol=0.005)
    assert got.flags.tolist() == [FLAG_FIRST, 0, 0, 0, 0]
    assert got.noise.tolist() == [False, False, True, True, False]
    assert got.consumption[1:] == pytest.approx([0.075, 0.0, 0.0, 0.075])
    assert np.nansum(got.consumption) == pytest.approx(0.750 - 0.600)
    assert got.covered_us.sum() == 4 * 15 * MIN and got.excluded_us.sum() == 0


def test_many_small_backward_steps_never_add_up_to_a_reset_nor_to_consumption():
    """1234.500 m3, then 40 readings each 3 L below the one before (120 L below the high-water mark
    in the end, far beyond the 5 L tolerance), then back up to 1234.450 and on to 1234.600: all the
    steps back and up below 1234.500 are noise (0), only the 100 L above the high-water mark count.
    A 10 L fall from the previous reading is still a reset."""
    down = [1234.500 - 0.003 * k for k in range(41)]
    got = one([*down, 1234.450, 1234.600], tol=0.005, rate=5.0)
    assert (got.flags == [FLAG_FIRST, *[0] * 42]).all()
    assert got.noise.tolist() == [False, *[True] * 41, False]
    assert np.nansum(got.consumption) == pytest.approx(0.100)
    assert got.consumption[-1] == pytest.approx(0.100)
    assert got.state.ref_value[0] == 1234.600 and got.state.prev_value[0] == 1234.600
    fall = one([1234.500, 1234.497, 1234.487], tol=0.005, rate=5.0)
    assert fall.flags.tolist() == [FLAG_FIRST, 0, FLAG_RESET | FLAG_IMPLAUSIBLE]


def test_the_previous_reading_carries_over_batches():
    """The two 3 L steps back split over two calls: the second call judges 0.669 against 0.672
    from the state, as a single call does."""
    params = {"rollover_at": [NAN], "max_rate_per_h": [5.0], "tolerance": [0.005]}
    ts = np.arange(4, dtype=np.int64) * HOUR
    a = meter_steps([0, 0, 0], ts[:3], [0.600, 0.675, 0.672], **params)
    b = meter_steps([0], ts[3:], [0.669], **params, state=a.state)
    assert b.flags.tolist() == [0] and b.noise.tolist() == [True] and b.consumption[0] == 0.0


def test_plausibility_is_a_rate_over_the_elapsed_time():
    """A DN40 meter (5 m3/h allowed) read once a day: +20 m3 in 24 h is 0.83 m3/h, accepted; the same
    +20 m3 in 15 minutes would be 80 m3/h, rejected."""
    daily = one([1000.0, 1020.0], [0, 24 * 60], rate=5.0, tol=0.01)
    assert daily.consumption[1] == 20.0 and daily.flags[1] == 0
    fast = one([1000.0, 1020.0], [0, 15], rate=5.0, tol=0.01)
    assert np.isnan(fast.consumption[1]) and fast.flags[1] == FLAG_IMPLAUSIBLE


def test_a_rejected_spike_keeps_the_reference():
    """500, 9999 (spike), 500.3: the spike is rejected and the next step counts from 500 over 30 min."""
    got = one([500.0, 9999.0, 500.3], rate=5.0, tol=0.01)
    assert got.flags.tolist() == [FLAG_FIRST, FLAG_IMPLAUSIBLE, 0]
    assert got.consumption[2] == pytest.approx(0.3)
    assert got.covered_us[2] == 30 * MIN and got.excluded_us.sum() == 0


def test_a_confirmed_jump_rebases_and_excludes_its_interval():
    """100, 100.1, 5000 (rejected), 5000.2 (continues from 5000: the meter was swapped): 0.1 + 0.2
    counted, the 15 minutes from 100.1 to 5000 excluded."""
    got = one([100.0, 100.1, 5000.0, 5000.2], rate=5.0, tol=0.01)
    assert got.flags.tolist() == [FLAG_FIRST, 0, FLAG_IMPLAUSIBLE, FLAG_RESET]
    assert np.nansum(got.consumption) == pytest.approx(0.3)
    assert got.excluded_us.tolist() == [0, 0, 0, 15 * MIN]
    assert got.covered_us.sum() + got.excluded_us.sum() == 45 * MIN


def test_rollover_from_the_register_size_versus_reset():
    """A 5-digit register wraps at 100000: 99990 -> 5 is 15 units; with no register size it is a
    reset counted from 0 (5 units); a fall to 3000 m3 is neither (implausible landing: excluded)."""
    wrap = one([99980.0, 99990.0, 5.0, 10.0], rollover_at=100000.0, rate=100.0)
    assert wrap.consumption.tolist()[1:] == [10.0, 15.0, 5.0]
    assert wrap.flags.tolist() == [FLAG_FIRST, 0, FLAG_ROLLOVER, 0]
    reset = one([99980.0, 99990.0, 5.0, 10.0], rate=100.0)
    assert reset.consumption.tolist()[1:] == [10.0, 5.0, 5.0]
    assert reset.flags[2] == FLAG_RESET
    swap = one([5000.0, 3000.0, 3000.1], rate=5.0)
    assert swap.flags.tolist() == [FLAG_FIRST, FLAG_RESET | FLAG_IMPLAUSIBLE, 0]
    assert np.isnan(swap.consumption[1]) and swap.excluded_us[1] == 15 * MIN
    assert swap.consumption[2] == pytest.approx(0.1)


def test_state_carries_over_batches_exactly():
    rng = np.random.default_rng(3)
    n, k = 500, 4
    series = rng.integers(0, k, n)
    ts = np.sort(rng.integers(0, 10_000, n)) * MIN
    idx = np.cumsum(rng.choice([0.0, 0.01, 0.5, 900.0], n)) + rng.normal(0, 0.01, n)
    params = {
        "rollover_at": np.full(k, np.nan),
        "max_rate_per_h": np.full(k, 30.0),
        "tolerance": np.full(k, 0.05),
    }
    whole = meter_steps(series, ts, idx, **params)
    a = meter_steps(series[:200], ts[:200], idx[:200], **params)
    b = meter_steps(series[200:], ts[200:], idx[200:], **params, state=a.state)
    np.testing.assert_array_equal(np.r_[a.consumption, b.consumption], whole.consumption)
    np.testing.assert_array_equal(np.r_[a.flags, b.flags], whole.flags)
    np.testing.assert_array_equal(b.state.ref_value, whole.state.ref_value)
    np.testing.assert_array_equal(b.state.prev_value, whole.state.prev_value)


def test_edges():
    empty = meter_steps([], [], [], rollover_at=[], max_rate_per_h=[], tolerance=[])
    assert len(empty) == 0 and empty.flags.dtype == np.uint8
    missing = one([NAN, 3.0])
    assert missing.flags.tolist() == [FLAG_MISSING, FLAG_FIRST]
    with pytest.raises(ValueError, match="rollover_at"):
        meter_steps([0], [0], [1.0], rollover_at=[0.0], max_rate_per_h=[NAN], tolerance=[0.0])
    with pytest.raises(ValueError, match="tolerance"):
        meter_steps([0], [0], [1.0], rollover_at=[NAN], max_rate_per_h=[NAN], tolerance=[NAN])
    with pytest.raises(ValueError, match="series must index"):
        meter_steps([1], [0], [1.0], rollover_at=[NAN], max_rate_per_h=[NAN], tolerance=[0.0])
    with pytest.raises(TypeError, match="series must be integers"):
        meter_steps([0.5], [0], [1.0], rollover_at=[NAN], max_rate_per_h=[NAN], tolerance=[0.0])
