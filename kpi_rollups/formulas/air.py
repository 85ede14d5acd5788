"""Air pollution (U4SSC EN:EN:AQ:1C): pollutant means, WHO exceedances, the European and US EPA indices."""

from __future__ import annotations

import math
from datetime import date, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

from kpi_rollups.city_rollups import to_us
from kpi_rollups.eu_aqi import EuAqiHours
from kpi_rollups.formulas._base import (
    FormulaContext,
    _coverage,
    _elapsed_hours_per_day,
    _local_days,
    _Params,
    formula,
)
from kpi_rollups.formulas.sdg import SDG_11_6_2, pm25_population_weighted
from kpi_rollups.values import KpiResult
from processors.kernels import (
    EPA_POLLUTANTS,
    EUROPEAN_AQI_BAND_NAMES,
    EUROPEAN_AQI_POLLUTANTS,
    epa_aqi,
    european_aqi_band,
    exceedance_days,
    rolling_mean_hours,
)


class AirParams(_Params):
    pollutants: list[str]
    epa_extra: list[str] = Field(default_factory=list)
    who_24h: dict[str, float] = Field(default_factory=dict)
    who_o3_8h: float | None = None
    eu_daily: dict[str, float] = Field(default_factory=dict)
    eu_daily_allowed_days: dict[str, int] = Field(default_factory=dict)
    eu_daily_2030: dict[str, float] = Field(default_factory=dict)
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
    stations = np.unique(daily.device_key).tolist()
    n_s, n_d = len(stations), period.n_days
    st_row = np.searchsorted(np.array(stations, dtype=np.int64), daily.device_key)
    day_idx = daily.day_ordinal - period.start.toordinal()
    inside = (day_idx >= 0) & (day_idx < n_d)

    def grid() -> npt.NDArray[np.float64]:
        return np.full((n_s, n_d), np.nan)

    mean = {m: grid() for m in metrics}
    max1h = {m: grid() for m in metrics}
    hours = {m: np.zeros((n_s, n_d)) for m in metrics}
    above = {m: np.zeros((n_s, n_d)) for m in metrics}
    n_read = {m: np.zeros(n_s, dtype=np.int64) for m in metrics}
    for m in metrics:
        sel = inside & (daily.metric == m)
        at = (st_row[sel], day_idx[sel])
        mean[m][at], max1h[m][at] = daily.mean[sel], daily.max_hourly[sel]
        hours[m][at], above[m][at] = daily.hours[sel], daily.hours_above[sel]
        np.add.at(n_read[m], st_row[sel], daily.n[sel])
    s_idx = {dk: i for i, dk in enumerate(stations)}
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
        hours8 = await data.hourly(eight, extend_before=timedelta(hours=7))
        for m in eight:
            max8h[m] = grid()
        for dk, m, rows in hours8.series():
            if dk not in s_idx:
                continue
            t_arr = hours8.bucket_us[rows]
            run = rolling_mean_hours(t_arr, hours8.mean[rows], 8, 6)
            day = _local_days(t_arr, period)
            ok = (day >= 0) & np.isfinite(run)
            row = max8h[m][s_idx[dk]]
            np.fmax.at(row, day[ok], run[ok])
        for m in eight:
            max8h[m] = np.where(valid_day[m], max8h[m], np.nan)

    results: list[KpiResult] = []
    stations_of: dict[str, list[dict[str, Any]]] = {}
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
            dev = devices.get(stations[i])
            capture = data.capture(sc) if sc else (0.0, 0.0)
            entry: dict[str, Any] = {
                "device_id": dev.device_id if dev else str(stations[i]),
                "area_id": dev.area_id if dev else None,
                "mean": st_mean,
                "hours": int(w.sum()),
                "readings": int(n_read[m][i]),
                "coverage": capture[0],
                "coverage_so_far": capture[1],
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
        stations_of[m] = station_rows
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

    if ctx.kpi.has_component(SDG_11_6_2):
        results.append(pm25_population_weighted(ctx, stations_of.get("pm25", [])))
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
    hours = await data.hourly(pollutants, extend_before=timedelta(hours=23))
    start_us, end_us = to_us(data.start), to_us(data.end)
    station_series = []
    readings: dict[int, int] = {}  # per station, its readings inside the period
    for dk, m, rows in hours.series():
        t, v = hours.bucket_us[rows], hours.mean[rows]
        if m in EEA_RUNNING_24H:
            v = rolling_mean_hours(t, v, 24, 18)
        inside = (t >= start_us) & (t < end_us)
        readings[dk] = readings.get(dk, 0) + int(hours.n[rows][t >= start_us].sum())
        station_series.append((dk, m, t[inside], european_aqi_band(m, v[inside])))
    station_hours = EuAqiHours.from_series(data.start, data.end, station_series)
    uniq, idx = np.unique(station_hours.hour_us, return_inverse=True)
    city_hour = np.zeros(uniq.shape[0], dtype=np.int64)
    np.maximum.at(city_hour, idx.reshape(-1), station_hours.band)  # worst pollutant of the worst station
    ok = city_hour > 0
    if not ok.any():
        return KpiResult(
            component="aqi_eu",
            not_computable="no hour with a valid European AQI input yet",
            eu_aqi=station_hours,
        )
    contributing = set(station_hours.device_key.tolist())
    day = _local_days(uniq[ok], period)
    days = period.days()
    daily: dict[str, float] = {}
    for d, b in zip(day.tolist(), city_hour[ok].tolist(), strict=True):
        key = days[d].isoformat()
        daily[key] = max(daily.get(key, 0.0), float(b))
    by_band = {
        EU_BANDS[b]: int(np.count_nonzero(city_hour[ok] == b)) for b in sorted(set(city_hour[ok].tolist()))
    }
    elapsed_h = max(1.0, (period.elapsed_end(data.now) - data.start).total_seconds() / 3600.0)
    return KpiResult(
        component="aqi_eu",
        value=float(city_hour.max()),
        n_readings=sum(n for dk, n in readings.items() if dk in contributing),
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
            "station_hours": "table eu_aqi_hourly",
        },
        eu_aqi=station_hours,
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


# Noise exposure
