"""SQL building blocks of the dashboards and the catalog facts they need (KPI names, targets,
WHO/EU thresholds, noise periods from the KPI catalog, read through kpi_rollups.catalog).

Conventions of the SQL below:
- `${city:sqlstring}` is a single-value variable (Grafana doubles its quotes); `$area`, `$kind`, `$device` are
  multi-value with include-All, whose custom all value `'__all__'` keeps devices without an area
  and works when a list is empty: `('__all__' IN (${area:sqlstring}) OR d.area_id IN (${area:sqlstring}))`;
- time series return a column "time", optionally a text column "metric" (one series per value),
  numeric values, sorted by time; hourly panels read rollup_1h with a 1 h minimum interval;
- `$__interval_ms` turns per-bucket sums into rates (veh/h, readings/s, m³/h);
- a table that grows with time is read through its reader function over the dashboard's range,
  `rollup_1h($__timeFrom(), $__timeTo())` (schemas/access.py, READER_TABLES): the bounds replace
  `$__timeFilter` on its time column.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from grafana_generator.model import ALL, POLLUTANTS, Panel
from kpi_rollups.catalog import KpiDefinition
from kpi_rollups.formulas import checked_catalog

CATALOG = checked_catalog()  # validated as the KPI refresh reads it
KPI_BY_SLUG: dict[str, KpiDefinition] = {k.slug: k for k in CATALOG.kpi}
AIR = KPI_BY_SLUG["air_pollution"]
NOISE = KPI_BY_SLUG["noise_exposure"]
WATER = KPI_BY_SLUG["water_consumption"]
WATER_LOSS = KPI_BY_SLUG["water_supply_loss"]
ELECTRICITY = KPI_BY_SLUG["electricity_consumption"]
SMART_WATER = KPI_BY_SLUG["smart_water_meters"]
SMART_ELECTRICITY = KPI_BY_SLUG["smart_electricity_meters"]
TRAFFIC_MONITORING = KPI_BY_SLUG["traffic_monitoring"]
INTERSECTIONS = KPI_BY_SLUG["intersection_control"]
TTI = KPI_BY_SLUG["travel_time_index"]


def component_target(kpi: KpiDefinition, name: str) -> float | None:
    return kpi.component(name).target if kpi.has_component(name) else None


def lit(s: str) -> str:
    """A SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


def num(x: float) -> str:
    return f"{x:g}" if x != int(x) else f"{int(x)}.0"


DEVICE_FILTER = (
    "d.city_id = ${city:sqlstring}\n"
    f"  AND ({ALL} IN (${{area:sqlstring}}) OR d.area_id IN (${{area:sqlstring}}))\n"
    f"  AND ({ALL} IN (${{kind:sqlstring}}) OR d.kind IN (${{kind:sqlstring}}))\n"
    f"  AND ({ALL} IN (${{device:sqlstring}}) OR d.device_id IN (${{device:sqlstring}}))"
)

RANGE = "($__timeFrom(), $__timeTo())"  # a reader function's bounds: the dashboard's range
ROLLUP_1H = (
    f"FROM rollup_1h{RANGE} r\n"
    "JOIN devices d ON d.device_key = r.device_key\n"
    "JOIN metrics m ON m.metric_id = r.metric_id"
)
# the last local day of the dashboard's range in the city's time zone

PERIOD_END = (
    "(SELECT ($__timeTo()::timestamptz AT TIME ZONE c.timezone)::date "
    "FROM cities c WHERE c.city_id = ${city:sqlstring})"
)

KPI_AREA_FILTER = f"(k.area_id = '' OR {ALL} IN (${{area:sqlstring}}) OR k.area_id IN (${{area:sqlstring}}))"
AREA = "coalesce(d.area_id, '(no area)')"


def metric_in(names: Iterable[str]) -> str:
    names = list(names)
    if len(names) == 1:
        return f"m.name = {lit(names[0])}"
    return "m.name IN (" + ", ".join(lit(n) for n in names) + ")"


def hourly_series(value: str, names: Iterable[str], series: str, *, extra_where: str = "") -> str:
    """One value per time bucket and series from rollup_1h (value is an aggregate over r.*)."""
    names = list(names)
    conditions = [metric_in(names)] if names else []
    where = "\n  AND ".join([*conditions, *([extra_where] if extra_where else []), DEVICE_FILTER])
    return (
        f"SELECT $__timeGroupAlias(r.bucket, $__interval), {series} AS metric, {value}\n"
        f"{ROLLUP_1H}\n"
        f"WHERE {where}\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 1, 2"
    )


def kpi_names_values() -> str:
    rows = ",\n    ".join(f"({lit(k.code)}, {lit(k.name)})" for k in CATALOG.kpi)
    return f"(VALUES\n    {rows}) AS n(code, name)"


