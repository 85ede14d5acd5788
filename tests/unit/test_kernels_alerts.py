"""Alert kernels against their plain-Python references (tests/unit/kernel_reference.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from processors.kernels.alerts import rolling_bucket_means, silences, threshold_events
from tests.unit.kernel_reference import rolling_bucket_means_ref, silences_ref, threshold_events_ref

MIN = 60_000_000


def test_threshold_opens_above_updates_on_new_peaks_and_closes_below_the_hysteresis_band() -> None:
    v = np.array([10, 21, 25, 24, 27, 19, 16, 14, 22])
    out = threshold_events(np.zeros(9, int), np.arange(9), v, 20.0, 5.0, 1)
    # 21 opens; 25 is not 5 above 21; 27 is (new peak); 19 and 16 stay above 15; 14 closes; 22 reopens
    assert out.event.tolist() == [0, 1, 0, 0, 2, 0, 0, 3, 1]
    assert out.is_open.tolist() == [1] and out.peak.tolist() == [22.0]


def test_threshold_with_zero_hysteresis_updates_on_every_new_peak() -> None:
    out = threshold_events(np.zeros(5, int), np.arange(5), [21, 22, 22, 23, 20], 20.0, 0.0, 1)
    assert out.event.tolist() == [1, 2, 0, 2, 0]


@pytest.mark.parametrize("seed", range(20))
def test_threshold_events_match_the_reference_on_random_series_in_any_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    series = rng.integers(0, 5, n)
    ts = rng.integers(0, 50, n)  # ties: input order decides
    value = rng.normal(20, 6, n)
    value[rng.random(n) < 0.05] = np.nan
    hyst = float(rng.choice([0.0, 2.0]))
    out = threshold_events(series, ts, value, 22.0, hyst, 5)
    assert out.event.tolist() == threshold_events_ref(series, ts, value, 22.0, hyst)


@pytest.mark.parametrize("seed", range(10))
def test_evaluating_in_pieces_with_the_carried_state_gives_the_same_events(seed: int) -> None:
    """What makes a run-by-run job idempotent: the split point changes nothing."""
    rng = np.random.default_rng(seed)
    n = 200
    series, ts, value = rng.integers(0, 3, n), np.sort(rng.integers(0, 10_000, n)), rng.normal(20, 6, n)
    whole = threshold_events(series, ts, value, 22.0, 1.5, 3)
    cut = int(rng.integers(0, n))
    first = threshold_events(series[:cut], ts[:cut], value[:cut], 22.0, 1.5, 3)
    second = threshold_events(series[cut:], ts[cut:], value[cut:], 22.0, 1.5, 3, first.is_open, first.peak)
    assert [*first.event.tolist(), *second.event.tolist()] == whole.event.tolist()
    assert second.is_open.tolist() == whole.is_open.tolist()


def test_threshold_rejects_bad_arguments_by_name() -> None:
    with pytest.raises(ValueError, match="hysteresis"):
        threshold_events([0], [0], [1.0], 1.0, -1.0, 1)
    with pytest.raises(ValueError, match="series"):
        threshold_events([3], [0], [1.0], 1.0, 0.0, 2)
    with pytest.raises(ValueError, match="equal lengths"):
        threshold_events([0, 0], [0], [1.0], 1.0, 0.0, 1)
    with pytest.raises(ValueError, match="n_series"):
        threshold_events([0], [0], [1.0], 1.0, 0.0, 1, is_open=[0, 0])


@pytest.mark.parametrize("seed", range(15))
def test_rolling_bucket_means_match_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 120))
    series = rng.integers(0, 4, n)
    bucket = rng.choice(np.arange(60), n, replace=True) * MIN
    keep = np.unique(np.stack([series, bucket]), axis=1, return_index=True)[1]  # one row per bucket
    series, bucket = series[keep], bucket[keep]
    count = rng.integers(0, 6, series.size).astype(float)
    total = count * rng.normal(50, 10, series.size)
    cov = float(rng.choice([0.0, 0.5, 0.75]))
    got = rolling_bucket_means(series, bucket, count, total, MIN, 15 * MIN, cov)
    want = rolling_bucket_means_ref(series, bucket, count, total, MIN, 15 * MIN, cov)
    np.testing.assert_allclose(got, want, rtol=1e-9, equal_nan=True)


def test_rolling_mean_needs_three_quarters_of_the_window_by_default() -> None:
    """A 4-bucket window: 3 filled buckets count, 2 do not (the EU 75 % data-capture rule)."""
    b = np.array([0, 1, 2, 3]) * MIN
    got = rolling_bucket_means(np.zeros(4, int), b, [1, 0, 1, 1], [10, 0, 20, 30], MIN, 4 * MIN, 0.75)
    assert math.isnan(got[0]) and math.isnan(got[2]) and got[3] == 20.0


def test_rolling_mean_rejects_a_window_that_is_not_whole_buckets() -> None:
    with pytest.raises(ValueError, match="multiple"):
        rolling_bucket_means([0], [0], [1], [1.0], MIN, MIN + 1, 0.75)


@pytest.mark.parametrize("seed", range(15))
def test_silences_match_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 80))
    series, ts = rng.integers(0, 4, n), rng.integers(0, 100, n) * MIN
    got = silences(series, ts, 5 * MIN, 110 * MIN)
    rows = list(
        zip(
            got.series.tolist(),
            got.opened_us.tolist(),
            got.closed_us.tolist(),
            got.last_us.tolist(),
            strict=True,
        )
    )
    assert rows == silences_ref(series.tolist(), ts.tolist(), 5 * MIN, 110 * MIN)


def test_a_silence_opens_after_the_limit_and_closes_with_the_next_reading() -> None:
    got = silences([7, 7, 7], [0, MIN, 10 * MIN], 2 * MIN, 20 * MIN)
    assert got.series.tolist() == [7, 7]
    assert got.opened_us.tolist() == [3 * MIN, 12 * MIN]
    assert got.closed_us.tolist() == [10 * MIN, -1]
