"""The Grafana dashboards on a real database, without a Grafana server.

The test fills a fresh TimescaleDB with a few simulated days of the demo city (through the real
pipeline and writer), imports the demo registry and refreshes the KPIs; then, for every panel of
every generated dashboard, it expands the SQL the way Grafana's PostgreSQL data source does
(deploy/grafana/macros.py: template variables with their defaults, $__interval, the macros with
TimescaleDB on), runs it and fails if the query errors, returns no rows, or returns columns the panel
cannot draw. The generator and expander alone are tested in tests/unit/test_grafana_generator.py.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from kpi_rollups.formulas import checked_catalog
from tests.conftest import as_login
from tests.unit.test_grafana_generator import REPO, dashboards, macros, query_panels

NUMERIC = {"int2", "int4", "int8", "float4", "float8", "numeric"}
TIMES = {"timestamptz", "timestamp", "date"}
TEXTS = {"text", "varchar", "bpchar", "char", "name", "unknown"}
HOSTILE = "x'); DROP TABLE readings; --"


async def fill_demo_city(dsn: str, hours: int = 96, step_min: int = 10) -> datetime:
    """`hours` of the demo city every `step_min` minutes, ending a minute ago, through the pipeline.
    Four days always hold weekday peak hours (travel time index) and, on the first day of a month,
    a complete day of the previous month (Lden needs day, evening and night hours)."""
    from core.config import Settings, SimulatorSettings
    from ingest.pipeline import Delivery, Message, Pipeline
    from ingest.routing import Router
    from ingest.simulator import CitySimulator
    from kpi_rollups.refresh import refresh_kpis
    from kpi_rollups.registry import import_registry_file
    from processors.alert_rules import DEFAULT_RULES, import_rules
    from processors.alerts import evaluate_alerts
    from processors.writer import TimescaleWriter, WriteBatch

    await import_registry_file(dsn, REPO / "kpi_rollups" / "demo_registry.toml")
    settings = Settings(database={"url": dsn})
    sim = CitySimulator(
        SimulatorSettings(
            air_stations=4,
            noise_sensors=12,
            traffic_counters=10,
            water_meters=6,
            electricity_meters=6,
            parking_spots=4,
            waste_bins=2,
            weather_stations=1,
            interval_s=step_min * 60,
            fault_rate=0.01,
            seed=7,
            sparkplug_kind="electricity",  # the ingestion board's Sparkplug B table has rows
        )
    )
    router = Router(settings.mqtt.routes)
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    writer = TimescaleWriter(dsn)
    await writer.start()
    pipeline = Pipeline(settings, writer)
    await pipeline.start()
    t = end - timedelta(hours=hours)
    while t <= end:
        msgs = [Message(m.payload, m.topic, t, headers=m.headers) for m in sim.tick(t)]
        await pipeline.submit(Delivery("mqtt", router, msgs))
        t += timedelta(minutes=step_min)
    await pipeline.drain_and_stop()
    hostile = WriteBatch(source="test")  # a device id from a payload, meant to break quoting
    for i in range(3):
        hostile.add("demo", HOSTILE, "pm25", end - timedelta(minutes=20 * i), 12.0 + i)
    await writer.write(hostile)
    await writer.stop()
    conn = await asyncpg.connect(dsn)
    try:
        # the registry expects the live simulator's 10 s; these readings come every step_min minutes
        await conn.execute(
            "UPDATE devices SET expected_interval_s = $1 WHERE city_id = 'demo'", step_min * 60.0
        )
        tz = await conn.fetchval("SELECT timezone FROM cities WHERE city_id = 'demo'")
        from zoneinfo import ZoneInfo

        days = sorted({(end - timedelta(hours=h)).astimezone(ZoneInfo(tz)).date() for h in range(hours + 1)})
        for kind in ("day", "month", "year"):
            starts: set[date] = set()
            for d in days:
                key = (
                    d if kind == "day" else d.replace(day=1) if kind == "month" else d.replace(month=1, day=1)
                )
                if key not in starts:
                    starts.add(key)
                    await refresh_kpis(conn, "demo", kind, d)
        # the shipped alert rules over the last hours (readings every step_min: no_data alerts)
        await import_rules(dsn, DEFAULT_RULES)
        await evaluate_alerts(conn, Settings(alerts={"first_lookback_s": 6 * 3600}))  # type: ignore[call-arg]
        assert await conn.fetchval("SELECT count(*) FROM alerts WHERE city_id = 'demo'") > 0
    finally:
        await conn.close()
    return end


def metric_find_values(rows: list[asyncpg.Record], cols: list[str]) -> list[str]:
    """ResponseParser.transformMetricFindResponse: __value (or every column), deduplicated."""
    values = [r["__value"] for r in rows] if "__value" in cols else [v for r in rows for v in r.values()]
    seen: dict[str, None] = {}
    for v in values:
        if v is not None:
            seen.setdefault(str(v), None)
    return list(seen)


async def resolve_variables(
    conn: asyncpg.Connection, d: dict[str, Any], rng: Any, explicit: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], list[str]]:
    """Run the variable queries in order; the variables named in `explicit` get every option
    selected (a quoted list) instead of their default All (the custom all value)."""
    resolved: dict[str, Any] = {}
    problems: list[str] = []
    ctx = macros.PanelContext(rng)
    for v in d["templating"]["list"]:
        if v["type"] == "custom":
            options = [o["value"] for o in v["options"]]
        else:
            sql = macros.render(v["query"], resolved, ctx, timescaledb=True)
            try:
                stmt = await conn.prepare(sql)
                rows = await stmt.fetch()
            except asyncpg.PostgresError as e:
                problems.append(f"{d['uid']} ${v['name']}: {type(e).__name__}: {e}\n{sql}")
                continue
            options = metric_find_values(rows, [a.name for a in stmt.get_attributes()])
            if not options:
                problems.append(f"{d['uid']} ${v['name']}: the variable query returns no options")
        current = v["current"]["value"]
        if v.get("multi"):
            value: Any = tuple(options) if v["name"] in explicit else tuple(current)
        else:
            value = current
            if current not in options:
                problems.append(f"{d['uid']} ${v['name']}: default {current!r} not among {options}")
        resolved[v["name"]] = macros.Variable(
            v["name"],
            value,
            multi=bool(v.get("multi")),
            include_all=bool(v.get("includeAll")),
            all_value=v.get("allValue"),
            options=tuple(options),
        )
    return resolved, problems


def drawable(
    panel_type: str, fmt: str, cols: list[tuple[str, str]], rows: list[asyncpg.Record], *, data_expected: bool
) -> list[str]:
    """What Grafana's SQL engine and the panel need from a result (sqleng.processFrame); with
    `data_expected`, also rows and a non-NULL value to draw."""
    out: list[str] = []
    names = [n for n, _ in cols]
    types = dict(cols)
    numeric = [n for n, t in cols if t in NUMERIC and n != "time"]
    if "time" in types and types["time"] not in TIMES | NUMERIC:
        out.append(f"column time is {types['time']}, not a time or epoch")
    if fmt == "time_series":
        if "time" not in types:
            return [*out, "time series without a column named time"]
        others = [(n, t) for n, t in cols if n != "time"]
        bad = [f"{n} ({t})" for n, t in others if t not in NUMERIC | TEXTS]
        if bad:
            out.append(f"value columns Grafana cannot convert to numbers: {bad}")
        if not numeric:
            out.append("time series without a numeric value column")
        times = [r["time"] for r in rows]
        if any(t is None for t in times):
            out.append("NULL in the time column")
        elif times != sorted(times):
            out.append("rows not sorted by time (long-to-wide conversion fails)")
        labels = [n for n, t in others if t in TEXTS]
        keys = [(r["time"], *(r[n] for n in labels)) for r in rows]
        if len(keys) != len(set(keys)):
            out.append(f"duplicate (time, {labels}) rows")
    if panel_type in ("stat", "bargauge", "timeseries"):
        if not numeric:
            out.append(f"{panel_type} without a numeric column: {names}")
        elif data_expected and rows and all(r[n] is None for r in rows for n in numeric):
            out.append(f"{panel_type} whose numeric columns are all NULL")
    if panel_type == "timeseries" and fmt != "time_series":
        out.append("timeseries panel with table format")
    return out


async def check_dashboard(
    conn: asyncpg.Connection, d: dict[str, Any], now: datetime, *, explicit: frozenset[str] = frozenset()
) -> tuple[list[str], int]:
    rng = macros.dashboard_range(d, now)
    variables, problems = await resolve_variables(conn, d, rng, explicit)
    checked = 0
    for p in query_panels(d):
        ctx = macros.PanelContext(rng, p.get("maxDataPoints", 1000), p.get("interval", "1m"))
        for t in p["targets"]:
            where = f"{d['uid']} / {p['title']!r} ({p['type']}, {t['format']})"
            sql = macros.render(t["rawSql"], variables, ctx, timescaledb=True)
            try:
                stmt = await conn.prepare(sql)
                rows = await stmt.fetch()
            except asyncpg.PostgresError as e:
                problems.append(f"{where}: {type(e).__name__}: {e}\n{sql}")
                continue
            checked += 1
            cols = [(a.name, a.type.name) for a in stmt.get_attributes()]
            issues = drawable(p["type"], t["format"], cols, rows, data_expected=not explicit)
            if not rows and not explicit:
                issues.append("no rows, but the database holds data for it")
            problems.extend(f"{where}: {i}\n{sql}" for i in issues)
    return problems, checked


async def _city_options(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch("SELECT city_id FROM cities ORDER BY 1")]
    finally:
        await conn.close()


@pytest.mark.integration
async def test_every_panel_runs_on_simulator_data_and_returns_drawable_columns(tsdb: str) -> None:
    """As Grafana's roles would run them, logins made by citykpi_grant_reader that read the reader
    functions and views (schemas/access.py): a platform reader (every city) with the defaults, with
    every option of area, kind and device selected, and with every device selected (the list then
    holds the quote-breaking id); the demo city's reader with the defaults."""
    from processors.writer import TimescaleWriter, WriteBatch

    end = await fill_demo_city(tsdb)
    suffix = uuid.uuid4().hex[:6]
    platform, city_reader = f"dashboards_platform_{suffix}", f"dashboards_demo_{suffix}"
    owner = await asyncpg.connect(tsdb)
    try:
        assert await owner.fetchval("SELECT max(time) FROM readings") == end
        assert await owner.fetchval("SELECT count(*) FROM devices WHERE device_id = $1", HOSTILE) == 1
        assert await owner.fetchval("SELECT count(*) FROM dead_letters WHERE city_id = 'demo'") > 0
        n_kpis = await owner.fetchval("SELECT count(DISTINCT kpi_code) FROM kpi_values")
        assert n_kpis == len(checked_catalog().kpi)
        await owner.execute("INSERT INTO cities (city_id, name) VALUES ('other', 'Other City')")
        await owner.execute("SELECT citykpi_grant_reader($1, NULL, 'pw')", platform)
        await owner.execute("SELECT citykpi_grant_reader($1, 'demo', 'pw')", city_reader)
    finally:
        await owner.close()
    other = WriteBatch(source="test")
    other.add("other", "air-1", "pm25", end, 99.0)
    async with TimescaleWriter(tsdb) as w:
        await w.write(other)

    boards = dashboards()
    problems: list[str] = []
    checked = 0
    try:
        assert await _city_options(as_login(tsdb, platform)) == ["demo", "other"]
        assert await _city_options(as_login(tsdb, city_reader)) == ["demo"]
        now = datetime.now(UTC)  # Grafana's "now" is when the dashboard is viewed: after the fill
        every = frozenset({"area", "kind", "device"})
        passes = [(platform, frozenset()), (platform, every), (platform, frozenset({"device"}))]
        passes.append((city_reader, frozenset()))
        for role, explicit in passes:
            conn = await asyncpg.connect(as_login(tsdb, role))
            started = time.perf_counter()
            try:
                if explicit == {"device"}:
                    rng = macros.dashboard_range(boards[0], now)
                    variables, _ = await resolve_variables(conn, boards[0], rng, explicit)
                    assert HOSTILE in variables["device"].value
                for d in boards:
                    if role == city_reader and d["uid"] == "citykpi-ingestion":
                        # platform-only: batch provenance names every city's topics (the
                        # reader function gives city readers no rows of ingest_batches)
                        everything = "ingest_batches('-infinity', 'infinity')"
                        assert await conn.fetchval(f"SELECT count(*) FROM {everything}") == 0
                        continue
                    found, n = await check_dashboard(conn, d, now, explicit=explicit)
                    label = f"[{role.rsplit('_', 1)[0]}, selected: {sorted(explicit) or 'defaults'}]"
                    problems += [f"{label} {p}" for p in found]
                    checked += n
            finally:
                await conn.close()
            # the panels' cost per reader and pass (-s shows it; SECURITY.md quotes it)
            label = f"{role.rsplit('_', 1)[0]}, selected: {sorted(explicit) or 'defaults'}"
            print(f"panels as {label}: {time.perf_counter() - started:.2f} s")
    finally:
        owner = await asyncpg.connect(tsdb)
        try:
            assert await owner.fetchval("SELECT count(*) FROM readings") > 0  # the hostile id dropped nothing
            for role in (platform, city_reader):
                await owner.execute(f"DROP ROLE IF EXISTS {role}")
        finally:
            await owner.close()
    assert not problems, "\n\n".join(problems)
    ingestion = next(d for d in boards if d["uid"] == "citykpi-ingestion")
    assert checked == len(passes) * sum(len(query_panels(d)) for d in boards) - len(query_panels(ingestion))


