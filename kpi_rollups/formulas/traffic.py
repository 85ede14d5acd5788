"""Travel time index: peak travel time over free-flow travel time."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field

from kpi_rollups.city_rollups import local_times
from kpi_rollups.formulas._base import FormulaContext, _coverage, _finite, _Params, formula
from kpi_rollups.values import KpiResult
from processors.kernels import (
    traffic_hourly,
    travel_time_index,
)


class TtiParams(_Params):
    speed_metric: str = "vehicle_speed"
    count_metric: str = "vehicle_count"
    peak_hours: list[int] = Field(default_factory=lambda: [7, 8, 17, 18])
    night_hours: list[int] = Field(default_factory=lambda: [22, 23, 0, 1, 2, 3, 4])
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
    hours = await data.hourly([p.speed_metric, p.count_metric])
    devices = await data.devices()
    speed_rows: dict[int, slice] = {}
    count_rows: dict[int, slice] = {}
    for dk, metric, rows in hours.series():
        (speed_rows if metric == p.speed_metric else count_rows)[dk] = rows
    if not speed_rows:
        return [KpiResult(not_computable=f"no {p.speed_metric} readings in the period")]
    sensors = sorted(speed_rows)
    n_speed = {dk: int(hours.n[speed_rows[dk]].sum()) for dk in sensors}
    g_parts, t_parts, sp_parts, cnt_parts = [], [], [], []
    for i, dk in enumerate(sensors):
        t_i = hours.bucket_us[speed_rows[dk]]
        cnt_i = np.full(t_i.shape[0], np.nan)  # vehicles in the hour: mean x readings of its count
        if dk in count_rows:
            rows = count_rows[dk]
            at = np.searchsorted(t_i, hours.bucket_us[rows])
            hit = at < t_i.shape[0]
            hit[hit] = t_i[at[hit]] == hours.bucket_us[rows][hit]
            cnt_i[at[hit]] = (hours.mean[rows] * hours.n[rows])[hit]
        # hours without a count weigh as the sensor's median hour (1 if none)
        cnt_i[~np.isfinite(cnt_i)] = np.nanmedian(cnt_i) if np.isfinite(cnt_i).any() else 1.0
        g_parts.append(np.full(t_i.shape[0], i, dtype=np.int64))
        t_parts.append(t_i)
        sp_parts.append(hours.mean[speed_rows[dk]])
        cnt_parts.append(cnt_i)
    g, t = np.concatenate(g_parts), np.concatenate(t_parts)
    sp, cnt = np.concatenate(sp_parts), np.concatenate(cnt_parts)
    _, hour, wday = local_times(t, ctx.period.tz)
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
