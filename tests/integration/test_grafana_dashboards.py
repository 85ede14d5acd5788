"""The Grafana dashboards, proven without a Grafana server.

The integration test fills a fresh TimescaleDB with a few simulated hours of the demo city (through
the real pipeline and writer), imports the demo registry and refreshes the KPIs; then, for every
panel of every generated dashboard, it expands the SQL the way Grafana's PostgreSQL data source does
(deploy/grafana/macros.py: template variables with their defaults, $__interval, the macros with
TimescaleDB on), runs it and fails if the query errors, returns no rows, or returns columns the panel
cannot draw. The other tests pin the macro expander to Grafana's own expectations (macros_test.go)
and keep the committed JSON equal to what the generator writes.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import numpy as np
import pytest

from tests.conftest import as_login

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"citykpi_grafana_{name}", GRAFANA / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


macros = _load("macros")
generate = _load("generate")

T0 = datetime(2018, 4, 12, 18, 0, tzinfo=UTC)
FIVE_MIN = macros.TimeRange(T0, T0 + timedelta(minutes=5))


def expand(sql: str, rng: Any = FIVE_MIN, timescaledb: bool = False) -> str:
    return macros.expand_macros(sql, rng, timescaledb=timescaledb)


# --------------------------------------------------------------------------------------------------
# The expander against Grafana's documented expansions (macros_test.go, rangeutil, SqlDatasource)
# --------------------------------------------------------------------------------------------------


def test_macros_expand_like_grafanas_postgres_macro_engine() -> None:
    assert expand("select $__time(time_column)") == 'select time_column AS "time"'
    assert expand("select $__timeEpoch(t)") == 'select extract(epoch from t) as "time"'
    assert expand("WHERE $__timeFilter(time_column)") == (
        "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"
    )
    assert expand("select $__timeFrom()") == "select '2018-04-12T18:00:00Z'"
    assert expand("select $__timeTo()") == "select '2018-04-12T18:05:00Z'"
    # pre-5.3 compatibility: a ',' right after $__timeGroup adds the alias
    assert expand("SELECT $__timeGroup(time_column,'5m'), value") == (
        'SELECT floor(extract(epoch from time_column)/300)*300 AS "time", value'
    )
    assert expand("SELECT $__timeGroup(time_column,'5m') as time, value") == (
        "SELECT floor(extract(epoch from time_column)/300)*300 as time, value"
    )
    assert (
        expand("SELECT $__timeGroup(time_column,'5m')")
        == "SELECT floor(extract(epoch from time_column)/300)*300"
    )
    assert expand("$__timeGroupAlias(time_column , '5m')") == (
        'floor(extract(epoch from time_column)/300)*300 AS "time"'
    )
    assert expand("GROUP BY $__timeGroup(time_column,'5m')", timescaledb=True) == (
        "GROUP BY time_bucket('300.000s',time_column)"
    )
    assert expand("GROUP BY $__timeGroup(time_column , '12d')", timescaledb=True) == (
        "GROUP BY time_bucket('1036800.000s',time_column)"
    )
    assert expand("GROUP BY $__timeGroup(time_column , '20ms')", timescaledb=True) == (
        "GROUP BY time_bucket('0.020s',time_column)"
    )
    assert expand("select $__unixEpochFilter(time)") == "select time >= 1523556000 AND time <= 1523556300"
    assert expand("select $__unixEpochNanoFilter(time)") == (
        "select time >= 1523556000000000000 AND time <= 1523556300000000000"
    )
    assert expand("select $__unixEpochNanoFrom()") == "select 1523556000000000000"
    assert expand("select $__unixEpochNanoTo()") == "select 1523556300000000000"
    assert expand("SELECT $__unixEpochGroupAlias(time_column+time_adjustment,'5m')") == (
        'SELECT floor((time_column+time_adjustment)/300)*300 AS "time"'
    )
    half = macros.TimeRange(
        datetime(1960, 2, 1, 7, 0, 0, 500000, tzinfo=UTC), datetime(1980, 2, 3, 8, 0, 0, 500000, tzinfo=UTC)
    )
    assert expand("WHERE $__timeFilter(time_column)", half) == (
        "WHERE time_column BETWEEN '1960-02-01T07:00:00.5Z' AND '1980-02-03T08:00:00.5Z'"
    )
    assert (
        expand("GROUP BY $__timeGroup(t, '30d')")
        == "GROUP BY floor(extract(epoch from t)/2.592e+06)*2.592e+06"
    )
    with pytest.raises(macros.MacroError, match="unknown macro"):
        expand("select $__nope(x)")
    with pytest.raises(macros.MacroError, match="needs time column"):
        expand("select $__timeGroup(x)")


def test_interval_and_variables_like_grafanas_frontend() -> None:
    day = macros.TimeRange(T0, T0 + timedelta(hours=24))
    assert macros.calculate_interval(day, 300, "1h") == (3600000, "1h")
    assert macros.calculate_interval(macros.TimeRange(T0, T0 + timedelta(hours=6)), 300, "1m") == (
        60000,
        "1m",
    )
    assert macros.calculate_interval(macros.TimeRange(T0, T0 + timedelta(days=30)), 300, "1h") == (
        7200000,
        "2h",
    )
    assert macros.calculate_interval(day, 1000) == (60000, "1m")  # 86.4 s rounds to 1m
    assert macros.seconds_to_hms(604800) == "7d"
    assert macros.seconds_to_hms(0.5) == "500ms"

    V = macros.Variable
    variables = {
        "city": V("city", "o'city"),
        "area": V("area", ("north", "o'south"), multi=True, include_all=True, all_value="'__all__'"),
        "kind": V("kind", macros.ALL_VALUE, multi=True, include_all=True, all_value="'__all__'"),
        "device": V("device", (macros.ALL_VALUE,), multi=True, include_all=True, options=("a-1", "b'2")),
        "one": V("one", "x", multi=True),
    }
    builtins = {"__interval": "1h", "__interval_ms": "3600000"}

    def interp(sql: str) -> str:
        return macros.interpolate_variables(sql, variables, builtins)

    assert interp("c = '$city'") == "c = 'o''city'"  # single value: quotes doubled, not added
    assert interp("a IN ($area)") == "a IN ('north','o''south')"
    assert interp("k IN ($kind)") == "k IN ('__all__')"  # custom all value, verbatim
    assert interp("d IN (${device})") == "d IN ('a-1','b''2')"  # All without all value: every option
    assert interp("x IN ($one)") == "x IN ('x')"
    assert interp("${area:csv} [[city]] ${area:sqlstring}") == "north,o'south o''city 'north','o''south'"
    assert (
        interp("$__timeFilter(t) $cityx $__interval $__interval_ms") == "$__timeFilter(t) $cityx 1h 3600000"
    )

    ctx = macros.PanelContext(day, max_data_points=300, min_interval="1h")
    sql = (
        "SELECT $__timeGroupAlias(t, $__interval), sum(v) / ($__interval_ms / 1000.0)\n"
        "FROM x WHERE $__timeFilter(t) AND c = '$city' "
        "GROUP BY 1"
    )
    assert macros.render(sql, variables, ctx, timescaledb=True) == (
        "SELECT time_bucket('3600.000s',t) AS \"time\", sum(v) / (3600000 / 1000.0)\n"
        "FROM x WHERE t BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-13T18:00:00Z' AND c = 'o''city' "
        "GROUP BY 1"
    )
    assert macros.go_float(300) == "300" and macros.go_float(604800) == "604800"
    assert macros.go_float(2592000) == "2.592e+06" and macros.go_float(0.02) == "0.02"


# --------------------------------------------------------------------------------------------------
# Generated files
# --------------------------------------------------------------------------------------------------


def test_committed_dashboards_equal_the_generator_output() -> None:
    files = generate.render_all()
    drift = [
        str(p.relative_to(REPO))
        for p, text in files.items()
        if not p.exists() or p.read_text(encoding="utf-8") != text
    ]
    drift += [str(p.relative_to(REPO)) for p in generate.stale_files(files)]
    assert not drift, f"out of date (run: python deploy/grafana/generate.py): {drift}"


def dashboards() -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text(encoding="utf-8")) for p in sorted((GRAFANA / "dashboards").glob("*.json"))
    ]


def query_panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in d["panels"] if p["type"] != "text"]


def test_provisioning_and_dashboards_are_consistent() -> None:
    ds = (GRAFANA / "provisioning" / "datasources" / "citykpi.yaml").read_text()
    prov = (GRAFANA / "provisioning" / "dashboards" / "citykpi.yaml").read_text()
    assert f"uid: {generate.DATASOURCE_UID}\n" in ds and f"type: {generate.DATASOURCE_TYPE}\n" in ds
    assert "timescaledb: true\n" in ds and "database: citykpi\n" in ds
    assert "type: file\n" in prov and "path: ${CITYKPI_GRAFANA_DASHBOARDS_DIR}\n" in prov
    used = set(re.findall(r"\$\{(\w+)\}", ds + prov))
    assert used == set(generate.ENV), "every environment variable is documented in generate.ENV"
    readme = (GRAFANA / "README.md").read_text()
    assert all(v in readme for v in used), "README.md documents every environment variable"
    run_local = (GRAFANA / "run-local.sh").read_text()
    assert all(v in run_local for v in used), "run-local.sh gives every variable a local default"

    boards = dashboards()
    assert [d["uid"] for d in boards] == sorted({d["uid"] for d in boards})
    assert {d["uid"] for d in boards} == {
        "citykpi-overview",
        "citykpi-air",
        "citykpi-noise",
        "citykpi-water-energy",
        "citykpi-traffic",
        "citykpi-ingestion",
    }
    for d in boards:
        assert d["schemaVersion"] == 39 and d["title"] in readme
        names = [v["name"] for v in d["templating"]["list"]]
        assert names[:4] == ["city", "area", "kind", "device"], d["uid"]
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                assert v["datasource"]["uid"] == generate.DATASOURCE_UID
            assert v["current"]["value"], f"{d['uid']} ${v['name']} has a default"
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids))
        for p in d["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
            if p["type"] == "text":
                continue
            assert p["type"] in ("timeseries", "table", "stat", "bargauge"), p["type"]
            assert p["datasource"]["uid"] == generate.DATASOURCE_UID
            for t in p["targets"]:
                assert t["datasource"]["uid"] == generate.DATASOURCE_UID
                assert t["format"] in ("time_series", "table") and t["rawSql"].strip()
                assert "--" not in t["rawSql"] and "/*" not in t["rawSql"], (
                    "no SQL comments (Grafana strips them)"
                )
                if p["type"] == "timeseries":
                    assert t["format"] == "time_series"


def test_european_aqi_bands_match_the_kernels() -> None:
    from processors.kernels import european_aqi_band

    for pollutant, bounds in generate.EU_AQI_UPPER_BOUNDS.items():
        probes = [0.0, *bounds, *(b + 0.01 for b in bounds)]
        got = european_aqi_band(pollutant, np.array(probes)).tolist()
        expected = [1, 1, 2, 3, 4, 2, 3, 4, 5]
        assert got == expected, pollutant


# --------------------------------------------------------------------------------------------------
# Every panel against the real database
# --------------------------------------------------------------------------------------------------

NUMERIC = {"int2", "int4", "int8", "float4", "float8", "numeric"}
TIMES = {"timestamptz", "timestamp", "date"}
TEXTS = {"text", "varchar", "bpchar", "char", "name", "unknown"}
HOSTILE = "x'); DROP TABLE readings; --"


async def fill_demo_city(dsn: str, hours: int = 96, step_min: int = 10) -> datetime:
    """`hours` of the demo city every `step_min` minutes, ending a minute ago, through the pipeline.
    Four days always hold weekday peak hours (travel time index) and, on the first day of a month,
    a complete day of the previous month (Lden needs day, evening and night hours)."""
    from ingest.config import Settings, SimulatorSettings
    from ingest.pipeline import Delivery, Message, Pipeline
    from ingest.routing import Router
    from ingest.simulator import CitySimulator
    from kpi_rollups.refresh import refresh_kpis
    from kpi_rollups.registry import import_registry_file
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
    views (schemas/access.py): a platform reader (every city) with the defaults, with every option
    of area, kind and device selected, and with every device selected (the list then holds the
    quote-breaking id); the demo city's reader with the defaults."""
    from processors.writer import TimescaleWriter, WriteBatch

    started = time.perf_counter()
    end = await fill_demo_city(tsdb)
    suffix = uuid.uuid4().hex[:6]
    platform, city_reader = f"dashboards_platform_{suffix}", f"dashboards_demo_{suffix}"
    owner = await asyncpg.connect(tsdb)
    try:
        assert await owner.fetchval("SELECT max(time) FROM readings") == end
        assert await owner.fetchval("SELECT count(*) FROM devices WHERE device_id = $1", HOSTILE) == 1
        assert await owner.fetchval("SELECT count(*) FROM dead_letters WHERE city_id = 'demo'") > 0
        assert await owner.fetchval("SELECT count(DISTINCT kpi_code) FROM kpi_values") == len(generate.KPIS)
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
            try:
                if explicit == {"device"}:
                    rng = macros.dashboard_range(boards[0], now)
                    variables, _ = await resolve_variables(conn, boards[0], rng, explicit)
                    assert HOSTILE in variables["device"].value
                for d in boards:
                    if role == city_reader and d["uid"] == "citykpi-ingestion":
                        # platform-only: batch provenance names every city's topics (the
                        # reader view gives city readers no rows of ingest_batches)
                        assert await conn.fetchval("SELECT count(*) FROM ingest_batches") == 0
                        continue
                    found, n = await check_dashboard(conn, d, now, explicit=explicit)
                    label = f"[{role.rsplit('_', 1)[0]}, selected: {sorted(explicit) or 'defaults'}]"
                    problems += [f"{label} {p}" for p in found]
                    checked += n
            finally:
                await conn.close()
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
    assert time.perf_counter() - started < 60


def test_every_query_inserts_variables_as_sqlstring() -> None:
    """Template variables go in as `${var:sqlstring}` (quoted, quotes doubled), never as a bare
    `$var` inside hand-written quotes that relies on standard_conforming_strings."""
    loose: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("rawSql", "query", "definition") and isinstance(value, str):
                    for m in re.finditer(r"\$\{?(\w+)(?::(\w+))?\}?|\[\[\w+", value):
                        if m.group(1) and (m.group(1).startswith("__") or m.group(2) == "sqlstring"):
                            continue
                        loose.append(f"{where}: {m.group(0)}")
                walk(value, where)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    for d in dashboards():
        walk(d, d["uid"])
    assert not loose