async def _panel_rows(
    conn: asyncpg.Connection, d: dict[str, Any], title: str, now: datetime
) -> list[asyncpg.Record]:
    """The rows one panel of `d` shows with the dashboard's defaults, run as Grafana would."""
    rng = macros.dashboard_range(d, now)
    variables, problems = await resolve_variables(conn, d, rng)
    assert not problems
    (p,) = [p for p in query_panels(d) if p["title"] == title]
    ctx = macros.PanelContext(rng, p.get("maxDataPoints", 1000), p.get("interval", "1m"))
    (t,) = p["targets"]
    return await conn.fetch(macros.render(t["rawSql"], variables, ctx, timescaledb=True))


async def _kernel_station_hour_aqi(conn: asyncpg.Connection) -> dict[tuple[datetime, str], int]:
    """The EEA index per station-hour from rollup_1h by the kernels alone: hourly means of the valid
    hours (75 % of the expected readings), PM2.5/PM10 as 24-h running means of >= 18 valid hours,
    each pollutant banded by european_aqi_band, the station's band the worst of them."""
    import numpy as np

    from processors.kernels import EUROPEAN_AQI_POLLUTANTS, european_aqi_band, rolling_mean_hours

    rows = await conn.fetch(
        "SELECT d.device_id, m.name, r.bucket, r.sum / r.n AS mean FROM rollup_1h r "
        "JOIN devices d USING (device_key) JOIN metrics m USING (metric_id) "
        "WHERE d.city_id = 'demo' AND m.name = ANY($1::text[]) "
        "AND r.n >= ceil(0.75 * 3600.0 / least(coalesce(d.expected_interval_s, 3600.0), 3600.0)) "
        "ORDER BY 1, 2, 3",
        list(EUROPEAN_AQI_POLLUTANTS),
    )
    series: dict[tuple[str, str], list[asyncpg.Record]] = {}
    for r in rows:
        series.setdefault((r["device_id"], r["name"]), []).append(r)
    worst: dict[tuple[datetime, str], int] = {}
    for (device, pollutant), rs in series.items():
        hours = [r["bucket"] for r in rs]
        means = np.array([r["mean"] for r in rs])
        if pollutant in ("pm25", "pm10"):
            t_us = np.array([int(h.timestamp()) * 1_000_000 for h in hours], dtype=np.int64)
            means = rolling_mean_hours(t_us, means, 24, 18)
        for h, b in zip(hours, european_aqi_band(pollutant, means).tolist(), strict=True):
            if b > 0:
                worst[(h, device)] = max(worst.get((h, device), 0), b)
    return worst


