"""Traffic: hourly counts and speeds, the travel time index."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from processors import _kernels as K
from processors.kernels._checks import F64, _float64_1d, _group_index, _same_length


@dataclass(frozen=True, slots=True)
class TrafficAggregates:
    """Per group: vehicle flow, count-weighted mean speed, 85th-percentile speed and harmonic mean
    speed (NaN if none)."""

    flow: F64
    mean_speed: F64
    p85_speed: F64
    harmonic_speed: F64


def traffic_hourly(
    group_idx: npt.ArrayLike,
    counts: npt.ArrayLike | None,
    speeds: npt.ArrayLike | None,
    n_groups: int,
) -> TrafficAggregates:
    """Flow, mean speed and p85 speed per group (e.g. detector-hour) from detector rows.

    A row is a count of vehicles with their mean speed (or one vehicle when `counts` is None).
    flow = Σ counts (NaN counts skipped; rows when counts is None). The mean speed is weighted by
    counts. p85 is the count-weighted nearest rank: the smallest speed whose cumulative count
    share reaches 0.85, i.e. numpy.percentile(speeds, 85, weights=counts, method="inverted_cdf"),
    which with integer counts equals the nearest-rank p85 over the individual vehicles. The
    harmonic mean speed Σc / Σ(c/v) over moving rows (v > 0) is the speed of the mean travel time
    over a fixed distance: what a travel time index needs (the arithmetic mean overstates it).
    """
    g = _group_index("group_idx", group_idx, n_groups)
    has_counts = counts is not None
    has_speeds = speeds is not None
    c = _float64_1d("counts", counts) if counts is not None else np.zeros(g.size)
    sp = _float64_1d("speeds", speeds) if speeds is not None else np.zeros(g.size)
    _same_length(group_idx=g, counts=c, speeds=sp)
    if has_counts and np.any(c < 0):
        raise ValueError("counts must be >= 0")
    flow, mean_speed, p85, harmonic = K.traffic_by_group(
        g, c, sp, int(n_groups), has_counts, has_speeds, 0.85
    )
    return TrafficAggregates(flow=flow, mean_speed=mean_speed, p85_speed=p85, harmonic_speed=harmonic)


def travel_time_index(speed_kmh: npt.ArrayLike, free_flow_kmh: npt.ArrayLike) -> F64:
    """Travel time over free-flow travel time for the same distance = free_flow / speed.

    Speed 0 gives inf (standing traffic); negative or NaN speeds and non-positive free-flow
    speeds give NaN.
    """
    sp = np.asarray(speed_kmh, dtype=np.float64)
    ff = np.asarray(free_flow_kmh, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        tti = np.where(sp == 0, np.inf, ff / sp)
    return np.where((sp < 0) | ~(ff > 0) | np.isnan(sp), np.nan, tti).astype(np.float64)
