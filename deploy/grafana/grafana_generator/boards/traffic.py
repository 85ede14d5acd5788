"""The traffic dashboard: counts, speeds, travel time index, intersections."""

from __future__ import annotations

from typing import Any

from grafana_generator.model import Dashboard, Panel
from grafana_generator.queries import (
    AREA,
    DEVICE_FILTER,
    INTERSECTIONS,
    ROLLUP_1H,
    TRAFFIC_MONITORING,
    TTI,
    component_target,
    hourly_series,
    kpi_latest,
    kpi_stat,
    lit,
    metric_in,
)


def traffic() -> Dashboard:
    tp = TTI.params
    speed, count = tp["speed_metric"], tp["count_metric"]
    mean_speed = (
        "WITH s AS (\n"
        f"  SELECT r.bucket, {AREA} AS area, d.device_id,\n"
        f"    max(r.sum / r.n) FILTER (WHERE m.name = {lit(speed)}) AS speed,\n"
        f"    max(r.sum) FILTER (WHERE m.name = {lit(count)}) AS vehicles\n"
        f"  {ROLLUP_1H.replace(chr(10), chr(10) + '  ')}\n"
        f"  WHERE {metric_in([speed, count])}\n"
        f"    AND {DEVICE_FILTER.replace(chr(10), chr(10) + '  ')}\n"
        "  GROUP BY 1, 2, 3\n"
        ")\n"
        "SELECT $__timeGroupAlias(bucket, $__interval), area AS metric,\n"
        "  coalesce(sum(speed * vehicles) / nullif(sum(vehicles) FILTER (WHERE speed IS NOT NULL), 0),\n"
        '           avg(speed)) AS "km/h"\n'
        "FROM s\n"
        "WHERE speed IS NOT NULL\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 1, 2"
    )
    tti_by_sensor = (
        f"WITH latest AS (\n{kpi_latest([TTI.code])}\n)\n"
        "SELECT s.e->>'device_id' AS \"sensor\", (s.e->>'tti')::float8 AS \"TTI\",\n"
        "  (s.e->>'peak_speed_kmh')::float8 AS \"peak speed km/h\",\n"
        "  (s.e->>'free_flow_kmh')::float8 AS \"free-flow km/h\",\n"
        "  s.e->>'free_flow_source' AS \"free-flow from\", (s.e->>'segment_km')::float8 AS \"km\",\n"
        '  k.period_start AS "period"\n'
        "FROM latest k\n"
        "CROSS JOIN LATERAL jsonb_array_elements(k.details->'sensors') AS s(e)\n"
        "ORDER BY 2 DESC NULLS LAST, 1"
    )
    counters = (
        f'SELECT d.device_id AS "counter", coalesce(d.area_id, \'\') AS "area",\n'
        f'  sum(r.sum) FILTER (WHERE m.name = {lit(count)}) AS "vehicles",\n'
        f"  sum(r.sum) FILTER (WHERE m.name = {lit(count)})\n"
        f'    / nullif(count(*) FILTER (WHERE m.name = {lit(count)}), 0) AS "veh/h (mean)",\n'
        f"  sum(r.sum) FILTER (WHERE m.name = {lit(speed)})\n"
        f'    / nullif(sum(r.n) FILTER (WHERE m.name = {lit(speed)}), 0) AS "mean speed km/h",\n'
        "  sum(r.sum) FILTER (WHERE m.name = 'occupancy')\n"
        "    / nullif(sum(r.n) FILTER (WHERE m.name = 'occupancy'), 0) AS \"mean occupancy\",\n"
        '  max(r.last_time) AS "last reading"\n'
        f"{ROLLUP_1H}\n"
        f"WHERE {metric_in([count, speed, 'occupancy'])}\n"
        f"  AND {DEVICE_FILTER}\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 1"
    )
    pct_steps: list[dict[str, Any]] = [
        {"color": "red", "value": None},
        {"color": "orange", "value": 33},
        {"color": "yellow", "value": 66},
        {"color": "green", "value": 95},
    ]
    tti_target = component_target(TTI, "") or 1.2
    return Dashboard(
        uid="citykpi-traffic",
        title="citykpi · Traffic",
        description="Flow (vehicle_count summed per hour) and count-weighted mean speed from rollup_1h; "
        "the traffic KPIs, the travel time index per sensor included, from kpi_values.",
        time_from="now-24h",
        period=True,
        tags=("traffic",),
        panels=[
            kpi_stat(
                f"Travel time index ($period KPI, peak hours, target {tti_target:g})",
                TTI.code,
                "",
                "TTI",
                w=8,
                h=5,
                decimals=2,
                thresholds=[{"color": "green", "value": None}, {"color": "red", "value": tti_target}],
            ),
            kpi_stat(
                "Major streets monitored ($period KPI)",
                TRAFFIC_MONITORING.code,
                "",
                "%",
                w=8,
                h=5,
                unit="percent",
                decimals=1,
                thresholds=pct_steps,
            ),
            kpi_stat(
                "Adaptive-controlled intersections ($period KPI)",
                INTERSECTIONS.code,
                "",
                "%",
                w=8,
                h=5,
                unit="percent",
                decimals=1,
                thresholds=pct_steps,
            ),
            Panel(
                "timeseries",
                "Traffic flow by area (veh/h)",
                hourly_series('sum(r.sum) / ($__interval_ms / 3600000.0) AS "veh/h"', [count], AREA),
                w=12,
                h=8,
                interval="1h",
            ),
            Panel(
                "timeseries",
                "Traffic flow by counter (veh/h)",
                hourly_series('sum(r.sum) / ($__interval_ms / 3600000.0) AS "veh/h"', [count], "d.device_id"),
                w=12,
                h=8,
                interval="1h",
            ),
            Panel(
                "timeseries",
                "Mean speed by area (count-weighted, km/h)",
                mean_speed,
                w=12,
                h=8,
                unit="velocitykmh",
                interval="1h",
            ),
            Panel(
                "table",
                "Travel time index by sensor ($period KPI, peak hours)",
                tti_by_sensor,
                fmt="table",
                w=12,
                h=8,
                decimals=2,
                description="As the travel time index formula computed it (kpi_values details): peak-hour "
                "harmonic mean speed against the free-flow speed (registry, else the 85th percentile of "
                "night-time hourly speeds, else the city fact).",
            ),
            Panel(
                "timeseries",
                "Detector occupancy by area",
                hourly_series('sum(r.sum) / sum(r.n) AS "occupancy"', ["occupancy"], AREA),
                w=12,
                h=8,
                interval="1h",
            ),
            Panel("table", "Counters in the range", counters, fmt="table", w=12, h=8, decimals=1),
        ],
    )
