"""The Grafana dashboard generator and macro expander, without a server: the expander against
Grafana's own expectations (macros_test.go), the committed JSON equal to what the generator writes,
provisioning consistent, AQI bands as the kernels compute them, variables quoted as sqlstring.
(tests/integration/test_grafana_dashboards.py runs every panel on a real database.)
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

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


def test_the_air_dashboard_reads_the_stored_aqi_and_exceedances_instead_of_deriving_them() -> None:
    """The AQI panels read eu_aqi_hourly (what the kernels computed, stored by the KPI refresh), the
    exceedances what the air formula counted (kpi_values); no panel recomputes running means,
    bands or day-validity rules in SQL."""
    air = next(d for d in dashboards() if d["uid"] == "citykpi-air")
    aqi = [p for p in query_panels(air) if "European AQI" in p["title"] and "KPI" not in p["title"]]
    assert len(aqi) == 3
    for p in aqi:
        assert all("eu_aqi_hourly" in t["rawSql"] for t in p["targets"])
    for p in query_panels(air):
        for t in p["targets"]:
            assert "23 hours" not in t["rawSql"] and "7 hours" not in t["rawSql"], p["title"]
            assert "THEN 5" not in t["rawSql"] and "hours >= 18" not in t["rawSql"], p["title"]


# --------------------------------------------------------------------------------------------------
# Every panel against the real database
# --------------------------------------------------------------------------------------------------


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


def test_the_noise_dashboard_shows_the_formulas_lden_instead_of_deriving_it() -> None:
    """Lday, Levening, Lnight and Lden come from kpi_values (the noise formula); no panel applies
    the evening and night penalties in SQL."""
    noise = next(d for d in dashboards() if d["uid"] == "citykpi-noise")
    sql = [t["rawSql"] for p in query_panels(noise) for t in p["targets"]]
    assert not [s for s in sql if "power(10" in s]
    assert any("'lden'" in s and "kpi_values" in s for s in sql)


def test_the_consumption_panels_read_what_the_meter_kernels_accepted() -> None:
    """Hourly consumption is the rollups' meter_consumption (resets, rollovers and noise judged by
    processors.kernels), not index differences re-derived with window functions in SQL."""
    board = next(d for d in dashboards() if d["uid"] == "citykpi-water-energy")
    consumption = [p for p in query_panels(board) if "consumption by area" in p["title"]]
    assert len(consumption) == 2
    for p in consumption:
        (t,) = p["targets"]
        assert "meter_consumption" in t["rawSql"] and "lag(" not in t["rawSql"]


def test_the_traffic_dashboard_shows_the_formulas_travel_time_index() -> None:
    """The travel time index per sensor is the formula's (kpi_values details: harmonic peak speed,
    free flow from the registry, night speeds or the city fact), not a second TTI rule in SQL."""
    board = next(d for d in dashboards() if d["uid"] == "citykpi-traffic")
    sql = {p["title"]: p["targets"][0]["rawSql"] for p in query_panels(board)}
    assert [t for t in sql if "Travel time index" in t and "$period" not in t] == []
    assert not [t for t, s in sql.items() if "free_flow" in s and "details" not in s]
