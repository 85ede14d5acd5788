"""Data quality: coverage, stuck values and Hampel spikes."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from processors import _kernels as K
from processors.kernels._checks import F64, U8, _float64_1d, _int64_1d, _same_length, _series_time_order


def coverage(count_per_bucket: npt.ArrayLike, bucket_seconds: float, expected_interval_seconds: float) -> F64:
    """Share of expected readings that arrived: count / (bucket_seconds / interval), in [0, 1]."""
    if not bucket_seconds > 0 or not expected_interval_seconds > 0:
        raise ValueError("bucket_seconds and expected_interval_seconds must be > 0")
    c = np.asarray(count_per_bucket, dtype=np.float64)
    expected = bucket_seconds / expected_interval_seconds
    return np.clip(c / expected, 0.0, 1.0)


def stuck_value_flags(series: npt.ArrayLike, ts_us: npt.ArrayLike, value: npt.ArrayLike, min_run: int) -> U8:
    """FLAG_STUCK on rows in runs of >= min_run identical consecutive values of a series (by time).

    Rows are ordered by (series, ts), equal timestamps in input order; NaN breaks a run.
    """
    if min_run < 1:
        raise ValueError(f"min_run must be >= 1, got {min_run}")
    s = _int64_1d("series", series)
    t = _int64_1d("ts_us", ts_us)
    v = _float64_1d("value", value)
    _same_length(series=s, ts_us=t, value=v)
    return K.stuck_runs_sorted(_series_time_order(s, t), s, v, int(min_run))


def hampel_flags(
    values: npt.ArrayLike,
    half_window: int,
    n_sigmas: float = 3.0,
    *,
    series: npt.ArrayLike | None = None,
    ts_us: npt.ArrayLike | None = None,
) -> U8:
    """FLAG_SPIKE on Hampel outliers: |x - median| > n_sigmas · 1.4826 · MAD in a centred window.

    The window is `half_window` readings each side, within the row's series (`series`, default
    one series) in time order (`ts_us`, default input order), truncated at the series ends.
    NaNs are skipped; windows with fewer than 3 valid values flag nothing. With MAD = 0 any value
    off the median is flagged (the strict Hampel rule).
    """
    if half_window < 1:
        raise ValueError(f"half_window must be >= 1, got {half_window}")
    v = _float64_1d("values", values)
    s = np.zeros(v.size, dtype=np.int64) if series is None else _int64_1d("series", series)
    t = np.arange(v.size, dtype=np.int64) if ts_us is None else _int64_1d("ts_us", ts_us)
    _same_length(values=v, series=s, ts_us=t)
    order = _series_time_order(s, t)
    return K.hampel_sorted(order, s, v, int(half_window), float(n_sigmas))
