"""KPI formulas, registered by name: a catalog entry's `formula` picks one, its `params` configure it.

A formula gets a `FormulaContext` (the KPI definition, the city's data for the period, the
registry snapshot as of the period's last day, options) and returns `KpiResult`s: value,
readings and devices behind it, data coverage of the whole period, details. Refresh adds targets,
scores, bands, validity and labels. To add a KPI: add a `[[kpi]]` entry to catalog.toml and, if no
existing formula fits, one function here decorated with `@formula("name")`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from kpi_rollups.catalog import KpiDefinition
from kpi_rollups.periods import Period, local_midnight_utc
from kpi_rollups.registry import RegistrySnapshot
from kpi_rollups.sources import EPOCH, HOUR, CityData, DeviceInfo, SeriesCount, to_us
from kpi_rollups.values import KpiOptions, KpiResult
from processors.kernels import (
    EPA_POLLUTANTS,
    EUROPEAN_AQI_BAND_NAMES,
    EUROPEAN_AQI_POLLUTANTS,
    epa_aqi,
    european_aqi_band,
    exceedance_days,
    lden_from_hourly_leq,
    rolling_mean_hours,
    traffic_hourly,
    travel_time_index,
)

P = TypeVar("P", bound=BaseModel)


@dataclass
class FormulaContext:
    kpi: KpiDefinition
    data: CityData
    registry: RegistrySnapshot
    options: KpiOptions

    @property
    def period(self) -> Period:
        return self.data.period

    @property
    def threshold(self) -> float:
        return self.options.threshold(self.period.kind, self.kpi.min_coverage)

    def params(self, model: type[P]) -> P:
        return model.model_validate(self.kpi.params)


Formula = Callable[[FormulaContext], Awaitable[list[KpiResult]]]
FORMULAS: dict[str, Formula] = {}


def formula(name: str) -> Callable[[Formula], Formula]:
    """Register a formula under `name` (the catalog's `formula` field)."""

    def register(fn: Formula) -> Formula:
        if name in FORMULAS:
            raise ValueError(f"formula {name!r} is already registered ({FORMULAS[name].__qualname__})")
        FORMULAS[name] = fn
        return fn

    return register


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _mean(xs: list[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def _coverage(data: CityData, counts: list[SeriesCount]) -> tuple[float, float]:
    """Mean (whole period, elapsed part) coverage over the series; (0, 0) if none."""
    if not counts:
        return 0.0, 0.0
    caps = [data.capture(c) for c in counts]
    return sum(c[0] for c in caps) / len(caps), sum(c[1] for c in caps) / len(caps)


def _local_times(
    bucket_us: npt.NDArray[np.int64], zone_name: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(local date ordinal, local hour 0-23, local weekday 0=Monday) of each instant, DST-aware."""
    zone = ZoneInfo(zone_name)
    uniq, inverse = np.unique(bucket_us, return_inverse=True)
    ordinal = np.empty(uniq.shape[0], dtype=np.int64)
    hours = np.empty(uniq.shape[0], dtype=np.int64)
    wdays = np.empty(uniq.shape[0], dtype=np.int64)
    for i, u in enumerate(uniq.tolist()):
        t = (EPOCH + timedelta(microseconds=u)).astimezone(zone)
        ordinal[i], hours[i], wdays[i] = t.toordinal(), t.hour, t.weekday()
    inv = inverse.reshape(-1)
    return ordinal[inv], hours[inv], wdays[inv]


def _local_days(bucket_us: npt.NDArray[np.int64], period: Period) -> npt.NDArray[np.int64]:
    """Index of each instant's local day in the period (-1 outside)."""
    day = _local_times(bucket_us, period.tz)[0] - period.start.toordinal()
    return np.where((day >= 0) & (day < period.n_days), day, -1)


def _elapsed_hours_per_day(period: Period, now: datetime) -> npt.NDArray[np.float64]:
    out = np.zeros(period.n_days)
    for i, d in enumerate(period.days()):
        a = local_midnight_utc(d, period.tz)
        b = min(local_midnight_utc(d + timedelta(days=1), period.tz), now)
        out[i] = max(0.0, (b - a).total_seconds() / 3600.0)
    return out


# --------------------------------------------------------------------------------------------------
# Air pollution
# --------------------------------------------------------------------------------------------------


class AirParams(_Params):
    pollutants: list[str]
    epa_extra: list[str] = []
    who_24h: dict[str, float] = {}
    who_o3_8h: float | None = None
    eu_daily: dict[str, float] = {}
    eu_daily_allowed_days: dict[str, int] = {}
    eu_daily_2030: dict[str, float] = {}
    eu_o3_8h: float | None = None
    eu_o3_8h_allowed_days: int | None = None
    eu_no2_hourly: float | None = None
    eu_no2_hourly_allowed_hours: int | None = None


EPA_CATEGORIES = (
    (50, "Good"),
    (100, "Moderate"),
    (150, "Unhealthy for sensitive groups"),
    (200, "Unhealthy"),
    (300, "Very unhealthy"),
    (math.inf, "Hazardous"),
)
EU_BANDS = EUROPEAN_AQI_BAND_NAMES


def _epa_category(aqi: float) -> str:
    return next(name for hi, name in EPA_CATEGORIES if aqi <= hi)


@formula("air_pollution")
async def air_pollution(ctx: FormulaContext) -> list[KpiResult]:
    """Mean of station means per pollutant; daily AQIs and exceedance days (see catalog.toml)."""
    p: AirParams = ctx.params(AirParams)
    period, data = ctx.period, ctx.data
    metrics = list(dict.fromkeys(p.pollutants + p.epa_extra))
    limits = {"no2": p.eu_no2_hourly} if p.eu_no2_hourly is not None else None
    daily = await data.daily_linear(metrics, limits)
    counts = await data.series_counts(metrics)
    devices = await data.devices()
    stations = sorted({r["device_key"] for r in daily})
    s_idx = {dk: i for i, dk in enumerate(stations)}
    n_s, n_d = len(stations), period.n_days
    first = period.start.toordinal()

    def grid() -> npt.NDArray[np.float64]:
        return np.full((n_s, n_d), np.nan)

    mean = {m: grid() for m in metrics}
    max1h = {m: grid() for m in metrics}
    hours = {m: np.zeros((n_s, n_d)) for m in metrics}
    above = {m: np.zeros((n_s, n_d)) for m in metrics}
    n_read = {m: np.zeros(n_s, dtype=np.int64) for m in metrics}
    for r in daily:
        d = r["day"].toordinal() - first
        if not 0 <= d < n_d:
            continue
        i, m = s_idx[r["device_key"]], r["metric"]
        mean[m][i, d], max1h[m][i, d] = r["mean"], r["max_hourly"]
        hours[m][i, d], above[m][i, d] = r["hours"], r["hours_above"]
        n_read[m][i] += int(r["n"])
    # a daily value needs `threshold` of the day's elapsed hours (18 of 24 at 75 %)
    min_hours = np.where(
        (eh := _elapsed_hours_per_day(period, data.now)) > 0, np.ceil(ctx.threshold * eh - 1e-9), np.inf
    )
    valid_day = {m: (hours[m] >= min_hours[None, :]) & (hours[m] > 0) for m in metrics}
    day_mean = {m: np.where(valid_day[m], mean[m], np.nan) for m in metrics}
    day_max1h = {m: np.where(valid_day[m], max1h[m], np.nan) for m in metrics}
    # daily maximum 8-h running mean (O3, CO) from hourly rollups
    max8h: dict[str, npt.NDArray[np.float64]] = {}
    eight: list[str] = [m for m in ("o3", "co") if m in metrics]
    if eight and n_s:
        rows = await data.hourly(eight, extend_before=timedelta(hours=7))
        by_series: dict[tuple[int, str], tuple[list[int], list[float]]] = {}
        for r in rows:
            ts, vs = by_series.setdefault((r["device_key"], r["metric"]), ([], []))
            ts.append(to_us(r["bucket"]))
            vs.append(float(r["mean"]))
        for m in eight:
            max8h[m] = grid()
        for (dk, m), (ts, vs) in by_series.items():
            if dk not in s_idx:
                continue
            t_arr = np.array(ts, dtype=np.int64)
            run = rolling_mean_hours(t_arr, np.array(vs), 8, 6)
            day = _local_days(t_arr, period)
            ok = (day >= 0) & np.isfinite(run)
            row = max8h[m][s_idx[dk]]
            np.fmax.at(row, day[ok], run[ok])
        for m in eight:
            max8h[m] = np.where(valid_day[m], max8h[m], np.nan)

    results: list[KpiResult] = []
    for m in p.pollutants:
        have = [i for i in range(n_s) if hours[m][i].sum() > 0]
        if not have:
            results.append(KpiResult(component=m, not_computable=f"no station reported {m} in the period"))
            continue
        series = [counts[(stations[i], m)] for i in have if (stations[i], m) in counts]
        cov, cov_so_far = _coverage(data, series)
        daily_metric = max8h.get(m) if m == "o3" else day_mean[m]
        assert daily_metric is not None
        station_rows = []
        means = []
        for i in have:
            w = hours[m][i]
            st_mean = float(np.nansum(mean[m][i] * w) / w.sum())
            means.append(st_mean)
            sc = counts.get((stations[i], m))
            entry: dict[str, Any] = {
                "device_id": devices[stations[i]].device_id if stations[i] in devices else str(stations[i]),
                "mean": st_mean,
                "hours": int(w.sum()),
                "readings": int(n_read[m][i]),
                "coverage": data.capture(sc)[0] if sc else 0.0,
                "valid_days": int(np.count_nonzero(np.isfinite(daily_metric[i]))),
            }
            who = p.who_o3_8h if m == "o3" else p.who_24h.get(m)
            if who is not None:
                entry["who_exceedance_days"] = exceedance_days(daily_metric[i], who)
            eu = p.eu_o3_8h if m == "o3" else p.eu_daily.get(m)
            if eu is not None:
                entry["eu_exceedance_days"] = exceedance_days(daily_metric[i], eu)
            if m in p.eu_daily_2030:
                entry["eu_2030_exceedance_days"] = exceedance_days(daily_metric[i], p.eu_daily_2030[m])
            if m == "no2" and p.eu_no2_hourly is not None:
                entry["eu_hourly_exceedance_hours"] = int(above[m][i].sum())
            station_rows.append(entry)
        details: dict[str, Any] = {
            "method": "mean of station means; station mean = mean of its hourly means",
            "stations": station_rows,
            "coverage_so_far": cov_so_far,
            "period_elapsed": period.elapsed_fraction(data.now),
            "daily_statistic": "daily max 8-h mean" if m == "o3" else "24-h mean",
        }
        for key, thr, allowed in (
            ("who", p.who_o3_8h if m == "o3" else p.who_24h.get(m), None),
            (
                "eu",
                p.eu_o3_8h if m == "o3" else p.eu_daily.get(m),
                p.eu_o3_8h_allowed_days if m == "o3" else p.eu_daily_allowed_days.get(m),
            ),
            ("eu_2030", p.eu_daily_2030.get(m), None),
        ):
            if thr is None:
                continue
            field = f"{key}_exceedance_days"
            worst = max(station_rows, key=lambda e: int(e.get(field, 0)))
            details[f"{key}_threshold"] = thr
            details[f"{key}_exceedance_days_worst_station"] = worst.get(f"{key}_exceedance_days", 0)
            details[f"{key}_worst_station"] = worst["device_id"]
            if allowed is not None:
                details[f"{key}_allowed_days"] = allowed
        if m == "no2" and p.eu_no2_hourly is not None:
            details["eu_hourly_threshold"] = p.eu_no2_hourly
            details["eu_hourly_exceedance_hours_worst_station"] = max(
                e.get("eu_hourly_exceedance_hours", 0) for e in station_rows
            )
            details["eu_hourly_allowed_hours"] = p.eu_no2_hourly_allowed_hours
        results.append(
            KpiResult(
                component=m,
                value=float(np.mean(means)),
                n_readings=int(n_read[m].sum()),
                n_devices=len(have),
                coverage=cov,
                details=details,
            )
        )

    if ctx.kpi.has_component("o3_peak_season") and "o3" in max8h:
        results.append(_o3_peak_season(ctx, max8h["o3"], n_read["o3"]))
    if ctx.kpi.has_component("so2_24h_p99") and "so2" in day_mean:
        results.append(_worst_station_percentile("so2_24h_p99", day_mean["so2"], 99.0, n_read["so2"]))
    # daily AQIs: EPA from 24-h PM, daily max 8-h O3/CO, daily max 1-h NO2/SO2
    days = period.days()
    if ctx.kpi.has_component("aqi_epa"):
        epa_in: dict[str, npt.ArrayLike] = {}
        for m in metrics:
            if m not in EPA_POLLUTANTS:
                continue
            epa_in[m] = max8h[m] if m in max8h else day_max1h[m] if m in ("no2", "so2") else day_mean[m]
        results.append(_epa_aqi_result(epa_in, days, stations, n_read))
    if ctx.kpi.has_component("aqi_eu"):
        results.append(await _european_aqi_hourly(ctx, [m for m in metrics if m in EUROPEAN_AQI_POLLUTANTS]))
    return results


EEA_RUNNING_24H = ("pm25", "pm10")  # the EEA index takes PM as 24-h running means, the gases hourly


async def _european_aqi_hourly(ctx: FormulaContext, pollutants: list[str]) -> KpiResult:
    """The EEA European Air Quality Index per hour: a station's band is the worst of its pollutants'
    bands (NO2, O3, SO2 hourly means; PM2.5, PM10 24-h running means of >= 18 valid hours); the
    city's hour is its worst station. Value: the worst hour of the period."""
    data, period = ctx.data, ctx.period
    rows = await data.hourly(pollutants, extend_before=timedelta(hours=23))
    series: dict[tuple[int, str], tuple[list[int], list[float], int]] = {}
    for r in rows:
        ts, vs, n = series.get((r["device_key"], r["metric"]), ([], [], 0))
        ts.append(to_us(r["bucket"]))
        vs.append(float(r["mean"]))
        series[(r["device_key"], r["metric"])] = (
            ts,
            vs,
            n + (int(r["n"]) if r["bucket"] >= data.start else 0),
        )
    start_us, end_us = to_us(data.start), to_us(data.end)
    hour_us: list[npt.NDArray[np.int64]] = []
    band: list[npt.NDArray[np.int8]] = []
    station: list[npt.NDArray[np.int64]] = []
    for (dk, m), (ts, vs, _) in series.items():
        t = np.array(ts, dtype=np.int64)
        v = rolling_mean_hours(t, np.array(vs), 24, 18) if m in EEA_RUNNING_24H else np.array(vs)
        inside = (t >= start_us) & (t < end_us)
        hour_us.append(t[inside])
        band.append(european_aqi_band(m, v[inside]))
        station.append(np.full(int(inside.sum()), dk, dtype=np.int64))
    hours = np.concatenate(hour_us) if hour_us else np.zeros(0, dtype=np.int64)
    bands = np.concatenate(band).astype(np.int64) if band else np.zeros(0, dtype=np.int64)
    uniq, idx = np.unique(hours, return_inverse=True)
    city_hour = np.zeros(uniq.shape[0], dtype=np.int64)
    np.maximum.at(city_hour, idx.reshape(-1), bands)  # worst pollutant of the worst station
    ok = city_hour > 0
    if not ok.any():
        return KpiResult(component="aqi_eu", not_computable="no hour with a valid European AQI input yet")
    contributing = {int(dk) for st, b in zip(station, band, strict=True) for dk in st[b > 0].tolist()}
    day = _local_days(uniq[ok], period)
    daily: dict[str, float] = {}
    for d, b in zip(day.tolist(), city_hour[ok].tolist(), strict=True):
        key = period.days()[d].isoformat()
        daily[key] = max(daily.get(key, 0.0), float(b))
    by_band = {
        EU_BANDS[b]: int(np.count_nonzero(city_hour[ok] == b)) for b in sorted(set(city_hour[ok].tolist()))
    }
    elapsed_h = max(1.0, (period.elapsed_end(data.now) - data.start).total_seconds() / 3600.0)
    return KpiResult(
        component="aqi_eu",
        value=float(city_hour.max()),
        n_readings=sum(n for (dk, _), (_, _, n) in series.items() if dk in contributing),
        n_devices=len(contributing),
        coverage=min(1.0, int(ok.sum()) / (period.seconds / 3600.0)),
        details={
            "hours_by_band": by_band,
            "daily_worst_hour": daily,
            "bands": EU_BANDS,
            "city_hour": "worst station",
            "pollutants": sorted(pollutants),
            "averaging": "EEA hourly index: NO2, O3, SO2 hourly means; PM2.5, PM10 24-h running means "
            "(18 of 24 hours)",
            "coverage_so_far": min(1.0, int(ok.sum()) / elapsed_h),
        },
    )


def _o3_peak_season(
    ctx: FormulaContext, daily_max8h: npt.NDArray[np.float64], n_read: npt.NDArray[np.int64]
) -> KpiResult:
    """WHO 2021 long-term O3 statistic: per station, the mean of the daily maximum 8-h means over the
    six consecutive months with the highest such mean (a year; a shorter period: its own mean of
    them, said in details); a window needs `threshold` of its days valid. City: mean of stations."""
    period = ctx.period
    days = period.days()
    month = np.array([d.month for d in days])
    valid = np.isfinite(daily_max8h)
    windows = [np.ones(len(days), dtype=np.bool_)]
    statistic = "mean of the daily max 8-h means of the period"
    if period.kind == "year":
        windows = [(month >= m0) & (month < m0 + 6) for m0 in range(1, 8)]
        statistic = "peak season: highest 6-consecutive-month mean of the daily max 8-h means"
    values = []
    for i in range(daily_max8h.shape[0]):
        best = None
        for w in windows:
            if valid[i, w].sum() >= ctx.threshold * w.sum():
                m = float(daily_max8h[i, w & valid[i]].mean())
                best = m if best is None else max(best, m)
        if best is not None:
            values.append(best)
    if not values:
        return KpiResult(
            component="o3_peak_season", not_computable=f"no station has enough valid days ({statistic})"
        )
    return KpiResult(
        component="o3_peak_season",
        value=float(np.mean(values)),
        n_readings=int(n_read.sum()),
        n_devices=len(values),
        coverage=float(valid.any(axis=0).mean()),
        details={"statistic": statistic, "city": "mean of the stations"},
    )


def _worst_station_percentile(
    component: str, daily: npt.NDArray[np.float64], q: float, n_read: npt.NDArray[np.int64]
) -> KpiResult:
    """The q-th percentile (nearest rank) of each station's valid daily means; the worst station."""
    per_station = [
        float(np.percentile(row[np.isfinite(row)], q, method="inverted_cdf"))
        for row in daily
        if np.isfinite(row).any()
    ]
    if not per_station:
        return KpiResult(component=component, not_computable="no valid day at any station")
    return KpiResult(
        component=component,
        value=max(per_station),
        n_readings=int(n_read.sum()),
        n_devices=len(per_station),
        coverage=float(np.isfinite(daily).any(axis=0).mean()),
        details={
            "statistic": f"{q:g}th percentile of the daily means (nearest rank)",
            "city": "worst station",
        },
    )


def _epa_aqi_result(
    inputs: dict[str, npt.ArrayLike],
    days: list[date],
    stations: list[int],
    n_read: dict[str, npt.NDArray[np.int64]],
) -> KpiResult:
    """Daily US EPA AQI per station; the city's day is its worst station, the value its worst day."""
    component = "aqi_epa"
    if not inputs or not stations:
        return KpiResult(component=component, not_computable="no station data in the period")
    station_day = epa_aqi(inputs)
    city_day = np.fmax.reduce(station_day, axis=0)
    ok = np.isfinite(city_day)
    contributing = int(np.count_nonzero(np.any(np.isfinite(station_day) & (station_day > 0), axis=1)))
    n_valid = int(np.count_nonzero(ok))
    if n_valid == 0:
        return KpiResult(
            component=component,
            n_devices=contributing,
            coverage=0.0,
            not_computable=("no day with enough valid hours (75 % of the day's hours) for a daily index yet"),
        )
    daily = {days[i].isoformat(): float(city_day[i]) for i in np.flatnonzero(ok)}
    cats: dict[str, int] = {}
    for v in daily.values():
        cats[_epa_category(v)] = cats.get(_epa_category(v), 0) + 1
    details: dict[str, Any] = {
        "daily": daily,
        "days_by_category": cats,
        "city_day": "worst station",
        "pollutants": sorted(inputs),
        "averaging": "24-h PM; daily max 8-h O3 and CO; daily max 1-h NO2 and SO2",
    }
    n_readings = int(sum(int(n_read[m].sum()) for m in inputs))
    return KpiResult(
        component=component,
        value=float(np.nanmax(city_day[ok])),
        n_readings=n_readings,
        n_devices=contributing,
        coverage=n_valid / len(days),
        details=details,
    )


# --------------------------------------------------------------------------------------------------
# Noise exposure
# --------------------------------------------------------------------------------------------------


class NoiseParams(_Params):
    metric: str = "laeq"
    threshold_db: float = 55.0
    day_start_hour: int = 7
    evening_start_hour: int = 19
    night_start_hour: int = 23
    evening_penalty_db: float = 5.0
    night_penalty_db: float = 10.0


def _energy_mean(levels: npt.NDArray[np.float64], weights: npt.NDArray[np.float64]) -> float | None:
    ok = np.isfinite(levels) & (weights > 0)
    if not ok.any():
        return None
    return float(10 * np.log10(np.sum(weights[ok] * 10 ** (levels[ok] / 10)) / np.sum(weights[ok])))


@formula("noise_exposure")
async def noise_exposure(ctx: FormulaContext) -> list[KpiResult]:
    """Lden per area and the population share of areas above the threshold (see catalog.toml)."""
    p: NoiseParams = ctx.params(NoiseParams)
    data, period = ctx.data, ctx.period
    rows = await data.hourly([p.metric])
    devices = await data.devices()
    counts = await data.series_counts([p.metric])
    # hourly energy mean over each area's sensors
    by_area: dict[str, dict[int, list[float]]] = {}
    sensors: dict[str, set[int]] = {}
    n_readings: dict[str, int] = {}
    for r in rows:
        if not r["energy"] or r["energy"] <= 0:
            continue
        dev = devices.get(r["device_key"])
        area = (dev.area_id if dev else None) or ""
        by_area.setdefault(area, {}).setdefault(to_us(r["bucket"]), []).append(r["energy"] / r["n"])
        sensors.setdefault(area, set()).add(r["device_key"])
        n_readings[area] = n_readings.get(area, 0) + int(r["n"])
    lengths = np.array(
        [
            p.evening_start_hour - p.day_start_hour,
            p.night_start_hour - p.evening_start_hour,
            24 - p.night_start_hour + p.day_start_hour,
        ],
        dtype=np.float64,
    )
    results: list[KpiResult] = []
    levels: dict[str, float] = {}
    area_cov: dict[str, tuple[float, float]] = {}
    for area, hours_map in sorted(by_area.items()):
        if not area:
            continue
        t = np.array(sorted(hours_map), dtype=np.int64)
        leq = np.array([10 * math.log10(sum(hours_map[int(x)]) / len(hours_map[int(x)])) for x in t])
        res = lden_from_hourly_leq(
            t,
            leq,
            period.tz,
            day_start_hour=p.day_start_hour,
            evening_start_hour=p.evening_start_hour,
            night_start_hour=p.night_start_hour,
            evening_penalty_db=p.evening_penalty_db,
            night_penalty_db=p.night_penalty_db,
        )
        ld = _energy_mean(res.lday, res.hours_day.astype(np.float64))
        le = _energy_mean(res.levening, res.hours_evening.astype(np.float64))
        ln = _energy_mean(res.lnight, res.hours_night.astype(np.float64))
        cov = _coverage(data, [counts[(dk, p.metric)] for dk in sensors[area] if (dk, p.metric) in counts])
        area_cov[area] = cov
        pop = ctx.registry.areas[area].population if area in ctx.registry.areas else None
        details: dict[str, Any] = {
            "lday": ld,
            "levening": le,
            "lnight": ln,
            "hours_day": int(res.hours_day.sum()),
            "hours_evening": int(res.hours_evening.sum()),
            "hours_night": int(res.hours_night.sum()),
            "sensors": sorted(devices[dk].device_id for dk in sensors[area] if dk in devices),
            "population": pop,
            "coverage_so_far": cov[1],
        }
        if ld is None or le is None or ln is None:
            missing = [n for n, v in (("day", ld), ("evening", le), ("night", ln)) if v is None]
            results.append(
                KpiResult(
                    component="lden",
                    area_id=area,
                    n_readings=n_readings[area],
                    n_devices=len(sensors[area]),
                    coverage=cov[0],
                    details=details,
                    not_computable=f"no {', '.join(missing)} hours measured yet",
                )
            )
            continue
        pens = np.array([0.0, p.evening_penalty_db, p.night_penalty_db])
        lden = 10 * math.log10(
            float(np.sum(lengths * 10 ** ((np.array([ld, le, ln]) + pens) / 10))) / lengths.sum()
        )
        levels[area] = lden
        results.append(
            KpiResult(
                component="lden",
                area_id=area,
                value=lden,
                n_readings=n_readings[area],
                n_devices=len(sensors[area]),
                coverage=cov[0],
                details=details,
            )
        )
    # headline: share of inhabitants in areas above the threshold
    unassigned = sorted(devices[dk].device_id for dk in sensors.get("", set()) if dk in devices)
    unknown_areas = sorted(a for a in levels if a not in ctx.registry.areas)
    pops = {a: ctx.registry.areas[a].population for a in levels if a in ctx.registry.areas}
    monitored = {a: float(v) for a, v in pops.items() if v is not None and v > 0}
    total, total_source = ctx.registry.population()
    head_details: dict[str, Any] = {
        "threshold_db": p.threshold_db,
        "lden_by_area": levels,
        "unassigned_sensors": unassigned,
        "areas_not_in_registry": unknown_areas,
        "population_source": total_source,
    }
    if not monitored:
        reason = (
            "no area with a noise level has a population in the registry"
            if levels
            else "no area has a complete set of day, evening and night noise levels"
        )
        return [
            *results,
            KpiResult(
                details=head_details,
                not_computable=reason,
                n_devices=sum(len(s) for a, s in sensors.items() if a),
            ),
        ]
    # "> 55 dB" on levels rounded to 1e-9 dB: the energy sums leave float noise (55.00000000000001)
    over = {a for a in monitored if round(levels[a], 9) > p.threshold_db}
    exposed = sum(pop for a, pop in monitored.items() if a in over)
    monitored_pop = sum(monitored.values())
    share = min(1.0, monitored_pop / total) if total else 1.0
    cov_full = _mean([area_cov[a][0] for a in monitored]) or 0.0
    cov_so_far = _mean([area_cov[a][1] for a in monitored]) or 0.0
    head_details |= {
        "population_exposed": exposed,
        "population_monitored": monitored_pop,
        "population_total": total,
        "monitored_share": share,
        "sensor_coverage": cov_full,
        "coverage_so_far": cov_so_far * share,
        "exposed_areas": sorted(over),
    }
    results.append(
        KpiResult(
            value=exposed / monitored_pop * 100.0,
            n_readings=sum(n_readings.get(a, 0) for a in monitored),
            n_devices=sum(len(sensors[a]) for a in monitored),
            coverage=cov_full * share,
            details=head_details,
        )
    )
    return results


# --------------------------------------------------------------------------------------------------
# Water and electricity from cumulative meters
# --------------------------------------------------------------------------------------------------


class MeterParams(_Params):
    metric: str
    total_fact: str | None = None
    exclude_roles: list[str] = []
    litres_per_unit: float = 1.0
    per: str = "day"


@dataclass
class MeteredRate:
    per_day: float  # city-wide rate (canonical unit per day), scaled to the registry total
    metered_per_day: float
    n_meters: int
    n_readings: int
    factor: float
    coverage: float
    coverage_so_far: float
    details: dict[str, Any]
    note: str | None = None


async def _metered_rate(
    ctx: FormulaContext,
    metric: str,
    total_fact: str | None,
    keep: Callable[[DeviceInfo | None], bool],
) -> MeteredRate | str:
    """Summed daily rates of the kept meters; steps rejected as implausible lower the coverage by
    the share of metered time they exclude, and the label says so."""
    data = ctx.data
    devices = await data.devices()
    usage = await data.meter_usage(metric)
    usage = {dk: u for dk, u in usage.items() if keep(devices.get(dk))}
    rates = {dk: u.per_day for dk, u in usage.items() if u.per_day is not None}
    if not rates:
        return f"no meter with two or more {metric} readings in the period"
    counts = await data.series_counts([metric])
    cov, cov_so_far = _coverage(data, [counts[(dk, metric)] for dk in rates if (dk, metric) in counts])
    covered = sum(u.covered_s for u in usage.values())
    excluded = sum(u.excluded_s for u in usage.values())
    rejected = sum(u.rejected for u in usage.values())
    kept_share = covered / (covered + excluded) if covered + excluded > 0 else 1.0
    cov, cov_so_far = cov * kept_share, cov_so_far * kept_share
    metered = float(sum(r for r in rates.values() if r is not None))
    total = ctx.registry.facts.get(total_fact) if total_fact else None
    n = len(rates)
    details: dict[str, Any] = {
        "meters_reporting": n,
        "metered_per_day": metered,
        "resets_handled": sum(u.resets for u in usage.values()),
        "rollovers_handled": sum(u.rollovers for u in usage.values()),
        "noise_steps": sum(u.noise for u in usage.values()),
        "rejected_steps": rejected,
        "excluded_hours": excluded / 3600.0,
        "excluded_share": 1.0 - kept_share,
    }
    notes = []
    if rejected:
        notes.append(
            f"{rejected} implausible meter step{'s' if rejected > 1 else ''} excluded"
            f" ({(1.0 - kept_share) * 100:.1f} % of metered time)"
        )
    factor, share = 1.0, 1.0
    if total_fact:
        details["registry_total"] = total
        details["registry_total_fact"] = total_fact
        if total is None:
            details["extrapolation"] = f"none: registry fact {total_fact!r} missing"
        elif total < n:
            details["warning"] = (
                f"{n} meters reported but the registry lists {total:g}: registry out of date?"
            )
        else:
            factor, share = total / n, n / total
            details["extrapolation"] = f"x {factor:.4g} (reporting meters scaled to the registry total)"
            if factor > 1:
                notes.append(f"extrapolated from {n} of {total:g} meters")
    details["meters_share"] = share
    return MeteredRate(
        metered * factor,
        metered,
        n,
        sum(usage[dk].n for dk in rates),
        factor,
        cov,
        cov_so_far,
        details,
        "; ".join(notes) or None,
    )


def _population(ctx: FormulaContext, details: dict[str, Any]) -> float | None:
    pop, source = ctx.registry.population()
    details["population"], details["population_source"] = pop, source
    return pop if pop else None


def _days_in_year(year: int) -> int:
    return (date(year + 1, 1, 1) - date(year, 1, 1)).days


async def _per_inhabitant(ctx: FormulaContext) -> list[KpiResult]:
    p: MeterParams = ctx.params(MeterParams)
    rate = await _metered_rate(
        ctx,
        p.metric,
        p.total_fact,
        lambda d: d is None or d.role not in p.exclude_roles,
    )
    if isinstance(rate, str):
        return [KpiResult(not_computable=rate)]
    details = dict(rate.details)
    pop = _population(ctx, details)
    details["coverage_so_far"] = rate.coverage_so_far
    details["period_elapsed"] = ctx.period.elapsed_fraction(ctx.data.now)
    if pop is None:
        return [
            KpiResult(
                n_readings=rate.n_readings,
                n_devices=rate.n_meters,
                coverage=rate.coverage,
                details=details,
                not_computable="no population in the registry",
            )
        ]
    if p.per == "year":
        days = _days_in_year(ctx.period.start.year)
        value = rate.per_day * days * p.litres_per_unit / pop
        details["annualised"] = f"daily rate x {days} days"
    else:
        value = rate.per_day * p.litres_per_unit / pop
    details["city_per_day"] = rate.per_day
    return [
        KpiResult(
            value=value,
            n_readings=rate.n_readings,
            n_devices=rate.n_meters,
            coverage=rate.coverage,
            details=details,
            label_note=rate.note,
        )
    ]


@formula("water_consumption")
async def water_consumption(ctx: FormulaContext) -> list[KpiResult]:
    """Litres per inhabitant per day from cumulative water meters."""
    return await _per_inhabitant(ctx)


@formula("electricity_consumption")
async def electricity_consumption(ctx: FormulaContext) -> list[KpiResult]:
    """kWh per inhabitant per year (annualised rate) from cumulative electricity meters."""
    return await _per_inhabitant(ctx)


class LossParams(_Params):
    metric: str = "water_volume_total"
    total_fact: str | None = None
    inflow_role: str = "district_inflow"


@formula("water_supply_loss")
async def water_supply_loss(ctx: FormulaContext) -> list[KpiResult]:
    """(district inflow - customer consumption) / inflow x 100, from daily rates."""
    p: LossParams = ctx.params(LossParams)
    devices = await ctx.data.devices()
    if not any(d.role == p.inflow_role for d in devices.values()):
        return [
            KpiResult(
                not_computable=f"no district inflow meters (devices.metadata.role = {p.inflow_role!r})",
                details={"inflow_role": p.inflow_role},
            )
        ]
    inflow = await _metered_rate(ctx, p.metric, None, lambda d: d is not None and d.role == p.inflow_role)
    customers = await _metered_rate(
        ctx, p.metric, p.total_fact, lambda d: d is None or d.role != p.inflow_role
    )
    if isinstance(inflow, str):
        return [KpiResult(not_computable=f"district inflow meters: {inflow}")]
    if isinstance(customers, str):
        return [KpiResult(not_computable=f"customer meters: {customers}")]
    if inflow.per_day <= 0:
        return [KpiResult(not_computable="district inflow is zero in the period")]
    details = {
        "inflow_per_day": inflow.per_day,
        "consumption_per_day": customers.per_day,
        "inflow_meters": inflow.n_meters,
        "customer": customers.details,
        "coverage_so_far": min(inflow.coverage_so_far, customers.coverage_so_far),
    }
    loss = (inflow.per_day - customers.per_day) / inflow.per_day * 100.0
    return [
        KpiResult(
            value=loss,
            n_readings=inflow.n_readings + customers.n_readings,
            n_devices=inflow.n_meters + customers.n_meters,
            coverage=min(inflow.coverage, customers.coverage),
            details=details,
            valid=False if loss < 0 else None,
            label_note=customers.note,
        )
    ]


# --------------------------------------------------------------------------------------------------
# Coverage ("% monitored by ICT") KPIs
# --------------------------------------------------------------------------------------------------


class ShareParams(_Params):
    metrics: list[str] = []
    total_fact: str
    roles: list[str] = []
    exclude_roles: list[str] = []
    device_kinds: list[str] = []
    weight_key: str | None = None
    segment_key: str | None = None
    # "installed": also the registry's devices of `installed_kinds` installed by the period's end
    # (U4SSC counts smart meters installed, not those that happened to report)
    count: Literal["reporting", "installed"] = "reporting"
    installed_kinds: list[str] = []


def _installed(d: DeviceInfo, kinds: list[str], last_day: date) -> bool:
    return (
        d.registered_by == "registry"
        and d.kind in kinds
        and (d.installed_on is None or d.installed_on <= last_day)
    )


@formula("ict_share")
async def ict_share(ctx: FormulaContext) -> list[KpiResult]:
    """Reporting (or installed) devices, or the km they cover, / registry total x 100.

    A device counts when it has readings of one of `metrics` (any metric if empty) in the period,
    or with `count = "installed"` when the registry lists it as installed, and it passes the
    role/kind filters; with `weight_key` it contributes that metadata number (km), with
    `segment_key` devices sharing a segment count once (the largest weight).
    """
    p: ShareParams = ctx.params(ShareParams)
    devices = await ctx.data.devices()
    reporting = await ctx.data.reporting(p.metrics)
    candidates = dict.fromkeys(reporting)
    if p.count == "installed":
        last_day = ctx.period.days()[-1]
        candidates |= dict.fromkeys(
            dk for dk, d in devices.items() if _installed(d, p.installed_kinds, last_day)
        )
    chosen: list[DeviceInfo] = []
    for dk in candidates:
        d = devices.get(dk)
        if d is None:
            continue
        if p.roles and d.role not in p.roles:
            continue
        if d.role in p.exclude_roles:
            continue
        if p.device_kinds and d.kind not in p.device_kinds:
            continue
        chosen.append(d)
    segments: dict[str, float] = {}
    unweighted: list[str] = []
    for d in chosen:
        seg = str(d.metadata.get(p.segment_key, d.device_id)) if p.segment_key else d.device_id
        seg = seg or d.device_id
        if p.weight_key:
            w = d.number(p.weight_key)
            if w is None:
                unweighted.append(d.device_id)
                continue
        else:
            w = 1.0
        segments[seg] = max(segments.get(seg, 0.0), w)
    numerator = float(sum(segments.values()))
    total = ctx.registry.facts.get(p.total_fact)
    details: dict[str, Any] = {
        "numerator": numerator,
        "numerator_unit": p.weight_key or "devices",
        "registry_total": total,
        "registry_total_fact": p.total_fact,
        "counted": p.count,
        "reporting_devices": sorted(d.device_id for d in chosen if d.device_key in reporting)[:500],
        "segments": len(segments),
    }
    if unweighted:
        details["devices_without_" + (p.weight_key or "weight")] = sorted(unweighted)[:500]
    n_readings = sum(reporting.get(d.device_key, 0) for d in chosen)
    if not total:
        return [
            KpiResult(
                n_devices=len(chosen),
                n_readings=n_readings,
                details=details,
                basis="registry",
                not_computable=f"registry fact {p.total_fact!r} missing or zero",
            )
        ]
    value = numerator / total * 100.0
    valid = None
    if value > 100.0 + 1e-9:
        details["warning"] = f"more reporting than the registry total ({p.total_fact}): registry out of date?"
        valid = False
    return [
        KpiResult(
            value=value,
            n_devices=len(chosen),
            n_readings=n_readings,
            details=details,
            basis="registry",
            valid=valid,
        )
    ]


# --------------------------------------------------------------------------------------------------
# Travel time index
# --------------------------------------------------------------------------------------------------


class TtiParams(_Params):
    speed_metric: str = "vehicle_speed"
    count_metric: str = "vehicle_count"
    peak_hours: list[int] = [7, 8, 17, 18]
    night_hours: list[int] = [22, 23, 0, 1, 2, 3, 4]
    weekdays_only: bool = True
    free_flow_fact: str | None = "free_flow_speed_kmh"


@formula("travel_time_index")
async def travel_time_index_kpi(ctx: FormulaContext) -> list[KpiResult]:
    """Peak-hour travel time / free-flow travel time (U4SSC), summed over the monitored segments.

    A sensor's peak travel time over its segment is the count-weighted mean of L / v over its peak
    hours, i.e. L / (harmonic mean speed); free flow is L / free-flow speed. The city's index is
    Σ peak travel times / Σ free-flow travel times, segments weighted by `street_km` (1 km if unset).
    """
    p: TtiParams = ctx.params(TtiParams)
    data = ctx.data
    rows = await data.hourly([p.speed_metric, p.count_metric])
    devices = await data.devices()
    speed: dict[tuple[int, int], float] = {}
    flow: dict[tuple[int, int], float] = {}
    n_speed: dict[int, int] = {}
    for r in rows:
        key = (r["device_key"], to_us(r["bucket"]))
        if r["metric"] == p.speed_metric:
            speed[key] = float(r["mean"])
            n_speed[r["device_key"]] = n_speed.get(r["device_key"], 0) + int(r["n"])
        else:
            flow[key] = float(r["mean"]) * int(r["n"])
    if not speed:
        return [KpiResult(not_computable=f"no {p.speed_metric} readings in the period")]
    sensors = sorted(n_speed)
    idx = {dk: i for i, dk in enumerate(sensors)}
    keys = list(speed)
    g = np.array([idx[k[0]] for k in keys], dtype=np.int64)
    t = np.array([k[1] for k in keys], dtype=np.int64)
    sp = np.array([speed[k] for k in keys])
    cnt = np.array([flow.get(k, np.nan) for k in keys])
    for i in range(len(sensors)):  # hours without a count weigh as the sensor's median hour (1 if none)
        mine = g == i
        fill = np.nanmedian(cnt[mine]) if np.isfinite(cnt[mine]).any() else 1.0
        cnt[mine & ~np.isfinite(cnt)] = fill
    _, hour, wday = _local_times(t, ctx.period.tz)
    night = np.isin(hour, p.night_hours)
    peak = np.isin(hour, p.peak_hours) & ((wday < 5) if p.weekdays_only else True)
    night_agg = traffic_hourly(g[night], cnt[night], sp[night], len(sensors))
    peak_agg = traffic_hourly(g[peak], cnt[peak], sp[peak], len(sensors))
    fact_ff = ctx.registry.facts.get(p.free_flow_fact) if p.free_flow_fact else None
    per_sensor = []
    ttis = []
    peak_time_h = free_time_h = 0.0
    for i, dk in enumerate(sensors):
        dev = devices.get(dk)
        ff, source = (dev.number("free_flow_kmh") if dev else None), "devices.metadata.free_flow_kmh"
        if ff is None and math.isfinite(night_agg.p85_speed[i]):
            ff, source = float(night_agg.p85_speed[i]), "p85 of night-time hourly speeds"
        if ff is None and fact_ff:
            ff, source = fact_ff, f"city fact {p.free_flow_fact}"
        peak_speed = _finite(float(peak_agg.harmonic_speed[i]))
        length = (dev.number("street_km") if dev else None) or 1.0
        tti = None
        if ff is not None and peak_speed is not None:
            tti = _finite(float(travel_time_index(peak_speed, ff)))
        if tti is not None and ff is not None and peak_speed is not None:
            ttis.append(tti)
            peak_time_h += length / peak_speed
            free_time_h += length / ff
        per_sensor.append(
            {
                "device_id": dev.device_id if dev else str(dk),
                "segment_km": length,
                "free_flow_kmh": ff,
                "free_flow_source": source if ff is not None else None,
                "peak_speed_kmh": peak_speed,
                "peak_speed_mean": "harmonic (mean travel time)",
                "tti": tti,
            }
        )
    counts = await data.series_counts([p.speed_metric])
    cov, cov_so_far = _coverage(
        data, [counts[(dk, p.speed_metric)] for dk in sensors if (dk, p.speed_metric) in counts]
    )
    details: dict[str, Any] = {
        "sensors": per_sensor,
        "peak_hours": p.peak_hours,
        "night_hours": p.night_hours,
        "weekdays_only": p.weekdays_only,
        "coverage_so_far": cov_so_far,
        "period_elapsed": ctx.period.elapsed_fraction(data.now),
    }
    n_readings = sum(n_speed.values())
    if not ttis:
        missing = "peak-hour speeds" if not np.any(peak) else "a free-flow speed (night data or registry)"
        return [
            KpiResult(
                n_readings=n_readings,
                n_devices=len(sensors),
                coverage=cov,
                details=details,
                not_computable=f"no sensor has both {missing}",
            )
        ]
    details["peak_travel_time_h"], details["free_flow_travel_time_h"] = peak_time_h, free_time_h
    return [
        KpiResult(
            value=peak_time_h / free_time_h,
            n_readings=n_readings,
            n_devices=len(ttis),
            coverage=cov,
            details=details,
        )
    ]


__all__ = ["FORMULAS", "HOUR", "FormulaContext", "formula"]
