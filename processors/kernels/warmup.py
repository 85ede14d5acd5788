"""Start-up: run every kernel once on tiny inputs, so the first real batch does not wait for Numba."""

from __future__ import annotations

import time

import numpy as np

from processors.kernels._checks import HOUR_US
from processors.kernels.aggregates import merge_partial_aggregates, partial_aggregates
from processors.kernels.air import EPA_POLLUTANTS, daily_means, epa_aqi, european_aqi_band, rolling_mean_hours
from processors.kernels.alerts import rolling_bucket_means, threshold_events
from processors.kernels.meters import meter_steps
from processors.kernels.noise import lden_from_hourly_leq, leq, leq_by_group
from processors.kernels.quality import hampel_flags, stuck_value_flags
from processors.kernels.traffic import traffic_hourly


def warm_up() -> float:
    """Run every kernel on tiny inputs (compiles, or loads the on-disk cache); returns seconds."""
    start = time.perf_counter()
    s = np.array([0, 1, 0, 1], dtype=np.int64)
    t = np.array([0, 0, 60_000_000, 3_600_000_000], dtype=np.int64)
    v = np.array([50.0, 1.0, np.nan, 2.0])
    agg = partial_aggregates(s, t, v, 60_000_000, np.array([True, False]))  # per-cell accumulators
    merge_partial_aggregates(agg, agg)
    partial_aggregates(s, t, v, 1_000_000)  # sparse grid: group-id table
    partial_aggregates(s, t, v, 1000)  # wide bucket span: empty buckets compacted away
    partial_aggregates(s, t * 10**6, v, 1)  # span too wide even for that: argsort path
    leq(v)
    leq_by_group(s, v, 2)
    lden_from_hourly_leq(np.arange(24, dtype=np.int64) * HOUR_US, np.full(24, 60.0), "UTC")
    epa_aqi({p: v for p in EPA_POLLUTANTS})
    european_aqi_band("no2", v)
    rolling_mean_hours(np.arange(4, dtype=np.int64) * HOUR_US, v)
    daily_means(s, v, 2)
    meter_steps(s, t, v, rollover_at=[100.0, np.nan], max_rate_per_h=[10.0, np.nan], tolerance=[0.0, 0.1])
    traffic_hourly(s, v, v, 2)
    stuck_value_flags(s, t, v, 2)
    hampel_flags(v, 1, series=s, ts_us=t)
    threshold_events(s, t, v, 1.5, 0.5, 2)
    rolling_bucket_means(s, t, v, v, 60_000_000, 120_000_000, 0.5)
    return time.perf_counter() - start
