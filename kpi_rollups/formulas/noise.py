"""Noise exposure (U4SSC EN:EN:NO:1A): energy means, Lden and night levels per area."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from kpi_rollups.formulas._base import FormulaContext, _coverage, _mean, _Params, formula
from kpi_rollups.values import KpiResult
from processors.kernels import (
    lden_from_hourly_leq,
)


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
    hours = await data.hourly([p.metric])
    devices = await data.devices()
    counts = await data.series_counts([p.metric])
    # hourly energy mean over each area's sensors: per area, its sensors' rows
    rows_of: dict[str, list[slice]] = {}
    for dk, _, rows in hours.series():
        dev = devices.get(dk)
        rows_of.setdefault((dev.area_id if dev else None) or "", []).append(rows)
    by_area: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]] = {}
    sensors: dict[str, set[int]] = {}
    n_readings: dict[str, int] = {}
    for area, slices in rows_of.items():
        idx = np.concatenate([np.arange(s.start, s.stop) for s in slices])
        idx = idx[hours.energy[idx] > 0]
        if not idx.size:
            continue
        t, inverse = np.unique(hours.bucket_us[idx], return_inverse=True)
        inverse = inverse.reshape(-1)
        energy_sum = np.bincount(inverse, weights=hours.energy[idx] / hours.n[idx], minlength=t.size)
        by_area[area] = (
            t,
            np.array(
                [
                    10 * math.log10(e / k)
                    for e, k in zip(energy_sum.tolist(), np.bincount(inverse).tolist(), strict=True)
                ]
            ),
        )
        sensors[area] = set(hours.device_key[idx].tolist())
        n_readings[area] = int(hours.n[idx].sum())
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
    for area, (t, area_leq) in sorted(by_area.items()):
        if not area:
            continue
        res = lden_from_hourly_leq(
            t,
            area_leq,
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


# Water and electricity from cumulative meters
