"""The air-quality dashboard: pollutants, European AQI bands, WHO exceedances."""

from __future__ import annotations

from grafana_generator.model import AQI_MAPPINGS, POLLUTANT_LABELS, POLLUTANTS, Dashboard, Panel
from grafana_generator.queries import (
    AIR,
    DEVICE_FILTER,
    ROLLUP_1H,
    air_exceedances,
    air_hourly_cte,
    eu_aqi_cte,
    hourly_series,
    kpi_latest,
    kpi_stat,
    kpi_table,
    lit,
    metric_in,
    num,
    values_table,
    who_24h,
)


def air() -> Dashboard:
    city_means = (
        'SELECT $__timeGroupAlias(h.bucket, $__interval), h.pollutant AS metric, avg(h.mean) AS "µg/m³"\n'
        "FROM (\n"
        "  SELECT r.bucket, m.name AS pollutant, r.sum / r.n AS mean\n"
        f"  {ROLLUP_1H.replace(chr(10), chr(10) + '  ')}\n"
        f"  WHERE {metric_in(POLLUTANTS)}\n"
        f"    AND {DEVICE_FILTER.replace(chr(10), chr(10) + '  ')}\n"
        ") h\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 1, 2"
    )
    station_panels = [
        Panel(
            "timeseries",
            f"{POLLUTANT_LABELS[p]} by station (hourly mean)",
            hourly_series('sum(r.sum) / sum(r.n) AS "µg/m³"', [p], "d.device_id"),
            w=12,
            h=8,
            unit="conµgm3",
            interval="1h",
            thresholds=[{"color": "green", "value": None}, {"color": "red", "value": who_24h()[p]}]
            if p in who_24h()
            else None,
            options={},
        )
        for p in ("pm25", "pm10", "no2", "o3")
    ]
    aqi_city = (
        eu_aqi_cte()
        + 'SELECT $__timeGroupAlias(bucket, $__interval), device_id AS metric, max(band) AS "band"\n'
        "FROM b\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 1, 2"
    )
    aqi_now = (
        eu_aqi_cte() + 'SELECT max(band) AS "European AQI"\n'
        "FROM b\n"
        "WHERE bucket = (SELECT max(bucket) FROM b)"
    )
    aqi_by_station = (
        eu_aqi_cte() + 'SELECT device_id AS "station", band AS "European AQI"\n'
        "FROM b\n"
        "WHERE bucket = (SELECT max(bucket) FROM b)\n"
        "ORDER BY 1"
    )
    guidelines = values_table("g", "pollutant, lim", [(lit(p), num(v)) for p, v in who_24h().items()])
    daily_vs_who = (
        air_hourly_cte()
        + 'SELECT (dl.day::timestamp AT TIME ZONE dl.timezone) AS "time", dl.pollutant AS metric,\n'
        '  100 * avg(dl.mean) / g.lim AS "% of WHO 24-h guideline"\n'
        "FROM daily dl\n"
        f"JOIN {guidelines} ON g.pollutant = dl.pollutant\n"
        "GROUP BY 1, 2, g.lim\n"
        "ORDER BY 1, 2"
    )
    daily_table = (
        air_hourly_cte() + 'SELECT dl.day AS "day", dl.pollutant AS "pollutant",\n'
        '  avg(dl.mean) AS "city mean µg/m³", max(dl.mean) AS "worst station µg/m³",\n'
        '  g.lim AS "WHO 24-h guideline", 100 * avg(dl.mean) / g.lim AS "% of guideline",\n'
        '  min(dl.hours) AS "min hours"\n'
        "FROM daily dl\n"
        f"JOIN {guidelines} ON g.pollutant = dl.pollutant\n"
        "GROUP BY 1, 2, g.lim\n"
        "ORDER BY 1 DESC, 2"
    )
    exceedances = air_exceedances()
    who_days = (
        f"WITH latest AS (\n{kpi_latest([AIR.code])}\n)\n"
        "SELECT s.e->>'device_id' || ' · ' || k.component AS \"station · pollutant\",\n"
        "  (s.e->>'who_exceedance_days')::int AS \"days above\"\n"
        "FROM latest k\n"
        "CROSS JOIN LATERAL jsonb_array_elements(k.details->'stations') AS s(e)\n"
        "WHERE k.component IN (" + ", ".join(lit(p) for p in who_24h()) + ")\n"
        "ORDER BY 1"
    )
    return Dashboard(
        uid="citykpi-air",
        title="citykpi · Air quality",
        description="Pollutant series per station and city, European AQI, daily means against the WHO 2021 "
        "guidelines and WHO/EU exceedances, from rollup_1h; the air pollution KPI from kpi_values.",
        time_from="now-7d",
        period=True,
        tags=("air",),
        panels=[
            Panel(
                "stat",
                "European AQI, worst station (latest hour)",
                aqi_now,
                fmt="table",
                w=6,
                h=6,
                mappings=AQI_MAPPINGS,
                thresholds=[{"color": "text", "value": None}],
                description="Worst pollutant band of the worst station in the newest hour of the range "
                "that has one. NO2/O3/SO2 hourly means, PM2.5/PM10 24-h running means (18 of 24 hours), "
                "banded by processors.kernels.european_aqi_band and stored by the KPI refresh "
                "(eu_aqi_hourly): as new as the last refresh.",
            ),
            Panel(
                "bargauge",
                "European AQI by station (latest hour)",
                aqi_by_station,
                fmt="table",
                w=6,
                h=6,
                min=0,
                max=5,
                mappings=AQI_MAPPINGS,
                thresholds=[
                    {"color": "green", "value": None},
                    {"color": "yellow", "value": 3},
                    {"color": "orange", "value": 4},
                    {"color": "red", "value": 5},
                ],
            ),
            kpi_stat(
                "US EPA AQI, worst day ($period KPI)",
                AIR.code,
                "aqi_epa",
                "EPA AQI",
                w=6,
                h=6,
                decimals=0,
                thresholds=[
                    {"color": "green", "value": None},
                    {"color": "yellow", "value": 51},
                    {"color": "orange", "value": 101},
                    {"color": "red", "value": 151},
                    {"color": "purple", "value": 201},
                    {"color": "dark-red", "value": 301},
                ],
            ),
            kpi_stat(
                "European AQI, worst day ($period KPI)",
                AIR.code,
                "aqi_eu",
                "European AQI",
                w=6,
                h=6,
                mappings=AQI_MAPPINGS,
                thresholds=[{"color": "text", "value": None}],
            ),
            Panel(
                "timeseries",
                "European AQI band per station (hourly)",
                aqi_city,
                w=24,
                h=8,
                interval="1h",
                min=0,
                max=5,
                mappings=AQI_MAPPINGS,
                options={"tooltip": {"mode": "multi", "sort": "desc"}},
            ),
            Panel(
                "timeseries",
                "City mean by pollutant (mean of station hourly means)",
                city_means,
                w=24,
                h=8,
                unit="conµgm3",
                interval="1h",
            ),
            *station_panels,
            Panel(
                "timeseries",
                "Daily city mean as % of the WHO 2021 24-h guideline",
                daily_vs_who,
                w=12,
                h=8,
                unit="percent",
                interval="1d",
                thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 100}],
                options={},
                overrides=[],
                description="Local days in the city's time zone; a day of the range's edges may be partial "
                "(see 'min hours' in the table).",
            ),
            Panel(
                "table",
                "Daily means vs WHO 2021 24-h guidelines",
                daily_table,
                fmt="table",
                w=12,
                h=8,
                decimals=1,
            ),
            Panel(
                "table",
                "Exceedances in the $period: WHO 2021 guidelines and EU limit values",
                exceedances,
                fmt="table",
                w=16,
                h=10,
                description="As the air pollution KPI counted them (kpi_values details, "
                "kpi_rollups/formulas/air.py): valid days only (75 % of the day's hours), 8-h means of "
                ">= 6 hours. 'Allowed per year' is the EU number of permitted exceedances.",
            ),
            Panel(
                "bargauge",
                "Days above the WHO 24-h guideline ($period)",
                who_days,
                fmt="table",
                w=8,
                h=10,
                min=0,
                thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}],
            ),
            Panel(
                "table",
                f"Air pollution KPI {AIR.code} ($period)",
                kpi_table([AIR.code]),
                fmt="table",
                w=24,
                h=8,
            ),
        ],
    )
