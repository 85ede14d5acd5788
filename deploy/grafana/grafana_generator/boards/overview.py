"""The overview dashboard: KPI values, scores and data coverage of a city."""

from __future__ import annotations

from grafana_generator.model import ALL, SCORE_STEPS, Dashboard, Panel
from grafana_generator.queries import (
    AREA,
    DEVICE_FILTER,
    KPI_AREA_FILTER,
    PERIOD_END,
    RANGE,
    hourly_series,
    kpi_latest,
    kpi_table,
    sdg_progress,
)

# table cells of the score column: coloured by band
SCORE_CELL = {
    "matcher": {"id": "byName", "options": "score %"},
    "properties": [
        {"id": "thresholds", "value": {"mode": "absolute", "steps": SCORE_STEPS}},
        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
        {"id": "decimals", "value": 0},
    ],
}


def overview() -> Dashboard:
    latest = kpi_latest()
    summary = (
        f"WITH latest AS (\n{latest}\n)\n"
        'SELECT count(*) AS "KPI values",\n'
        '  count(*) FILTER (WHERE valid) AS "valid",\n'
        "  count(*) FILTER (WHERE band LIKE '>%') AS \"at target\",\n"
        '  avg(score) AS "mean score %"\n'
        "FROM latest"
    )
    scores = (
        f"WITH latest AS (\n{latest}\n)\n"
        "SELECT k.kpi_code || CASE WHEN k.component <> '' THEN ' ' || k.component ELSE '' END\n"
        "    || CASE WHEN k.area_id <> '' THEN ' @' || k.area_id ELSE '' END AS \"KPI\",\n"
        '  k.score AS "score %"\n'
        "FROM latest k\n"
        "WHERE k.score IS NOT NULL\n"
        "ORDER BY 1"
    )
    daily = (
        'SELECT (k.period_start::timestamp AT TIME ZONE c.timezone) AS "time",\n'
        "  k.kpi_code || CASE WHEN k.component <> '' THEN ' ' || k.component ELSE '' END\n"
        "    || CASE WHEN k.area_id <> '' THEN ' @' || k.area_id ELSE '' END AS metric,\n"
        '  k.score AS "score %"\n'
        "FROM kpi_values k\n"
        "JOIN cities c ON c.city_id = k.city_id\n"
        "WHERE k.city_id = ${city:sqlstring} AND k.period_kind = 'day' AND $__timeFilter(k.period_start)\n"
        f"  AND k.score IS NOT NULL AND {KPI_AREA_FILTER}\n"
        "ORDER BY 1, 2"
    )
    devices = (
        "SELECT coalesce(d.kind, '(unknown)') AS \"kind\", coalesce(d.area_id, '(no area)') AS \"area\",\n"
        '  count(*) AS "registered",\n'
        '  count(s.device_key) AS "reporting in range",\n'
        '  100.0 * count(s.device_key) / count(*) AS "reporting %",\n'
        '  max(s.last_seen) AS "last reading"\n'
        "FROM devices d\n"
        "LEFT JOIN (\n"
        "  SELECT r.device_key, max(r.last_time) AS last_seen\n"
        f"  FROM rollup_1h{RANGE} r\n"
        "  GROUP BY r.device_key\n"
        ") s ON s.device_key = d.device_key\n"
        f"WHERE {DEVICE_FILTER}\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 1, 2"
    )
    readings = hourly_series(
        'sum(r.n) AS "readings"',
        [],
        "coalesce(d.kind, '(unknown)')",
    )
    areas = (
        'SELECT DISTINCT ON (a.area_id) a.area_id AS "area", a.name AS "name",\n'
        '  a.population AS "population",\n'
        '  a.area_km2 AS "km²", a.population / a.area_km2 AS "inhabitants per km²",\n'
        "  (SELECT count(*) FROM devices d\n"
        '     WHERE d.city_id = a.city_id AND d.area_id = a.area_id) AS "devices",\n'
        '  a.valid_from AS "valid from"\n'
        "FROM areas a\n"
        f"WHERE a.city_id = ${{city:sqlstring}} AND a.valid_from <= {PERIOD_END}\n"
        f"  AND ({ALL} IN (${{area:sqlstring}}) OR a.area_id IN (${{area:sqlstring}}))\n"
        "ORDER BY a.area_id, a.valid_from DESC"
    )
    facts = (
        'SELECT DISTINCT ON (f.key) f.key AS "fact", f.value AS "value", f.unit AS "unit",\n'
        '  f.source AS "source", f.valid_from AS "valid from"\n'
        "FROM city_facts f\n"
        f"WHERE f.city_id = ${{city:sqlstring}} AND f.valid_from <= {PERIOD_END}\n"
        "ORDER BY f.key, f.valid_from DESC"
    )
    alert_rows = (
        "FROM alerts a\n"
        "JOIN devices d ON d.city_id = a.city_id AND d.device_id = a.device_id\n"
        f"WHERE {DEVICE_FILTER}\n"
        "  AND $__timeFilter(a.at)\n"
    )
    alert_events = (
        'SELECT a.at AS "time", a.event AS "event", a.severity AS "severity", a.rule_id AS "rule",\n'
        f'  a.device_id AS "device", {AREA} AS "area", a.metric AS "metric", a.statistic AS "statistic",\n'
        '  a.value AS "value", a.threshold AS "threshold", a.opened_at AS "opened"\n'
        f"{alert_rows}"
        "ORDER BY a.at DESC, a.event\n"
        "LIMIT 500"
    )
    alert_counts = (
        "SELECT $__timeGroupAlias(a.at, $__interval), a.severity || ' ' || a.event AS metric,\n"
        '  count(*) AS "events"\n'
        f"{alert_rows}"
        "GROUP BY 1, 2\n"
        "ORDER BY 1, 2"
    )
    return Dashboard(
        uid="citykpi-overview",
        title="citykpi · City overview",
        description="Every U4SSC KPI of the city: value, target, score band, coverage and data quality.",
        time_from="now-30d",
        period=True,
        tags=("kpi",),
        panels=[
            Panel(
                "stat",
                "KPI summary ($period)",
                summary,
                fmt="table",
                w=24,
                h=4,
                description="Per KPI component: the latest stored period of the chosen kind, up to the end "
                "of the time range, that has a value (else its latest row). 'At target': score band above "
                "the top edge (>95 % by default).",
                decimals=1,
                thresholds=[{"color": "blue", "value": None}],
            ),
            Panel(
                "table",
                "Every KPI: value, target, score band, coverage ($period)",
                kpi_table(),
                fmt="table",
                w=24,
                h=14,
                description="From kpi_values (written by the KPI refresh). Score: % of target achieved, "
                "capped at 100; band: score interval (default edges 33/66/95 %). Coverage: share of "
                "the period's expected readings that arrived. Area '' is the city-wide value.",
                overrides=[
                    SCORE_CELL,
                    {
                        "matcher": {"id": "byName", "options": "coverage %"},
                        "properties": [
                            {"id": "custom.cellOptions", "value": {"type": "gauge", "mode": "basic"}},
                            {"id": "min", "value": 0},
                            {"id": "max", "value": 100},
                        ],
                    },
                ],
            ),
            Panel(
                "bargauge",
                "Score by KPI (% of target, $period)",
                scores,
                fmt="table",
                w=12,
                h=12,
                unit="percent",
                min=0,
                max=100,
                thresholds=SCORE_STEPS,
            ),
            Panel(
                "timeseries",
                "Daily KPI scores",
                daily,
                w=12,
                h=12,
                unit="percent",
                interval="1d",
                min=0,
                max=100,
                description="kpi_values rows of period kind 'day' inside the time range.",
            ),
            Panel(
                "timeseries",
                "Readings per hour by device kind",
                readings,
                w=12,
                h=8,
                interval="1h",
                description="From rollup_1h (n per hour); shows where data is flowing.",
            ),
            Panel("table", "Devices by kind and area", devices, fmt="table", w=12, h=8),
            Panel(
                "table",
                "Areas (registry)",
                areas,
                fmt="table",
                w=12,
                h=7,
                description="Reference data (citykpi registry import), the version valid at the range's end.",
            ),
            Panel("table", "City facts (registry)", facts, fmt="table", w=12, h=7),
            Panel(
                "table",
                "Alert events",
                alert_events,
                fmt="table",
                w=16,
                h=9,
                description="Threshold alerts (citykpi alerts import; processors/alerts.py): opened, updated "
                "(a new peak) and closed, with the value that triggered each; latest 500 in the range.",
            ),
            Panel(
                "timeseries",
                "Alert events by severity",
                alert_counts,
                w=8,
                h=9,
                description="Alert events per interval, by severity and event.",
            ),
            Panel(
                "table",
                "KPIs by SDG goal and target ($period)",
                sdg_progress(),
                fmt="table",
                w=24,
                h=12,
                description="Each KPI under the SDG target it serves (U4SSC 'SDG reference(s)'; "
                "'unconfirmed' marks citykpi's own mapping): the city-wide value of the latest $period, its "
                "target, score and band, and the annual values of every stored year (the trend).",
                overrides=[SCORE_CELL],
            ),
        ],
    )