@pytest.mark.integration
async def test_the_air_dashboards_european_aqi_is_the_kernels_for_the_same_data(tsdb: str) -> None:
    """What the air dashboard's European AQI panels show a city reader (the bands the KPI refresh
    stored in eu_aqi_hourly) equals the kernels' index computed here from the same hourly
    rollups, station-hour by station-hour; the worst hour of each day equals the aqi_eu KPI."""
    await fill_demo_city(tsdb, hours=48)
    reader = f"aqi_demo_{uuid.uuid4().hex[:6]}"
    owner = await asyncpg.connect(tsdb)
    try:
        expected = await _kernel_station_hour_aqi(owner)
        await owner.execute("SELECT citykpi_grant_reader($1, 'demo', 'pw')", reader)
        day_kpis = await owner.fetch(
            "SELECT period_start, value FROM kpi_values WHERE city_id = 'demo' AND component = 'aqi_eu' "
            "AND period_kind = 'day' AND value IS NOT NULL"
        )
        tz = await owner.fetchval("SELECT timezone FROM cities WHERE city_id = 'demo'")
    finally:
        await owner.close()
    assert len(expected) > 4 * 24  # four stations, a day and more each after the first 18 hours
    air = next(d for d in dashboards() if d["uid"] == "citykpi-air")
    now = datetime.now(UTC)
    conn = await asyncpg.connect(as_login(tsdb, reader))
    try:
        hourly = await _panel_rows(conn, air, "European AQI band per station (hourly)", now)
        latest = await _panel_rows(conn, air, "European AQI by station (latest hour)", now)
        worst_now = await _panel_rows(conn, air, "European AQI, worst station (latest hour)", now)
    finally:
        await conn.close()
        owner = await asyncpg.connect(tsdb)
        await owner.execute(f"DROP ROLE IF EXISTS {reader}")
        await owner.close()
    shown = {(r["time"], r["metric"]): r["band"] for r in hourly}
    assert shown == expected
    last_hour = max(h for h, _ in expected)
    by_station = {dev: b for (h, dev), b in expected.items() if h == last_hour}
    assert {r["station"]: r["European AQI"] for r in latest} == by_station
    assert [r["European AQI"] for r in worst_now] == [max(by_station.values())]
    from zoneinfo import ZoneInfo

    daily_worst: dict[date, int] = {}
    for (h, _), b in expected.items():
        day = h.astimezone(ZoneInfo(tz)).date()
        daily_worst[day] = max(daily_worst.get(day, 0), b)
    assert day_kpis and {r["period_start"]: r["value"] for r in day_kpis} == {
        d: float(daily_worst[d]) for d in (r["period_start"] for r in day_kpis)
    }


