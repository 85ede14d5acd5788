"""Checked public entry points to the Numba kernels in `processors._kernels`.

Each wrapper turns its inputs into contiguous arrays of the kernel's dtype (cheap, lossless
conversions only), rejects what the kernel can't handle with a `TypeError`/`ValueError` that names
the argument, and calls the kernel. Timestamps are int64 epoch microseconds UTC (datetime64 is
accepted and converted). NaN values are skipped by every aggregate.

One module per domain, matching tests/unit/test_kernels_<domain>.py: `aggregates`, `noise`, `air`,
`meters`, `traffic`, `quality` (`_checks` holds the argument checks they share, `warmup` the
start-up run). The Numba kernels themselves stay in one module, `processors._kernels`, because
Numba's on-disk cache (`cache=True`) tracks only a kernel's own file: kernels that call each other
must live together, or a change to a callee leaves its callers' cached machine code stale.
"""

from __future__ import annotations

from processors._kernels import (
    FLAG_DUPLICATE,
    FLAG_FIRST,
    FLAG_IMPLAUSIBLE,
    FLAG_MISSING,
    FLAG_RESET,
    FLAG_ROLLOVER,
    FLAG_SPIKE,
    FLAG_STUCK,
)
from processors.kernels.aggregates import PartialAggregates, merge_partial_aggregates, partial_aggregates
from processors.kernels.air import (
    EPA_POLLUTANTS,
    EUROPEAN_AQI_BAND_NAMES,
    EUROPEAN_AQI_POLLUTANTS,
    EUROPEAN_AQI_UPPER_BOUNDS,
    DailyMeans,
    daily_means,
    epa_aqi,
    epa_aqi_subindex,
    european_aqi_band,
    exceedance_days,
    rolling_mean_hours,
)
from processors.kernels.meters import MeterState, MeterSteps, meter_steps
from processors.kernels.noise import LdenByDay, lden_from_hourly_leq, leq, leq_by_group
from processors.kernels.quality import coverage, hampel_flags, stuck_value_flags
from processors.kernels.traffic import TrafficAggregates, traffic_hourly, travel_time_index
from processors.kernels.warmup import warm_up

__all__ = [
    "EPA_POLLUTANTS",
    "EUROPEAN_AQI_BAND_NAMES",
    "EUROPEAN_AQI_POLLUTANTS",
    "EUROPEAN_AQI_UPPER_BOUNDS",
    "FLAG_DUPLICATE",
    "FLAG_FIRST",
    "FLAG_IMPLAUSIBLE",
    "FLAG_MISSING",
    "FLAG_RESET",
    "FLAG_ROLLOVER",
    "FLAG_SPIKE",
    "FLAG_STUCK",
    "DailyMeans",
    "LdenByDay",
    "MeterState",
    "MeterSteps",
    "PartialAggregates",
    "TrafficAggregates",
    "coverage",
    "daily_means",
    "epa_aqi",
    "epa_aqi_subindex",
    "european_aqi_band",
    "exceedance_days",
    "hampel_flags",
    "lden_from_hourly_leq",
    "leq",
    "leq_by_group",
    "merge_partial_aggregates",
    "meter_steps",
    "partial_aggregates",
    "rolling_mean_hours",
    "stuck_value_flags",
    "traffic_hourly",
    "travel_time_index",
    "warm_up",
]
