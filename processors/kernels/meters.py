"""Meters: steps of cumulative indexes (resets, rollovers, implausible jumps) and their state."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

from processors import _kernels as K
from processors.kernels._checks import (
    F64,
    HOUR_US,
    I64,
    U8,
    _float64_1d,
    _int64_1d,
    _same_length,
    _series_time_order,
)


@dataclass(frozen=True, slots=True)
class MeterState:
    """Per series: the reference reading (last accepted time, register high-water value), the
    previous reading (noise is judged against it) and a rejected rise waiting for confirmation;
    carried from one batch to the next."""

    has_ref: npt.NDArray[np.bool_]
    ref_t_us: I64
    ref_value: F64
    prev_value: F64
    has_pending: npt.NDArray[np.bool_]
    pending_t_us: I64
    pending_value: F64

    @classmethod
    def empty(cls, n_series: int) -> MeterState:
        return cls(
            np.zeros(n_series, dtype=np.bool_),
            np.zeros(n_series, dtype=np.int64),
            np.zeros(n_series),
            np.zeros(n_series),
            np.zeros(n_series, dtype=np.bool_),
            np.zeros(n_series, dtype=np.int64),
            np.zeros(n_series),
        )

    def __len__(self) -> int:
        return int(self.has_ref.shape[0])


@dataclass(frozen=True, slots=True)
class MeterSteps:
    """Per input row: accepted consumption (NaN for first, missing and rejected readings), the time
    it covers, time excluded with a rejected step, flags, noise (a reading below the high-water
    value, within the tolerance of the previous one);
    and the state after the last reading of each series."""

    consumption: F64
    covered_us: I64
    excluded_us: I64
    flags: U8
    noise: npt.NDArray[np.bool_]
    state: MeterState

    def __len__(self) -> int:
        return int(self.consumption.shape[0])


def _per_series(name: str, x: npt.ArrayLike, n_series: int, *, nan_ok: bool) -> F64:
    a = _float64_1d(name, x)
    if a.shape[0] != n_series:
        raise ValueError(f"{name} must have one value per series ({n_series}), got {a.shape[0]}")
    bad = np.isnan(a) if not nan_ok else np.zeros(a.shape[0], dtype=np.bool_)
    if np.any(bad | (a < 0)):
        raise ValueError(f"{name} must be >= 0{' or NaN' if nan_ok else ''}")
    return a


def meter_steps(
    series: npt.ArrayLike,
    ts_us: npt.ArrayLike,
    index_value: npt.ArrayLike,
    *,
    rollover_at: npt.ArrayLike,
    max_rate_per_h: npt.ArrayLike,
    tolerance: npt.ArrayLike,
    state: MeterState | None = None,
) -> MeterSteps:
    """Consumption per reading of cumulative registers, attributed to the interval ending at it.

    `series` indexes the per-series arrays (0 .. n-1): `rollover_at` (register size, e.g. 100000
    for five digits; NaN if unknown), `max_rate_per_h` (the most the meter can count per hour;
    NaN for no limit) and `tolerance` (register noise, in the register's unit). Rows may come in any
    order (processed by series, then time). A reading steps from the reference reading of its
    series (`state`, else the first reading is FLAG_FIRST):
    - rise above the high-water value within max_rate·dt + tolerance: consumed;
    - below the high-water value but within the tolerance of it or of the previous reading (the
      last one not rejected): noise, 0 (the reference keeps its high-water value, so jitter never
      adds up, and small steps back never add up to a reset);
    - larger fall: a rollover (rollover_at - ref + new, FLAG_ROLLOVER) when that is plausible (or,
      without a rate, below half the register), else a reset counted from 0 (FLAG_RESET); a reset
      whose landing value is implausible re-bases the reference and excludes the interval;
    - faster rise: rejected (FLAG_IMPLAUSIBLE, reference kept); if the next reading continues
      plausibly from it, the meter was re-based (swapped): FLAG_RESET there, consumption from the
      rejected reading on, and the time from the reference to it excluded;
    - NaN: FLAG_MISSING, ignored.
    Accepted consumption sums to the register's true advance over the covered time; covered plus
    excluded time sums to the time from the first to the last reference reading.
    """
    s = _int64_1d("series", series)
    t = _int64_1d("ts_us", ts_us)
    v = _float64_1d("index_value", index_value)
    _same_length(series=s, ts_us=t, index_value=v)
    n_series = np.asarray(tolerance).reshape(-1).shape[0]
    if s.size and (int(s.min()) < 0 or int(s.max()) >= n_series):
        raise ValueError(f"series must index the per-series arrays (0 .. {n_series - 1})")
    roll = _per_series("rollover_at", rollover_at, n_series, nan_ok=True)
    if np.any(roll == 0):
        raise ValueError("rollover_at must be > 0 or NaN")
    rate = _per_series("max_rate_per_h", max_rate_per_h, n_series, nan_ok=True) / HOUR_US
    tol = _per_series("tolerance", tolerance, n_series, nan_ok=False)
    if state is None:
        state = MeterState.empty(n_series)
    elif len(state) != n_series:
        raise ValueError(f"state has {len(state)} series, the parameters {n_series}")
    out = MeterState(*(np.array(getattr(state, f.name)) for f in fields(MeterState)))
    order = _series_time_order(s, t)
    consumption, covered, excluded, flags, noise = K.meter_steps_sorted(
        order, s, t, v, roll, rate, tol, *(getattr(out, f.name) for f in fields(MeterState))
    )
    return MeterSteps(consumption, covered, excluded, flags, noise, out)
