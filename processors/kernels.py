"""Checked public entry points to the Numba kernels in `processors._kernels`.

Each wrapper turns its inputs into contiguous arrays of the kernel's dtype (cheap, lossless
conversions only), rejects what the kernel can't handle with a `TypeError`/`ValueError` that names
the argument, and calls the kernel. Timestamps are int64 epoch microseconds UTC (datetime64 is
accepted and converted). NaN values are skipped by every aggregate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from processors import _kernels as K
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

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

HOUR_US = 3_600_000_000
DAY_US = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------


def _int64_1d(name: str, data: npt.ArrayLike) -> I64:
    arr = np.asarray(data)
    if arr.dtype.kind == "M":
        arr = arr.astype("datetime64[us]").view(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} does not fit in int64")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _float64_1d(name: str, data: npt.ArrayLike) -> F64:
    arr = np.asarray(data)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: int(a.shape[0]) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays must have equal lengths, got {lengths}")
    return next(iter(lengths.values()))


def _group_index(name: str, data: npt.ArrayLike, n_groups: int) -> I64:
    idx = _int64_1d(name, data)
    if n_groups < 0:
        raise ValueError(f"n_groups must be >= 0, got {n_groups}")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n_groups):
        raise ValueError(f"{name} values must lie in [0, {n_groups}), got [{idx.min()}, {idx.max()}]")
    return idx


def _series_time_order(series: I64, ts_us: I64) -> I64:
    """Row order sorted by (series, ts), stable so equal timestamps keep their input order."""
    if series.size == 0:
        return np.zeros(0, dtype=np.int64)
    smin, smax = int(series.min()), int(series.max())
    if smax - smin + 1 <= 2 * series.size + (1 << 16):
        return K.series_time_order(series, ts_us, smin, smax - smin + 1)
    return np.lexsort((ts_us, series)).astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------------
# Windowed partial aggregates
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartialAggregates:
    """Mergeable per-(series, bucket) state, one row per group present, sorted by (series, bucket).

    We keep `sum` and `sumsq` rather than Welford's M2: they merge by plain addition (what the SQL
    upsert does); mean = sum/count, variance = (sumsq - sum²/count)/(count - 1). The price is
    cancellation when |mean| ≫ std (fine for sensor values, not for e.g. raw epoch numbers).
    `first_*`/`last_*` are the earliest/latest reading; on equal timestamps the reading seen first
    (input order; in a merge, `a`) wins, as the upsert keeps the stored row.
    `energy_sum` is Σ10^(v/10) for decibel series (else 0), so Leq = 10·log10(energy_sum/count).
    """

    series: I64
    bucket_start_us: I64
    count: I64
    sum: F64
    sumsq: F64
    min: F64
    max: F64
    first_ts_us: I64
    first_value: F64
    last_ts_us: I64
    last_value: F64
    energy_sum: F64

    def __len__(self) -> int:
        return int(self.series.shape[0])

    @classmethod
    def _from_kernel(cls, series: I64, bucket: I64, acc: tuple[np.ndarray, ...]) -> PartialAggregates:
        count, total, sumsq, vmin, vmax, first_ts, first_v, last_ts, last_v, energy = acc
        return cls(
            series, bucket, count, total, sumsq, vmin, vmax, first_ts, first_v, last_ts, last_v, energy
        )

    @classmethod
    def empty(cls) -> PartialAggregates:
        ints = {"series", "bucket_start_us", "count", "first_ts_us", "last_ts_us"}
        columns: dict[str, np.ndarray] = {
            f.name: np.zeros(0, np.int64 if f.name in ints else np.float64) for f in fields(cls)
        }
        return cls(**columns)

    def _accumulators(self) -> tuple[np.ndarray, ...]:
        return (
            self.count,
            self.sum,
            self.sumsq,
            self.min,
            self.max,
            self.first_ts_us,
            self.first_value,
            self.last_ts_us,
            self.last_value,
            self.energy_sum,
        )


def _dense_cell_limit(n_valid: int) -> int:
    # The id table costs 4 B per cell; allow a few cells per reading (plus a fixed 16 MiB).
    return 4 * n_valid + (1 << 22)


def partial_aggregates(
    series: npt.ArrayLike,
    ts_us: npt.ArrayLike,
    value: npt.ArrayLike,
    bucket_us: int,
    decibel_mask_per_series: npt.ArrayLike | None = None,
) -> PartialAggregates:
    """Per (series, bucket_start) partial aggregates of unsorted readings; NaN values are skipped.

    Buckets are epoch-aligned: bucket_start = floor(ts / bucket_us) · bucket_us. Groups go through
    a dense (series x present-bucket) id table when that table is small (the usual case, even with
    a few very late readings: empty buckets are compacted away), else through a stable argsort.
    `decibel_mask_per_series[s]` says whether series s is in dB (fills `energy_sum`).
    """
    s = _int64_1d("series", series)
    t = _int64_1d("ts_us", ts_us)
    v = _float64_1d("value", value)
    _same_length(series=s, ts_us=t, value=v)
    bucket = int(bucket_us)
    if bucket <= 0:
        raise ValueError(f"bucket_us must be > 0, got {bucket_us}")
    if decibel_mask_per_series is None:
        has_db = False
        mask = np.zeros(1, dtype=np.bool_)
    else:
        mask_arr = np.asarray(decibel_mask_per_series)
        if mask_arr.ndim != 1 or mask_arr.dtype != np.bool_:
            raise TypeError(f"decibel_mask_per_series must be a 1-D bool array, got {mask_arr.dtype}")
        has_db = True
        mask = np.ascontiguousarray(mask_arr)
    n_valid, smin, smax, tmin, tmax = K.span_stats(s, t, v)
    if n_valid == 0:
        return PartialAggregates.empty()
    if smin < 0:
        raise ValueError(f"series indices must be >= 0, got {smin}")
    if has_db and smax >= mask.shape[0]:
        raise ValueError(f"decibel_mask_per_series has {mask.shape[0]} entries but series reaches {smax}")
    first_bucket = (int(tmin) // bucket) * bucket
    n_bucket_span = int(tmax) // bucket - int(tmin) // bucket + 1
    n_series_span = int(smax) - int(smin) + 1
    limit = _dense_cell_limit(int(n_valid))
    # Dense path limits: int64 offsets, int32 group ids.
    dense_possible = (
        int(tmax) - first_bucket < 2**63 and n_series_span * n_bucket_span < 2**62 and n_valid < 2**31
    )
    n_cols = n_bucket_span
    use_compact = False
    compact = np.zeros(1, dtype=np.int64)
    if dense_possible and n_series_span * n_bucket_span > limit and n_bucket_span <= limit:
        compact, n_cols = K.mark_present_buckets(t, v, bucket, first_bucket, n_bucket_span)
        use_compact = True
    if dense_possible and n_series_span * n_cols <= limit:
        out = K.accumulate_dense(
            s,
            t,
            v,
            bucket,
            first_bucket,
            int(smin),
            n_series_span,
            int(n_cols),
            compact,
            use_compact,
            mask,
            has_db,
            min(n_series_span * int(n_cols), int(n_valid)),
        )
    else:
        if dense_possible:
            order = np.argsort((s - smin) * n_bucket_span + (t - first_bucket) // bucket, kind="stable")
        else:
            order = np.lexsort((t // bucket, s))
        out = K.accumulate_sorted(order.astype(np.int64, copy=False), s, t, v, bucket, mask, has_db)
    return PartialAggregates._from_kernel(*out)


def merge_partial_aggregates(a: PartialAggregates, b: PartialAggregates) -> PartialAggregates:
    """Merge two partials the way the SQL upsert merges a new partial (`b`) into a stored one (`a`)."""
    series = np.concatenate([a.series, b.series])
    bucket = np.concatenate([a.bucket_start_us, b.bucket_start_us])
    acc = tuple(
        np.concatenate([np.asarray(x), np.asarray(y)])
        for x, y in zip(a._accumulators(), b._accumulators(), strict=True)
    )
    order = np.lexsort((bucket, series)).astype(np.int64, copy=False)
    out = K.merge_sorted_partials(order, series, bucket, acc)
    return PartialAggregates._from_kernel(*out)


# --------------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------------


def leq(levels_db: npt.ArrayLike) -> float:
    """Energy-average level 10·log10(mean(10^(L/10))) of the non-NaN levels; NaN if none."""
    return float(K.leq_energy_average(_float64_1d("levels_db", levels_db)))


def leq_by_group(group_idx: npt.ArrayLike, levels_db: npt.ArrayLike, n_groups: int) -> F64:
    """Energy-average level per group index in [0, n_groups); NaN for groups without a level."""
    lv = _float64_1d("levels_db", levels_db)
    g = _group_index("group_idx", group_idx, n_groups)
    _same_length(group_idx=g, levels_db=lv)
    return K.leq_energy_average_by_group(g, lv, int(n_groups))


@dataclass(frozen=True, slots=True)
class LdenByDay:
    """Noise indicators per local Lden day (sorted), energy averages in dB, NaN when absent.

    `lden` is NaN unless all three periods have at least one hour: apply completeness rules
    (e.g. a minimum share of hours per period) with the `hours_*` counts.
    """

    local_date: npt.NDArray[np.datetime64]
    lday: F64
    levening: F64
    lnight: F64
    lden: F64
    hours_day: I64
    hours_evening: I64
    hours_night: I64

    def __len__(self) -> int:
        return int(self.local_date.shape[0])


def _utc_offset_at(us: int, tz: ZoneInfo) -> int:
    off = (_EPOCH + timedelta(microseconds=us)).astimezone(tz).utcoffset()
    return 0 if off is None else off // timedelta(microseconds=1)


def _utc_offsets_us(ts_us: I64, tz: ZoneInfo) -> I64:
    """UTC offset (µs) of each instant in `tz`.

    Looked up at both ends of each UTC day present; only a day whose two ends differ (a DST or
    zone change inside it) is resolved instant by instant. Assumes at most one change per day.
    """
    days, inverse = np.unique(ts_us // DAY_US, return_inverse=True)
    inverse = inverse.reshape(-1)
    at_start = np.array([_utc_offset_at(d * DAY_US, tz) for d in days.tolist()], dtype=np.int64)
    at_end = np.array([_utc_offset_at(d * DAY_US + DAY_US - 1, tz) for d in days.tolist()], dtype=np.int64)
    offsets = at_start[inverse]
    for k in np.flatnonzero(at_start != at_end).tolist():
        rows = np.flatnonzero(inverse == k)
        offsets[rows] = [_utc_offset_at(u, tz) for u in ts_us[rows].tolist()]
    return offsets


def lden_from_hourly_leq(
    hour_start_us: npt.ArrayLike,
    leq_db: npt.ArrayLike,
    tz: str,
    *,
    day_start_hour: int = 7,
    evening_start_hour: int = 19,
    night_start_hour: int = 23,
    evening_penalty_db: float = 5.0,
    night_penalty_db: float = 10.0,
) -> LdenByDay:
    """Lday, Levening, Lnight and Lden per local day from hourly Leq with their UTC hour starts.

    Periods are local time in zone `tz` (zoneinfo name): day [day_start, evening_start), evening
    [evening_start, night_start), night [night_start, 24) + [0, day_start). An "Lden day" runs
    from day_start to the next day_start, so the night belongs to the day it starts in: the
    hours 00–07 of 2 June count in the Lden day of 1 June. DST days therefore have a 7- or
    9-hour night (a 23- or 25-hour Lden day). Each hour goes to the period of its local start.
    Lden = 10·log10((Td·10^(Ld/10) + Te·10^((Le+5)/10) + Tn·10^((Ln+10)/10))/24) with the
    nominal period lengths Td, Te, Tn (12, 4, 8 by default).
    """
    if not 0 <= day_start_hour < evening_start_hour < night_start_hour <= 24:
        raise ValueError("need 0 <= day_start_hour < evening_start_hour < night_start_hour <= 24")
    t = _int64_1d("hour_start_us", hour_start_us)
    lv = _float64_1d("leq_db", leq_db)
    _same_length(hour_start_us=t, leq_db=lv)
    if t.size and np.unique(t).size != t.size:
        raise ValueError("hour_start_us has duplicate hours")
    local_us = t + _utc_offsets_us(t, ZoneInfo(tz))
    local_day = local_us // DAY_US
    local_hour = (local_us - local_day * DAY_US) // HOUR_US
    owning_day = local_day - (local_hour < day_start_hour)
    period = np.where(
        (local_hour >= day_start_hour) & (local_hour < evening_start_hour),
        0,
        np.where((local_hour >= evening_start_hour) & (local_hour < night_start_hour), 1, 2),
    ).astype(np.int64)
    days, day_idx = np.unique(owning_day, return_inverse=True)
    period_hours = np.array(
        [
            evening_start_hour - day_start_hour,
            night_start_hour - evening_start_hour,
            24 - night_start_hour + day_start_hour,
        ],
        dtype=np.float64,
    )
    penalty = np.array([0.0, evening_penalty_db, night_penalty_db])
    levels, hours, lden = K.lden_by_day(
        day_idx.reshape(-1).astype(np.int64), period, lv, int(days.size), period_hours, penalty
    )
    return LdenByDay(
        local_date=days.astype("datetime64[D]"),
        lday=np.ascontiguousarray(levels[:, 0]),
        levening=np.ascontiguousarray(levels[:, 1]),
        lnight=np.ascontiguousarray(levels[:, 2]),
        lden=lden,
        hours_day=np.ascontiguousarray(hours[:, 0]),
        hours_evening=np.ascontiguousarray(hours[:, 1]),
        hours_night=np.ascontiguousarray(hours[:, 2]),
    )


# --------------------------------------------------------------------------------------------------
# Air quality
# --------------------------------------------------------------------------------------------------

_EPA_INDEX_LO = np.array([0, 51, 101, 151, 201, 301], dtype=np.float64)
_EPA_INDEX_HI = np.array([50, 100, 150, 200, 300, 500], dtype=np.float64)

# pollutant -> (canonical unit -> table unit divisor, table quanta per unit, (lo, hi) in quanta).
# 2024 revision (PM2.5; one 301–500 row for all). O3 is the 8-h table, CO 8-h, SO2/NO2 1-h.
_EPA_TABLES: dict[str, tuple[float, int, tuple[tuple[int, int], ...]]] = {
    "pm25": (1.0, 10, ((0, 90), (91, 354), (355, 554), (555, 1254), (1255, 2254), (2255, 3254))),
    "pm10": (1.0, 1, ((0, 54), (55, 154), (155, 254), (255, 354), (355, 424), (425, 604))),
    "o3": (1.96 * 1000.0, 1000, ((0, 54), (55, 70), (71, 85), (86, 105), (106, 200))),
    "co": (1.145, 10, ((0, 44), (45, 94), (95, 124), (125, 154), (155, 304), (305, 504))),
    "so2": (2.62, 1, ((0, 35), (36, 75), (76, 185), (186, 304), (305, 604), (605, 1004))),
    "no2": (1.9, 1, ((0, 53), (54, 100), (101, 360), (361, 649), (650, 1249), (1250, 2049))),
}
EPA_POLLUTANTS = tuple(_EPA_TABLES)


def epa_aqi_subindex(pollutant: str, concentration: npt.ArrayLike) -> F64:
    """US EPA AQI sub-index (integer-valued float, NaN for NaN/negative input) per concentration.

    Input is in canonical units: µg/m³, except CO in mg/m³. The wrapper converts to the EPA
    table unit at 20 °C as U4SSC does (NO2 ppb = µg/m³ / 1.9, SO2 / 2.62, O3 ppm = µg/m³ / 1.96
    / 1000, CO ppm = mg/m³ / 1.145), truncates (PM2.5 to 0.1 µg/m³, PM10 1 µg/m³, O3 0.001 ppm,
    CO 0.1 ppm, SO2/NO2 1 ppb) and interpolates with the 2024 breakpoints. Averaging periods are
    the caller's: 24-h PM, 8-h O3 and CO, 1-h SO2 and NO2. Above the top breakpoint the index is
    capped at 500; 8-h O3 above 0.200 ppm gives 300, since EPA defines higher O3 values from
    1-h concentrations only (read it as "at least 300").
    """
    if pollutant not in _EPA_TABLES:
        raise ValueError(f"unknown EPA pollutant {pollutant!r}; expected one of {EPA_POLLUTANTS}")
    divisor, quanta, rows = _EPA_TABLES[pollutant]
    c = np.asarray(concentration)
    flat = _float64_1d("concentration", c.reshape(-1)) / divisor
    n_rows = len(rows)
    lo = np.array([r[0] for r in rows], dtype=np.int64)
    hi = np.array([r[1] for r in rows], dtype=np.int64)
    cap = float(_EPA_INDEX_HI[n_rows - 1])
    out = K.epa_subindex_from_table(
        flat, float(quanta), lo, hi, _EPA_INDEX_LO[:n_rows].copy(), _EPA_INDEX_HI[:n_rows].copy(), cap
    )
    return out.reshape(c.shape)


def epa_aqi(concentrations: Mapping[str, npt.ArrayLike]) -> F64:
    """EPA AQI = max sub-index over the given pollutants (arrays broadcast); NaN where all are NaN."""
    if not concentrations:
        raise ValueError("epa_aqi needs at least one pollutant")
    subs = [epa_aqi_subindex(p, c) for p, c in concentrations.items()]
    out = subs[0]
    for sub in subs[1:]:
        out = np.fmax(out, sub)
    return np.asarray(out, dtype=np.float64)


# The European AQI, written once: upper bounds of bands 1..4 (Good, Fair, Moderate, Poor) in µg/m³,
# above the last: 5, Very poor. The KPI formulas and the Grafana generator read them from here.
EUROPEAN_AQI_UPPER_BOUNDS: dict[str, tuple[float, float, float, float]] = {
    "pm25": (10.0, 20.0, 25.0, 50.0),
    "pm10": (20.0, 35.0, 50.0, 100.0),
    "no2": (40.0, 100.0, 200.0, 400.0),
    "o3": (80.0, 120.0, 180.0, 240.0),
    "so2": (100.0, 200.0, 350.0, 500.0),
}
EUROPEAN_AQI_POLLUTANTS = tuple(EUROPEAN_AQI_UPPER_BOUNDS)
EUROPEAN_AQI_BAND_NAMES = {1: "Good", 2: "Fair", 3: "Moderate", 4: "Poor", 5: "Very poor"}


def european_aqi_band(pollutant: str, concentration_ugm3: npt.ArrayLike) -> npt.NDArray[np.int8]:
    """European AQI band 1 (Good) .. 5 (Very poor) per concentration; 0 for NaN or negative.

    A value on a band boundary belongs to the better band (10 µg/m³ PM2.5 is Good); values
    above the table's top (e.g. PM2.5 > 800) stay Very poor.
    """
    if pollutant not in EUROPEAN_AQI_UPPER_BOUNDS:
        raise ValueError(f"unknown pollutant {pollutant!r}; expected one of {EUROPEAN_AQI_POLLUTANTS}")
    c = np.asarray(concentration_ugm3)
    flat = _float64_1d("concentration_ugm3", c.reshape(-1))
    bounds = np.array(EUROPEAN_AQI_UPPER_BOUNDS[pollutant], dtype=np.float64)
    return K.band_from_upper_bounds(flat, bounds).reshape(c.shape)


def rolling_mean_hours(
    hour_start_us: npt.ArrayLike, hourly_values: npt.ArrayLike, window_hours: int = 8, min_valid: int = 6
) -> F64:
    """Trailing `window_hours` mean for each hour of one series, labelled by its last hour.

    The window of hour t holds the hours in (t - window_hours, t] by timestamp (gaps count as
    invalid hours); NaN unless at least `min_valid` hours are valid (EPA 8-h O3/CO: 6 of 8).
    Input may be unsorted; output is in input order. Hours must be distinct.
    """
    if window_hours < 1 or min_valid < 1:
        raise ValueError("window_hours and min_valid must be >= 1")
    t = _int64_1d("hour_start_us", hour_start_us)
    v = _float64_1d("hourly_values", hourly_values)
    _same_length(hour_start_us=t, hourly_values=v)
    order = np.argsort(t, kind="stable")
    ts_sorted = t[order]
    if ts_sorted.size > 1 and np.any(ts_sorted[1:] == ts_sorted[:-1]):
        raise ValueError("hour_start_us has duplicate hours")
    out_sorted = K.rolling_mean_sorted(ts_sorted, v[order], int(window_hours) * HOUR_US, int(min_valid))
    out = np.empty_like(out_sorted)
    out[order] = out_sorted
    return out


@dataclass(frozen=True, slots=True)
class DailyMeans:
    """Mean per local day (NaN below min_valid) and the number of valid values behind it."""

    mean: F64
    n_valid: I64


def daily_means(
    local_day_idx: npt.ArrayLike, values: npt.ArrayLike, n_days: int, min_valid: int = 18
) -> DailyMeans:
    """Arithmetic mean per day index in [0, n_days); default 18 valid hours (EPA 75 % of 24)."""
    v = _float64_1d("values", values)
    d = _group_index("local_day_idx", local_day_idx, n_days)
    _same_length(local_day_idx=d, values=v)
    mean, n_valid = K.group_means(d, v, int(n_days), int(min_valid))
    return DailyMeans(mean=mean, n_valid=n_valid)


def exceedance_days(daily_means: npt.ArrayLike, threshold: float) -> int:
    """Number of days whose mean is strictly above `threshold` (NaN days don't count)."""
    d = _float64_1d("daily_means", daily_means)
    return int(np.count_nonzero(d > threshold))


# --------------------------------------------------------------------------------------------------
# Meters
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterState:
    """Per series: the reference reading (last accepted time, register high-water value) and a
    rejected rise waiting for confirmation; carried from one batch to the next."""

    has_ref: npt.NDArray[np.bool_]
    ref_t_us: I64
    ref_value: F64
    has_pending: npt.NDArray[np.bool_]
    pending_t_us: I64
    pending_value: F64

    @classmethod
    def empty(cls, n_series: int) -> MeterState:
        return cls(
            np.zeros(n_series, dtype=np.bool_),
            np.zeros(n_series, dtype=np.int64),
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
    it covers, time excluded with a rejected step, flags, noise (a fall within the tolerance);
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
    - rise within max_rate·dt + tolerance: consumed;
    - fall within the tolerance: noise, 0 (the reference keeps its high-water value, so jitter
      never adds up);
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


# --------------------------------------------------------------------------------------------------
# Traffic
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Data quality
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Start-up
# --------------------------------------------------------------------------------------------------


def warm_up() -> float:
    """Run every kernel on tiny inputs (compiles, or loads the on-disk cache); returns seconds."""
    start = time.perf_counter()
    s = np.array([0, 1, 0, 1], dtype=np.int64)
    t = np.array([0, 0, 60_000_000, 3_600_000_000], dtype=np.int64)
    v = np.array([50.0, 1.0, np.nan, 2.0])
    agg = partial_aggregates(s, t, v, 60_000_000, np.array([True, False]))
    merge_partial_aggregates(agg, agg)
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
    return time.perf_counter() - start