def kpi_latest(codes: Iterable[str] | None = None) -> str:
    """Per (KPI, component, area) and $period, the latest stored period up to the range's end that has
    a value (else the latest row, e.g. "Not computable"): on the 1st of a month, or before the first
    evening of one, the previous month still shows."""
    code_filter = ""
    if codes is not None:
        code_filter = "\n  AND k.kpi_code IN (" + ", ".join(lit(c) for c in codes) + ")"
    return (
        "SELECT DISTINCT ON (k.kpi_code, k.component, k.area_id) k.*\n"
        "FROM kpi_values k\n"
        "WHERE k.city_id = ${city:sqlstring} AND k.period_kind = ${period:sqlstring}\n"
        f"  AND k.period_start <= {PERIOD_END}\n"
        f"  AND {KPI_AREA_FILTER}{code_filter}\n"
        "ORDER BY k.kpi_code, k.component, k.area_id, k.value IS NULL, k.period_start DESC"
    )


def kpi_table(codes: Iterable[str] | None = None) -> str:
    return (
        f"WITH latest AS (\n{kpi_latest(codes)}\n)\n"
        'SELECT k.kpi_code AS "code", n.name AS "KPI", k.component AS "component", k.area_id AS "area",\n'
        '  k.period_start AS "period", k.value AS "value", k.unit AS "unit", k.target AS "target",\n'
        '  k.score AS "score %", k.band AS "band", 100 * k.coverage AS "coverage %", k.valid AS "valid",\n'
        '  k.quality_label AS "data quality", k.n_devices AS "devices", k.n_readings AS "readings",\n'
        '  k.computed_at AS "computed"\n'
        "FROM latest k\n"
        f"LEFT JOIN {kpi_names_values()} ON n.code = k.kpi_code\n"
        "ORDER BY k.kpi_code, k.component, k.area_id"
    )


def kpi_value(code: str, component: str, label: str) -> str:
    """One KPI value, chosen as in kpi_latest."""
    return (
        f'SELECT k.value AS "{label}"\n'
        "FROM kpi_values k\n"
        f"WHERE k.city_id = ${{city:sqlstring}} AND k.kpi_code = {lit(code)}\n"
        f"  AND k.component = {lit(component)}\n"
        "  AND k.area_id = '' AND k.period_kind = ${period:sqlstring}\n"
        f"  AND k.period_start <= {PERIOD_END}\n"
        "ORDER BY k.value IS NULL, k.period_start DESC\n"
        "LIMIT 1"
    )


def kpi_stat(title: str, code: str, component: str, label: str, **panel: Any) -> Panel:
    """A stat panel of one KPI value (see kpi_value)."""
    return Panel("stat", title, kpi_value(code, component, label), fmt="table", **panel)


def eu_aqi_cte() -> str:
    """Station-hour European AQI bands of the range as the air pollution formula stored them
    (eu_aqi_hourly: the kernels' sub-indices, PM as 24-h running means of >= 18 valid hours)."""
    return (
        "WITH b AS (\n"
        "  SELECT a.bucket, d.device_id, a.band\n"
        f"  FROM eu_aqi_hourly{RANGE} a\n"
        "  JOIN devices d ON d.device_key = a.device_key\n"
        f"  WHERE {DEVICE_FILTER.replace(chr(10), chr(10) + '  ')}\n"
        ")\n"
    )


def air_hourly_cte() -> str:
    """Station-hour means and their local day's mean (a description of the data: the exceedances
    and indices come from what the formulas stored)."""
    return (
        "WITH hourly AS (\n"
        "  SELECT r.bucket, (r.bucket AT TIME ZONE c.timezone)::date AS day, c.timezone,\n"
        "    d.device_id, m.name AS pollutant, r.sum / r.n AS conc\n"
        f"  {ROLLUP_1H.replace(chr(10), chr(10) + '  ')}\n"
        "  JOIN cities c ON c.city_id = d.city_id\n"
        f"  WHERE {metric_in(POLLUTANTS)}\n"
        f"    AND {DEVICE_FILTER.replace(chr(10), chr(10) + '  ')}\n"
        "), daily AS (\n"
        "  SELECT day, timezone, device_id, pollutant, avg(conc) AS mean, count(*) AS hours\n"
        "  FROM hourly\n"
        "  GROUP BY 1, 2, 3, 4\n"
        ")\n"
    )


def who_24h() -> dict[str, float]:
    return {k: float(v) for k, v in AIR.params["who_24h"].items()}


def values_table(alias: str, columns: str, rows: Iterable[tuple[str, ...]]) -> str:
    body = ",\n    ".join("(" + ", ".join(r) + ")" for r in rows)
    return f"(VALUES\n    {body}) AS {alias}({columns})"


