"""The noise dashboard: levels, Lden and night levels against targets."""

from __future__ import annotations

from typing import Any

from grafana_generator.model import Dashboard, Panel
from grafana_generator.queries import (
    AREA,
    DEVICE_FILTER,
    KPI_AREA_FILTER,
    NOISE,
    PERIOD_END,
    ROLLUP_1H,
    component_target,
    hourly_series,
    kpi_stat,
    lit,
)


def noise() -> Dashboard:
    p = NOISE.params
    day, evening, night = p["day_start_hour"], p["evening_start_hour"], p["night_start_hour"]
    lden_target = component_target(NOISE, "lden")
    threshold = float(p["threshold_db"])
    leq_by_area = (
        'SELECT $__timeGroupAlias(h.bucket, $__interval), h.area AS metric, 10 * log(avg(h.e)) AS "Leq dB"\n'
        "FROM (\n"
        f"  SELECT r.bucket, {AREA} AS area, r.energy / r.n AS e\n"
        f"  {ROLLUP_1H.replace(chr(10), chr(10) + '  ')}\n"
        "  WHERE m.name = 'laeq' AND r.energy > 0\n"
        f"    AND {DEVICE_FILTER.replace(chr(10), chr(10) + '  ')}\n"
        ") h\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 1, 2"
    )
    lden_kpi = (
        'SELECT DISTINCT ON (k.area_id) k.area_id AS "area", k.period_start AS "period",\n'
        '  k.value AS "Lden dB", (k.details ->> \'lday\')::float8 AS "Lday dB",\n'
        "  (k.details ->> 'levening')::float8 AS \"Levening dB\",\n"
        "  (k.details ->> 'lnight')::float8 AS \"Lnight dB\",\n"
        "  (k.details ->> 'population')::float8 AS \"population\",\n"
        '  k.target AS "target dB", k.band AS "band", 100 * k.coverage AS "coverage %",\n'
        '  k.quality_label AS "data quality"\n'
        "FROM kpi_values k\n"
        f"WHERE k.city_id = ${{city:sqlstring}} AND k.kpi_code = {lit(NOISE.code)}\n"
        "  AND k.component = 'lden'\n"
        f"  AND k.period_kind = ${{period:sqlstring}} AND k.period_start <= {PERIOD_END}\n"
        f"  AND {KPI_AREA_FILTER}\n"
        "ORDER BY k.area_id, k.value IS NULL, k.period_start DESC"
    )
    lden_bars = (
        f"WITH latest AS (\n{lden_kpi}\n)\n"
        'SELECT area AS "area", "Lden dB", "Lnight dB"\n'
        "FROM latest\n"
        "ORDER BY 1"
    )
    db_steps: list[dict[str, Any]] = [
        {"color": "green", "value": None},
        {"color": "orange", "value": lden_target},
        {"color": "red", "value": threshold},
    ]
    return Dashboard(
        uid="citykpi-noise",
        title="citykpi · Noise",
        description="Hourly Leq from rollup_1h energy sums (Leq = 10·log10(mean of 10^(L/10))), and "
        "the noise exposure KPI with its Lday/Levening/Lnight/Lden per area.",
        time_from="now-24h",
        period=True,
        tags=("noise",),
        panels=[
            kpi_stat(
                f"Inhabitants exposed to Lden > {threshold:g} dB ($period KPI)",
                NOISE.code,
                "",
                "exposed %",
                w=6,
                h=8,
                unit="percent",
                decimals=1,
                thresholds=[
                    {"color": "green", "value": None},
                    {"color": "red", "value": component_target(NOISE, "")},
                ],
            ),
            Panel(
                "bargauge",
                f"Lden and Lnight per area ($period KPI, WHO {lden_target:g} dB)",
                lden_bars,
                fmt="table",
                w=18,
                h=8,
                unit="dB",
                min=30,
                max=85,
                thresholds=db_steps,
                options={"displayMode": "lcd"},
            ),
            Panel(
                "timeseries",
                "Hourly Leq by area (energy mean of sensors)",
                leq_by_area,
                w=12,
                h=9,
                unit="dB",
                interval="1h",
                thresholds=db_steps,
            ),
            Panel(
                "timeseries",
                "Hourly Leq by sensor",
                hourly_series(
                    '10 * log(sum(r.energy) / sum(r.n)) AS "Leq dB"',
                    ["laeq"],
                    "d.device_id",
                    extra_where="r.energy > 0",
                ),
                w=12,
                h=9,
                unit="dB",
                interval="1h",
            ),
            Panel(
                "timeseries",
                "Highest LAmax per hour by area",
                hourly_series('max(r.max) AS "LAmax dB"', ["lamax"], AREA),
                w=12,
                h=8,
                unit="dB",
                interval="1h",
            ),
            Panel(
                "table",
                f"Lday ({day:02d}–{evening:02d}), Levening, Lnight ({night:02d}–{day:02d}) and Lden per "
                f"area, KPI {NOISE.code} ($period)",
                lden_kpi,
                fmt="table",
                w=12,
                h=8,
                decimals=1,
                description="As the noise exposure formula computed them (kpi_values): local hours of "
                "the city, evening +5 dB and night +10 dB in Lden.",
            ),
        ],
    )
