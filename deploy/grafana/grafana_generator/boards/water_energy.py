"""The water and energy dashboard: consumption from meters, losses, smart meter shares."""

from __future__ import annotations

from typing import Any

from grafana_generator.model import Dashboard, Panel
from grafana_generator.queries import (
    AREA,
    DEVICE_FILTER,
    ELECTRICITY,
    PERIOD_END,
    ROLLUP_1H,
    SMART_ELECTRICITY,
    SMART_WATER,
    WATER,
    WATER_LOSS,
    component_target,
    hourly_series,
    kpi_stat,
    kpi_table,
    lit,
    values_table,
)


def _consumption(metric: str, series: str) -> str:
    """Consumption per hour as the meter kernels accepted it (rollup meter_consumption: resets,
    rollovers, noise and implausible steps handled by processors.kernels), summed over meters."""
    return hourly_series(
        'sum(r.meter_consumption) / ($__interval_ms / 3600000.0) AS "per hour"', [metric], series
    )


def water_energy() -> Dashboard:
    codes = [
        WATER.code,
        WATER_LOSS.code,
        ELECTRICITY.code,
        SMART_WATER.code,
        SMART_ELECTRICITY.code,
    ]
    meters = values_table(
        "x",
        "label, metric, kinds, fact",
        [
            (
                "'Water meters'",
                "'water_volume_total'",
                "ARRAY['water']",
                lit(SMART_WATER.params["total_fact"]),
            ),
            (
                "'Electricity meters'",
                "'energy_total'",
                "ARRAY['electricity', 'energy']",
                lit(SMART_ELECTRICITY.params["total_fact"]),
            ),
        ],
    )
    coverage = (
        "WITH rep AS (\n"
        "  SELECT m.name AS metric, count(DISTINCT r.device_key) AS n\n"
        f"  {ROLLUP_1H.replace(chr(10), chr(10) + '  ')}\n"
        "  WHERE m.name IN ('water_volume_total', 'energy_total')\n"
        f"    AND {DEVICE_FILTER.replace(chr(10), chr(10) + '  ')}\n"
        "  GROUP BY 1\n"
        ")\n"
        'SELECT x.label AS "meters",\n'
        "  (SELECT count(*) FROM devices d WHERE d.kind = ANY (x.kinds)\n"
        f'     AND {DEVICE_FILTER.replace(chr(10), chr(10) + "     ")}) AS "registered",\n'
        '  coalesce(rep.n, 0) AS "reporting in range", f.value AS "meters in the city (registry)",\n'
        '  100.0 * coalesce(rep.n, 0) / nullif(f.value, 0) AS "reporting share %"\n'
        f"FROM {meters}\n"
        "LEFT JOIN rep ON rep.metric = x.metric\n"
        "LEFT JOIN LATERAL (\n"
        "  SELECT cf.value FROM city_facts cf\n"
        f"  WHERE cf.city_id = ${{city:sqlstring}} AND cf.key = x.fact AND cf.valid_from <= {PERIOD_END}\n"
        "  ORDER BY cf.valid_from DESC LIMIT 1\n"
        ") f ON true\n"
        "ORDER BY 1"
    )
    reporting = hourly_series(
        'count(DISTINCT r.device_key) AS "meters reporting"',
        ["water_volume_total", "energy_total"],
        "CASE m.name WHEN 'water_volume_total' THEN 'water meters' ELSE 'electricity meters' END",
    )
    stat_steps_pct: list[dict[str, Any]] = [
        {"color": "red", "value": None},
        {"color": "orange", "value": 33},
        {"color": "yellow", "value": 66},
        {"color": "green", "value": 95},
    ]
    return Dashboard(
        uid="citykpi-water-energy",
        title="citykpi · Water and energy",
        description="Consumption per inhabitant and smart-meter coverage (KPIs), hourly consumption from the "
        "meters' cumulative indexes in rollup_1h, meter reporting.",
        time_from="now-24h",
        period=True,
        tags=("water", "energy"),
        panels=[
            kpi_stat(
                f"Water consumption ($period KPI, target {component_target(WATER, ''):g})",
                WATER.code,
                "",
                "L/inhabitant/day",
                w=6,
                h=5,
                unit="litre",
                decimals=0,
                thresholds=[
                    {"color": "green", "value": None},
                    {"color": "red", "value": component_target(WATER, "")},
                ],
            ),
            kpi_stat(
                "Electricity consumption ($period KPI, annual rate)",
                ELECTRICITY.code,
                "",
                "kWh/inhabitant/year",
                w=6,
                h=5,
                unit="kwatth",
                decimals=0,
                thresholds=[{"color": "blue", "value": None}],
            ),
            kpi_stat(
                "Smart water meters ($period KPI)",
                SMART_WATER.code,
                "",
                "%",
                w=6,
                h=5,
                unit="percent",
                decimals=1,
                thresholds=stat_steps_pct,
            ),
            kpi_stat(
                "Smart electricity meters ($period KPI)",
                SMART_ELECTRICITY.code,
                "",
                "%",
                w=6,
                h=5,
                unit="percent",
                decimals=1,
                thresholds=stat_steps_pct,
            ),
            Panel(
                "timeseries",
                "Water consumption by area (m³/h, all reporting meters)",
                _consumption("water_volume_total", AREA),
                w=12,
                h=8,
                unit="m3",
                interval="1h",
            ),
            Panel(
                "timeseries",
                "Electricity consumption by area (kWh/h, all reporting meters)",
                _consumption("energy_total", AREA),
                w=12,
                h=8,
                unit="kwatth",
                interval="1h",
            ),
            Panel(
                "timeseries",
                "Meters reporting per hour",
                reporting,
                w=12,
                h=8,
                interval="1h",
            ),
            Panel(
                "table",
                "Meter coverage in the range",
                coverage,
                fmt="table",
                w=12,
                h=8,
                decimals=1,
                description="Registered: devices of the kind in the registry; reporting: with a reading "
                "in the range; share: reporting / the city's meter count (city_facts).",
            ),
            Panel(
                "table",
                "Water and energy KPIs ($period)",
                kpi_table(codes),
                fmt="table",
                w=24,
                h=8,
            ),
        ],
    )