@pytest.mark.integration
async def test_the_sdg_panel_shows_every_kpi_under_its_goal_and_target_with_its_years(tsdb: str) -> None:
    """The overview's SDG panel as the demo city's reader: one row per catalog SDG link, in goal and
    target order, unconfirmed links marked; the value is the latest month's (as kpi_latest picks
    it); the annual values list every stored year. Last year holds one day: air-0001 (area centre,
    the only area monitored then) at 8 µg/m³ all day, so SDG 11.6.2 = 8.00 for that year."""
    from kpi_rollups.refresh import refresh_kpis
    from processors.writer import TimescaleWriter, WriteBatch

    end = await fill_demo_city(tsdb, hours=24)
    last_year = date(end.year - 1, 12, 15)  # within raw_retention_days (400) of any "now"
    batch = WriteBatch(source="test")
    for minute in range(0, 24 * 60, 10):  # every 10 min, as fill_demo_city's devices expect
        t = datetime(last_year.year, 12, 15, tzinfo=UTC) + timedelta(minutes=minute)
        batch.add("demo", "air-0001", "pm25", t, 8.0)
    async with TimescaleWriter(tsdb) as w:
        await w.write(batch)
    await refresh_kpis(tsdb, "demo", "year", last_year)
    reader = f"sdg_demo_{uuid.uuid4().hex[:6]}"
    owner = await asyncpg.connect(tsdb)
    try:
        await owner.execute("SELECT citykpi_grant_reader($1, 'demo', 'pw')", reader)
        years = await owner.fetch(
            "SELECT extract(year FROM period_start)::int AS y, round(value::numeric, 2)::text AS v "
            "FROM kpi_values WHERE city_id = 'demo' AND kpi_code = 'EN:EN:AQ:1C' "
            "AND component = 'sdg_11_6_2' AND period_kind = 'year' ORDER BY 1"
        )
        month_value = await owner.fetchval(
            "SELECT value FROM kpi_values WHERE city_id = 'demo' AND kpi_code = 'EN:EN:AQ:1C' "
            "AND component = 'sdg_11_6_2' AND area_id = '' AND period_kind = 'month' "
            "ORDER BY value IS NULL, period_start DESC LIMIT 1"
        )
    finally:
        await owner.close()
    overview = next(d for d in dashboards() if d["uid"] == "citykpi-overview")
    conn = await asyncpg.connect(as_login(tsdb, reader))
    try:
        rows = await _panel_rows(conn, overview, "KPIs by SDG goal and target ($period)", datetime.now(UTC))
    finally:
        await conn.close()
        owner = await asyncpg.connect(tsdb)
        await owner.execute(f"DROP ROLE IF EXISTS {reader}")
        await owner.close()
    catalog = checked_catalog()
    links = [(link, k) for k in catalog.kpi for link in k.sdg]
    assert len(rows) == len(links)
    targets = [r["SDG target"].split(" ")[0] for r in rows]
    assert targets == sorted(targets, key=lambda t: tuple(int(p) for p in t.split(".")))
    assert {(r["SDG target"].split(" ")[0], r["KPI"].split(" (SDG")[0], r["link"]) for r in rows} == {
        (link.target, k.name, "U4SSC" if link.confirmed else "unconfirmed") for link, k in links
    }
    air = next(r for r in rows if r["KPI"] == "Air pollution (SDG 11.6.2)")
    assert air["goal"] == "SDG 11 Sustainable cities and communities"
    assert [y["y"] for y in years] == [last_year.year, end.year] and years[0]["v"] == "8.00"
    assert air["annual values"] == " · ".join(f"{y['y']}: {y['v']}" for y in years)
    assert air["value"] == pytest.approx(month_value) and month_value is not None
