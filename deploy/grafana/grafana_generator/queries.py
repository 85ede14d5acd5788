"""SQL building blocks of the dashboards and the catalog facts they need (KPI names, targets,
WHO/EU thresholds, noise periods from the KPI catalog, read through kpi_rollups.catalog).

Conventions of the SQL below:
- `${city:sqlstring}` is a single-value variable (Grafana doubles its quotes); `$area`, `$kind`, `$device` are
  multi-value with include-All, whose custom all value `'__all__'` keeps devices without an area
  and works when a list is empty: `('__all__' IN (${area:sqlstring}) OR d.area_id IN (${area:sqlstring}))`;
- time series return a column "time", optionally a text column "metric" (one series per value),
  numeric values, sorted by time; hourly panels read rollup_1h with a 1 h minimum interval;
- `$__interval_ms` turns per-bucket sums into rates (veh/h, readings/s, m³/h).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from grafana_generator.model import ALL, EU_AQI_UPPER_BOUNDS, POLLUTANTS, Panel
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

ROLLUP_1H = (
    "FROM rollup_1h r\n"
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
    metrics = f" AND {metric_in(names)}" if names else ""
    where = f"$__timeFilter(r.bucket){metrics}{extra_where}\n  AND {DEVICE_FILTER}"
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


def eu_band_case(pollutant: str, conc: str) -> str:
    parts = []
    for p, bounds in EU_AQI_UPPER_BOUNDS.items():
        whens = " ".join(f"WHEN {conc} <= {b:g} THEN {i + 1}" for i, b in enumerate(bounds))
        parts.append(
            f"    WHEN {lit(p)} THEN CASE WHEN {conc} IS NULL OR {conc} < 0 THEN 0 {whens} ELSE 5 END"
        )
    return f"CASE {pollutant}\n" + "\n".join(parts) + "\n  END"


def eu_aqi_cte() -> str:
    """Station-hour European AQI band: worst pollutant; NO2/O3/SO2 hourly means, PM as the 24-h
    running mean of hourly means (EEA practice). Rows from 23 h before the range start so the
    running mean is complete at the start; callers filter with $__timeFilter(bucket)."""
    return (
        "WITH h AS (\n"
        "  SELECT r.bucket, d.device_id, m.name AS pollutant,\n"
        "    CASE WHEN m.name IN ('pm25', 'pm10') THEN sum(r.sum) OVER w / sum(r.n) OVER w\n"
        "         ELSE r.sum / r.n END AS conc\n"
        f"  {ROLLUP_1H.replace(chr(10), chr(10) + '  ')}\n"
        "  WHERE r.bucket BETWEEN $__timeFrom()::timestamptz - interval '23 hours'\n"
        "                     AND $__timeTo()::timestamptz\n"
        f"    AND {metric_in(POLLUTANTS)}\n"
        f"    AND {DEVICE_FILTER.replace(chr(10), chr(10) + '  ')}\n"
        "  WINDOW w AS (PARTITION BY r.device_key, r.metric_id ORDER BY r.bucket\n"
        "               RANGE BETWEEN interval '23 hours' PRECEDING AND CURRENT ROW)\n"
        "), b AS (\n"
        f"  SELECT bucket, device_id, max({eu_band_case('pollutant', 'conc')}) AS band\n"
        "  FROM h\n"
        "  GROUP BY 1, 2\n"
        ")\n"
    )


def air_hourly_cte() -> str:
    """Station-hour means with the 8-h running mean (O3, WHO/EU) and the local day."""
    return (
        "WITH hourly AS (\n"
        "  SELECT r.bucket, (r.bucket AT TIME ZONE c.timezone)::date AS day, c.timezone,\n"
        "    d.device_id, m.name AS pollutant, r.sum / r.n AS conc,\n"
        "    sum(r.sum) OVER w8 / sum(r.n) OVER w8 AS conc_8h, count(*) OVER w8 AS hours_8h\n"
        f"  {ROLLUP_1H.replace(chr(10), chr(10) + '  ')}\n"
        "  JOIN cities c ON c.city_id = d.city_id\n"
        f"  WHERE $__timeFilter(r.bucket) AND {metric_in(POLLUTANTS)}\n"
        f"    AND {DEVICE_FILTER.replace(chr(10), chr(10) + '  ')}\n"
        "  WINDOW w8 AS (PARTITION BY r.device_key, r.metric_id ORDER BY r.bucket\n"
        "                RANGE BETWEEN interval '7 hours' PRECEDING AND CURRENT ROW)\n"
        "), daily AS (\n"
        "  SELECT day, timezone, device_id, pollutant, avg(conc) AS mean, count(*) AS hours,\n"
        "    max(conc_8h) FILTER (WHERE hours_8h >= 6) AS max_8h\n"
        "  FROM hourly\n"
        "  GROUP BY 1, 2, 3, 4\n"
        ")\n"
    )


def who_24h() -> dict[str, float]:
    return {k: float(v) for k, v in AIR.params["who_24h"].items()}


def values_table(alias: str, columns: str, rows: Iterable[tuple[str, ...]]) -> str:
    body = ",\n    ".join("(" + ", ".join(r) + ")" for r in rows)
    return f"(VALUES\n    {body}) AS {alias}({columns})"


def exceedance_rules() -> list[tuple[str, ...]]:
    """(rule, pollutant, statistic, limit, allowed per year) from the catalog's air parameters."""
    p = AIR.params
    rules: list[tuple[str, ...]] = []
    for pol, lim in p["who_24h"].items():
        rules.append((lit("WHO 2021 24-h mean"), lit(pol), "'mean'", num(float(lim)), "NULL"))
    rules.append((lit("WHO 2021 max daily 8-h mean"), "'o3'", "'max_8h'", num(float(p["who_o3_8h"])), "NULL"))
    for pol, lim in p["eu_daily"].items():
        allowed = p.get("eu_daily_allowed_days", {}).get(pol)
        rules.append(
            (
                lit("EU daily limit"),
                lit(pol),
                "'mean'",
                num(float(lim)),
                "NULL" if allowed is None else str(allowed),
            )
        )
    for pol, lim in p.get("eu_daily_2030", {}).items():
        rules.append((lit("EU 2030 daily limit"), lit(pol), "'mean'", num(float(lim)), "NULL"))
    rules.append(
        (
            lit("EU max daily 8-h mean target"),
            "'o3'",
            "'max_8h'",
            num(float(p["eu_o3_8h"])),
            str(p["eu_o3_8h_allowed_days"]),
        )
    )
    rules.append(
        (
            lit("EU hourly limit"),
            "'no2'",
            "'hour'",
            num(float(p["eu_no2_hourly"])),
            str(p["eu_no2_hourly_allowed_hours"]),
        )
    )
    return rules
