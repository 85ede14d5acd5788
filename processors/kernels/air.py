"""Air quality: US EPA AQI, the European AQI bands (their one home), running means, exceedance days."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from processors import _kernels as K
from processors.kernels._checks import F64, HOUR_US, I64, _float64_1d, _group_index, _int64_1d, _same_length

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