def air_exceedances() -> str:
    """Per station, pollutant and rule, the exceedances the air pollution formula counted for the
    $period (kpi_values.details.stations, see kpi_rollups/formulas/air.py): valid days only (the
    validity threshold of the period's elapsed hours), 8-h means of >= 6 hours; nothing re-derived."""
    daily = "CASE WHEN k.component = 'o3' THEN 'max daily 8-h mean' ELSE '24-h mean' END"
    return (
        f"WITH latest AS (\n{kpi_latest([AIR.code])}\n)\n"
        'SELECT s.e->>\'device_id\' AS "station", k.component AS "pollutant", r.rule AS "rule",\n'
        '  r.lim AS "limit µg/m³", (s.e->>r.field)::int AS "exceedances", r.counted AS "counted in",\n'
        '  (s.e->>\'valid_days\')::int AS "valid days", r.allowed AS "allowed per year",\n'
        '  k.period_start AS "period"\n'
        "FROM latest k\n"
        "CROSS JOIN LATERAL jsonb_array_elements(k.details->'stations') AS s(e)\n"
        "CROSS JOIN LATERAL (VALUES\n"
        f"    ('WHO 2021 ' || {daily}, 'who_exceedance_days', k.details->>'who_threshold', NULL, 'days'),\n"
        f"    ('EU ' || {daily}, 'eu_exceedance_days', k.details->>'eu_threshold',\n"
        "     k.details->>'eu_allowed_days', 'days'),\n"
        "    ('EU 2030 24-h mean', 'eu_2030_exceedance_days', k.details->>'eu_2030_threshold',\n"
        "     NULL, 'days'),\n"
        "    ('EU hourly limit', 'eu_hourly_exceedance_hours', k.details->>'eu_hourly_threshold',\n"
        "     k.details->>'eu_hourly_allowed_hours', 'hours')\n"
        ") AS r0(rule, field, lim_text, allowed_text, counted)\n"
        "CROSS JOIN LATERAL (SELECT r0.*, r0.lim_text::float8 AS lim, r0.allowed_text::int AS allowed) AS r\n"
        "WHERE s.e ? r.field\n"
        "ORDER BY 1, 2, 3"
    )


def sdg_progress() -> str:
    """The KPIs grouped by the SDG goal and target each serves (catalog `sdg` links, in goal and
    target order): the value chosen as in kpi_latest, its target, score and band, and the annual
    values of every stored year up to the range's end as the trend."""

    def order(target: str) -> tuple[int, ...]:
        return tuple(int(p) if p.isdigit() else 99 for p in target.split("."))

    links = sorted(
        ((link, k) for k in CATALOG.kpi for link in k.sdg), key=lambda lk: (order(lk[0].target), lk[1].code)
    )
    rows = [
        (
            str(i),
            lit(f"SDG {link.goal} {CATALOG.sdg_goals[link.goal]}"),
            lit(f"{link.target} {CATALOG.sdg_targets[link.target]}"),
            lit(k.code),
            lit(link.component),
            lit(k.name + (f" (SDG {link.indicator})" if link.indicator else "")),
            "true" if link.confirmed else "false",
        )
        for i, (link, k) in enumerate(links)
    ]
    latest = kpi_latest().replace(f"AND {KPI_AREA_FILTER}", "AND k.area_id = ''")
    return (
        f"WITH latest AS (\n{latest}\n), annual AS (\n"
        "  SELECT k.kpi_code, k.component, string_agg(extract(year FROM k.period_start)::int || ': '\n"
        "      || coalesce(round(k.value::numeric, 2)::text, '–'), ' · ' ORDER BY k.period_start) AS trend\n"
        "  FROM kpi_values k\n"
        "  WHERE k.city_id = ${city:sqlstring} AND k.period_kind = 'year' AND k.area_id = ''\n"
        f"    AND k.period_start <= {PERIOD_END}\n"
        "  GROUP BY 1, 2\n"
        ")\n"
        'SELECT s.goal AS "goal", s.target AS "SDG target", s.name AS "KPI",\n'
        "  CASE WHEN s.confirmed THEN 'U4SSC' ELSE 'unconfirmed' END AS \"link\",\n"
        '  k.value AS "value", k.unit AS "unit", k.target AS "KPI target", k.score AS "score %",\n'
        '  k.band AS "band", a.trend AS "annual values"\n'
        f"FROM {values_table('s', 'ord, goal, target, code, component, name, confirmed', rows)}\n"
        "LEFT JOIN latest k ON k.kpi_code = s.code AND k.component = s.component\n"
        "LEFT JOIN annual a ON a.kpi_code = s.code AND a.component = s.component\n"
        "ORDER BY s.ord"
    )
