"""Threshold alerts: hysteresis episodes, rolling means over rollup buckets, silences."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from processors import _kernels as K
from processors.kernels._checks import F64, I64, _float64_1d, _int64_1d, _same_length, _series_time_order

ALERT_OPENED, ALERT_UPDATED, ALERT_CLOSED = K.ALERT_OPENED, K.ALERT_UPDATED, K.ALERT_CLOSED


@dataclass(frozen=True, slots=True)
class ThresholdEvents:
    """`event` per row (0, ALERT_OPENED, ALERT_UPDATED, ALERT_CLOSED) and each series' state after."""

    event: npt.NDArray[np.int8]
    is_open: npt.NDArray[np.uint8]
    peak: F64


def threshold_events(
    series: npt.ArrayLike,
    ts_us: npt.ArrayLike,
    value: npt.ArrayLike,
    threshold: float,
    hysteresis: float,
    n_series: int,
    is_open: npt.ArrayLike | None = None,
    peak: npt.ArrayLike | None = None,
) -> ThresholdEvents:
    """An alert per series opens when a value exceeds `threshold`, is updated by each new peak (at
    least `hysteresis` above the last one when hysteresis > 0) and closes when a value falls below
    `threshold - hysteresis`; rows in (series, time) order, NaN skipped. `is_open`/`peak` (per
    series) carry the state of an earlier call, so evaluating in pieces gives the same events."""
    if not np.isfinite(threshold) or not np.isfinite(hysteresis) or hysteresis < 0:
        raise ValueError("threshold must be finite and hysteresis finite and >= 0")
    s = _int64_1d("series", series)
    t = _int64_1d("ts_us", ts_us)
    v = _float64_1d("value", value)
    _same_length(series=s, ts_us=t, value=v)
    if s.size and (int(s.min()) < 0 or int(s.max()) >= n_series):
        raise ValueError(f"series values must lie in [0, {n_series})")
    state = np.zeros(n_series, np.uint8) if is_open is None else np.array(is_open, dtype=np.uint8)
    top = np.full(n_series, -np.inf) if peak is None else np.array(peak, dtype=np.float64)
    if state.shape != (n_series,) or top.shape != (n_series,):
        raise ValueError(f"is_open and peak must have n_series={n_series} entries")
    order = _series_time_order(s, t)
    event = K.threshold_events_sorted(order, s, v, float(threshold), float(hysteresis), state, top)
    return ThresholdEvents(event, state, top)


def rolling_bucket_means(
    series: npt.ArrayLike,
    bucket_us: npt.ArrayLike,
    count: npt.ArrayLike,
    total: npt.ArrayLike,
    width_us: int,
    window_us: int,
    min_coverage: float,
) -> F64:
    """Per rollup bucket: the mean over its series' buckets within `window_us` up to its end, from
    their reading counts and value totals; NaN unless at least `min_coverage` of the window's
    buckets hold readings (0.75: the EU data-capture rule of 2008/50/EC)."""
    if width_us <= 0 or window_us < width_us or window_us % width_us:
        raise ValueError("window_us must be a positive multiple of width_us")
    if not 0.0 <= min_coverage <= 1.0:
        raise ValueError("min_coverage must lie in [0, 1]")
    s = _int64_1d("series", series)
    b = _int64_1d("bucket_us", bucket_us)
    c = _float64_1d("count", count)
    v = _float64_1d("total", total)
    _same_length(series=s, bucket_us=b, count=c, total=v)
    min_buckets = max(1, int(np.ceil(min_coverage * (window_us // width_us) - 1e-9)))
    order = _series_time_order(s, b)
    return K.rolling_bucket_means_sorted(order, s, b, c, v, int(width_us), int(window_us), min_buckets)


@dataclass(frozen=True, slots=True)
class Silences:
    """Gaps longer than the limit: series, when the silence became an alert, when data came back
    (-1: still silent at the horizon) and the last reading before it."""

    series: I64
    opened_us: I64
    closed_us: I64
    last_us: I64


def silences(series: npt.ArrayLike, ts_us: npt.ArrayLike, gap_us: int, horizon_us: int) -> Silences:
    """Every stretch of more than `gap_us` without a reading, per series, up to `horizon_us`."""
    if gap_us <= 0:
        raise ValueError("gap_us must be > 0")
    s = _int64_1d("series", series)
    t = _int64_1d("ts_us", ts_us)
    _same_length(series=s, ts_us=t)
    order = _series_time_order(s, t)
    s, t = s[order], t[order]
    last = np.ones(s.size, dtype=bool)
    last[:-1] = s[1:] != s[:-1]
    nxt = np.full(s.size, -1, dtype=np.int64)
    nxt[:-1] = np.where(last[:-1], -1, t[1:])
    until = np.where(nxt < 0, horizon_us, nxt)
    gap = until - t > gap_us
    return Silences(s[gap], t[gap] + gap_us, nxt[gap], t[gap])
