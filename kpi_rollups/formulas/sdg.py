"""SDG indicators computed from a KPI's own inputs: SDG 11.6.2 from the air KPI's PM2.5 stations.

SDG 11.6.2 (UN metadata, custodian WHO): annual mean level of fine particulate matter (PM2.5) in
cities, population-weighted. citykpi computes it at city level from the registry's areas:
- a station counts when its data capture of the elapsed period is at least the validity threshold
  (75 % by default, the WHO ambient air quality database's completeness criterion) of the
  best-covered station's, so a sensor that reported a few hours does not stand for its area while
  a period in progress still gets a (not yet valid) value;
- an area's level is the mean of its counted stations' means (each the mean of its hourly means);
- the city's level is the mean of the area levels weighted by the areas' populations;
- its coverage is the share of the registered areas' population living in an area with a counted
  station, times the mean whole-period capture of those stations; the value is valid when that
  reaches the threshold (the refresh applies it, as for every KPI value).
Stations without an area, areas without a population and stations below the capture rule are
listed in the details, never silently averaged in.
"""

from __future__ import annotations

from typing import Any

from kpi_rollups.formulas._base import FormulaContext
from kpi_rollups.values import KpiResult

SDG_11_6_2 = "sdg_11_6_2"


def pm25_population_weighted(ctx: FormulaContext, stations: list[dict[str, Any]]) -> KpiResult:
    """SDG 11.6.2 from the PM2.5 station rows of the air KPI (device_id, area_id, mean, readings,
    coverage, coverage_so_far); see the module docstring for the rule."""
    threshold = ctx.threshold
    best = max((s["coverage_so_far"] for s in stations), default=0.0)
    counted = [s for s in stations if s["coverage_so_far"] > 0 and s["coverage_so_far"] >= threshold * best]
    below = sorted(s["device_id"] for s in stations if s not in counted)
    areas = ctx.registry.areas
    pops = {a: float(info.population) for a, info in areas.items() if info.population}
    by_area: dict[str, list[dict[str, Any]]] = {}
    for s in counted:
        by_area.setdefault(s["area_id"] or "", []).append(s)
    levels = {a: sum(s["mean"] for s in rows) / len(rows) for a, rows in sorted(by_area.items()) if a in pops}
    used = [s for a in levels for s in by_area[a]]
    details: dict[str, Any] = {
        "indicator": "SDG 11.6.2: annual mean PM2.5 in cities, population-weighted (UN metadata, WHO)",
        "station_rule": f"capture of the elapsed period >= {threshold:g} x the best station's ({best:.3g})",
        "stations_below_capture_rule": below,
        "stations_without_area": sorted(s["device_id"] for s in counted if not s["area_id"]),
        "areas_without_population": sorted(a for a in by_area if a and a not in pops),
        "pm25_by_area": levels,
        "population_by_area": {a: pops[a] for a in levels},
    }
    if not levels:
        return KpiResult(
            component=SDG_11_6_2,
            details=details,
            n_devices=len(counted),
            not_computable="no PM2.5 station meeting the capture rule in an area with a population",
        )
    monitored = sum(pops[a] for a in levels)
    total = sum(pops.values())
    capture = sum(s["coverage"] for s in used) / len(used)
    capture_so_far = sum(s["coverage_so_far"] for s in used) / len(used)
    details |= {
        "population_monitored": monitored,
        "population_of_areas": total,
        "monitored_share": monitored / total,
        "coverage_so_far": monitored / total * capture_so_far,
    }
    return KpiResult(
        component=SDG_11_6_2,
        value=sum(pops[a] * v for a, v in levels.items()) / monitored,
        n_readings=sum(int(s["readings"]) for s in used),
        n_devices=len(used),
        coverage=monitored / total * capture,
        details=details,
    )
