"""Registry import into the real database, the KPI command line and the periodic refresh loop."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from typer.testing import CliRunner

from core.config import Settings
from kpi_rollups.cli import kpi_app, registry_app, report
from kpi_rollups.refresh import kpi_refresh_loop, kpi_refresh_process, refresh_city_now
from kpi_rollups.registry import RegistryImportError, import_registry_file
from tests.conftest import REPO
from tests.integration.test_kpi_formulas import DAY, city_a

pytestmark = pytest.mark.integration
DEMO = REPO / "kpi_rollups" / "demo_registry.toml"


async def fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def demo_refresh_settings(tsdb: str, **refresh: float) -> Settings:
    """The demo city on `tsdb`, its KPIs refreshed every 0.2 s (and `refresh` settings)."""
    return Settings(
        database={"url": tsdb},  # type: ignore[arg-type]
        cities=[{"city_id": "demo", "name": "Demo", "timezone": "Europe/Paris"}],  # type: ignore[list-item]
        kpi_refresh_interval_s=0.2,
        **refresh,  # type: ignore[arg-type]
    )


async def test_demo_registry_imports_idempotently(tsdb: str) -> None:
    first = await import_registry_file(tsdb, DEMO)
    second = await import_registry_file(tsdb, DEMO)
    assert first == second == {"cities": 1, "areas": 3, "facts": 7, "targets": 4, "devices": 162}
    (row,) = await fetch(
        tsdb,
        """SELECT (SELECT count(*) FROM areas) AS areas,
        (SELECT sum(population) FROM areas) AS pop, (SELECT count(*) FROM city_facts) AS facts,
        (SELECT count(*) FROM devices WHERE city_id = 'demo') AS devices,
        (SELECT timezone FROM cities WHERE city_id = 'demo') AS tz""",
    )
    assert (row["areas"], row["pop"], row["facts"], row["devices"], row["tz"]) == (
        3,
        120000,
        7,
        162,
        "Europe/Paris",
    )
    (t,) = await fetch(
        tsdb,
        "SELECT kind, area_id, expected_interval_s, metadata FROM devices WHERE device_id = $1",
        "urn:ngsi-ld:TrafficFlowObserved:traffic-0001",
    )
    assert (t["kind"], t["area_id"], t["expected_interval_s"]) == ("traffic", "centre", 10.0)
    assert json.loads(t["metadata"]) == {"street_km": 1.5, "segment_id": "arterial-01"}
    noise_areas = await fetch(
        tsdb, "SELECT area_id, count(*) FROM devices WHERE kind = 'noise' GROUP BY 1 ORDER BY 1"
    )
    assert [(r[0], r[1]) for r in noise_areas] == [("centre", 5), ("north", 4), ("south", 3)]


async def test_a_file_with_a_bad_reference_imports_nothing(tsdb: str, tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("""
city_id = "demo"
valid_from = 2025-01-01
[[areas]]
area_id = "centre"
population = 1000
[[devices]]
device_id = "noise-0001"
area_id = "nowhere"
[[facts]]
city_id = "atlantis"
key = "population"
value = 5
""")
    with pytest.raises(RegistryImportError) as e:
        await import_registry_file(tsdb, f)
    text = str(e.value)
    assert "facts #1: city_id: unknown city 'atlantis'" in text
    assert "devices #1 (device_id='noise-0001'): area_id: unknown area 'nowhere'" in text
    assert (await fetch(tsdb, "SELECT count(*) FROM areas"))[0][0] == 0  # the valid area was rolled back


async def test_csv_sections_and_metadata_merge(tsdb: str, tmp_path: Path) -> None:
    areas = tmp_path / "areas.csv"
    areas.write_text(
        "city_id,area_id,name,population,area_km2,valid_from\n"
        "demo,centre,Centre,1000,2.5,2025-01-01\ndemo,north,,2000,,2025-01-01\n"
    )
    devices = tmp_path / "devices.csv"
    devices.write_text(
        'device_id,kind,area_id,street_km,metadata\ntraffic-0001,traffic,centre,1.2,"{""lanes"": 2}"\n'
    )
    role = tmp_path / "role.csv"
    role.write_text("device_id,role\ntraffic-0001,counter\n")
    assert (await import_registry_file(tsdb, areas))["areas"] == 2
    assert (await import_registry_file(tsdb, devices, default_city="demo"))["devices"] == 1
    await import_registry_file(tsdb, role, default_city="demo")
    (d,) = await fetch(tsdb, "SELECT kind, area_id, metadata FROM devices WHERE device_id = 'traffic-0001'")
    assert (d["kind"], d["area_id"]) == ("traffic", "centre")  # not wiped by the second file
    assert json.loads(d["metadata"]) == {"lanes": 2, "street_km": 1.2, "role": "counter"}
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "city_id,area_id,population,valid_from\ndemo,east,many,2025-01-01\ndemo,west,5,2025-13-01\n"
    )
    with pytest.raises(RegistryImportError) as e:
        await import_registry_file(tsdb, bad)
    assert any(x.startswith("areas line 2 (area_id='east'): population:") for x in e.value.errors)
    assert any(x.startswith("areas line 3 (area_id='west'): valid_from:") for x in e.value.errors)


def _env(dsn: str) -> dict[str, str]:
    return {"CITYKPI_DATABASE__URL": dsn, "CITYKPI_CONFIG_FILE": ""}


async def test_cli_import_refresh_show_and_report(tsdb: str, tmp_path: Path) -> None:
    runner = CliRunner()

    def invoke(app: object, *args: str) -> tuple[int, str]:
        r = runner.invoke(app, list(args), env=_env(tsdb))  # type: ignore[arg-type]
        return r.exit_code, r.output

    bad = tmp_path / "bad.toml"
    bad.write_text('city_id = "demo"\n[[areas]]\narea_id = "x"\npopulation = -5\nvalid_from = 2025-01-01\n')
    code, output = await asyncio.to_thread(invoke, registry_app, "import", str(bad))
    assert code == 2
    assert "areas #1 (area_id='x'): population: Input should be greater than or equal to 0" in output
    code, output = await asyncio.to_thread(invoke, registry_app, "import", str(DEMO), "--dry-run")
    assert code == 0 and "dry run" in output
    assert (await fetch(tsdb, "SELECT count(*) FROM areas"))[0][0] == 0

    await city_a(tsdb, tmp_path)
    code, output = await asyncio.to_thread(
        invoke, kpi_app, "refresh", "--city", "a", "--period", DAY.isoformat()
    )
    assert code == 0, output
    # 22 values: 10 air components (with o3_peak_season, so2_24h_p99 and sdg_11_6_2), 3 noise, 9 other KPIs
    assert "EN:EN:AQ:1C" in output and "Air pollution" in output and "22 KPI values stored" in output
    rows = await fetch(tsdb, "SELECT component FROM kpi_values WHERE component = 'sdg_11_6_2'")
    assert len(rows) == 1
    code, output = await asyncio.to_thread(invoke, kpi_app, "show", "--city", "a", "--kind", "day")
    assert code == 0, output
    assert "EC:I:T:5A" in output and "2025-06-10" in output
    code, output = await asyncio.to_thread(invoke, kpi_app, "show", "--city", "nowhere")
    assert code == 1

    import typer

    app = typer.Typer()
    app.command("report")(report)
    app.command("noop")(lambda: None)  # a group, as when mounted in ingest/cli.py
    code, output = await asyncio.to_thread(
        invoke, app, "report", "--city", "a", "--year", "2025", "--out", str(tmp_path / "rep")
    )
    assert code == 0, output
    assert (tmp_path / "rep" / "a-2025-u4ssc.html").is_file() and (
        tmp_path / "rep" / "a-2025-u4ssc.md"
    ).is_file()


# city a's June 2025 data is late data (its days are marked for a recompute): not these tests' topic
CLEAR_LATE_MARKS = "DELETE FROM kpi_pending_days"


async def test_refresh_loop_fills_the_current_periods_of_every_city(tsdb: str, tmp_path: Path) -> None:
    await city_a(tsdb, tmp_path)
    await fetch(tsdb, CLEAR_LATE_MARKS)
    settings = Settings(
        database={"url": tsdb},  # type: ignore[arg-type]
        cities=[
            {"city_id": "demo", "name": "Demo", "timezone": "Europe/Paris"},  # type: ignore[list-item]
            {"city_id": "a", "name": "A", "timezone": "Europe/Paris"},
            {"city_id": "ghost", "name": "Not in the database", "timezone": "UTC"},
        ],
        kpi_refresh_interval_s=0.2,
    )
    task = asyncio.create_task(kpi_refresh_loop(settings))
    today = datetime.now(UTC).astimezone(ZoneInfo("Europe/Paris")).date()
    latest = "SELECT max(computed_at) FROM kpi_values WHERE city_id = 'a' AND period_kind = 'day'"
    try:
        rows: list[asyncpg.Record] = []
        for _ in range(100):
            await asyncio.sleep(0.1)
            rows = await fetch(tsdb, "SELECT DISTINCT city_id, period_kind, period_start FROM kpi_values")
            if len(rows) == 6:
                break
        first = (await fetch(tsdb, latest))[0][0]
        for _ in range(50):  # and it keeps going: a second round recomputes
            await asyncio.sleep(0.1)
            if (await fetch(tsdb, latest))[0][0] > first:
                break
        else:
            pytest.fail("no second refresh round")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    starts = {(r[0], r[1]): r[2] for r in rows}
    for city in ("demo", "a"):  # the unknown city failed, was logged, and did not stop the others
        assert starts[(city, "day")] == today
        assert starts[(city, "month")] == today.replace(day=1)
        assert starts[(city, "year")] == today.replace(month=1, day=1)


async def test_the_month_and_year_are_recomputed_on_their_own_slower_cadence(tsdb: str) -> None:
    """Each round recomputes the day; the month and year (whose cost grows with the data) only every
    kpi_refresh_month_year_s: here the first round only."""
    await import_registry_file(tsdb, DEMO)
    settings = demo_refresh_settings(tsdb, kpi_refresh_month_year_s=3600)
    computed = "SELECT period_kind, max(computed_at) FROM kpi_values GROUP BY 1"
    task = asyncio.create_task(kpi_refresh_loop(settings))
    try:
        first: dict[str, datetime] = {}
        for _ in range(100):
            await asyncio.sleep(0.1)
            first = {r[0]: r[1] for r in await fetch(tsdb, computed)}
            if len(first) == 3:
                break
        for _ in range(3):  # three more rounds at least
            for _ in range(50):
                await asyncio.sleep(0.1)
                later = {r[0]: r[1] for r in await fetch(tsdb, computed)}
                if later["day"] > first["day"]:
                    break
            else:
                pytest.fail("the day was not recomputed")
            assert later["month"] == first["month"] and later["year"] == first["year"]
            first["day"] = later["day"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_month_refresh_held_up_does_not_hold_up_the_day(tsdb: str) -> None:
    """The month and year run on a schedule of their own: while the month's store waits (here on its
    advisory lock, held by another session, as a year's refresh of a large city takes minutes), the
    day is still recomputed every round; the month is stored once it can go on."""
    await import_registry_file(tsdb, DEMO)
    settings = demo_refresh_settings(tsdb, kpi_refresh_month_year_s=3600)
    month = datetime.now(UTC).astimezone(ZoneInfo("Europe/Paris")).date().replace(day=1)
    computed = "SELECT period_kind, count(*), max(computed_at) FROM kpi_values GROUP BY 1"
    holder = await asyncpg.connect(tsdb)
    hold = holder.transaction()
    await hold.start()
    await holder.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"kpi:demo:month:{month}")
    task = asyncio.create_task(kpi_refresh_loop(settings))
    try:
        day_times: set[datetime] = set()
        for _ in range(100):
            await asyncio.sleep(0.1)
            kinds = {r[0]: r[2] for r in await fetch(tsdb, computed)}
            if "day" in kinds:
                day_times.add(kinds["day"])
            if len(day_times) >= 4:
                break
        assert len(day_times) >= 4, "the day was not recomputed while the month was held up"
        assert "month" not in kinds and "year" not in kinds
        await hold.rollback()
        for _ in range(100):
            await asyncio.sleep(0.1)
            kinds = {r[0]: r[2] for r in await fetch(tsdb, computed)}
            if {"month", "year"} <= kinds.keys():
                break
        assert {"month", "year"} <= kinds.keys()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await holder.close()


async def test_the_service_refreshes_in_a_process_of_its_own_and_stops_it(tsdb: str) -> None:
    """The service's refresh runs off the ingest event loop: in a child process, which writes the
    current periods, ends when cancelled, and whose death is an error (the supervisor restarts it)."""
    await import_registry_file(tsdb, DEMO)
    settings = demo_refresh_settings(tsdb)
    task = asyncio.create_task(kpi_refresh_process(settings))
    try:
        for _ in range(300):
            await asyncio.sleep(0.1)
            if len(await fetch(tsdb, "SELECT DISTINCT period_kind FROM kpi_values")) == 3:
                break
        else:
            pytest.fail("the refresh process wrote no KPIs")
        (child,) = [p for p in multiprocessing.active_children() if p.name == "citykpi-kpi-refresh"]
        assert child.pid != os.getpid()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not child.is_alive()

    task = asyncio.create_task(kpi_refresh_process(settings))
    for _ in range(50):
        await asyncio.sleep(0.1)
        children = [p for p in multiprocessing.active_children() if p.name == "citykpi-kpi-refresh"]
        if children:
            break
    assert children[0].pid is not None
    os.kill(children[0].pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="exited with code -9"):
        await asyncio.wait_for(task, 10)


async def test_after_local_midnight_the_periods_that_ended_are_refreshed_once_more(
    tsdb: str, tmp_path: Path
) -> None:
    await city_a(tsdb, tmp_path)
    await fetch(tsdb, CLEAR_LATE_MARKS)
    # 2026-01-01 00:10 in Paris: the day, month and year that ended are 2025-12-31, 2025-12, 2025
    now = datetime(2025, 12, 31, 23, 10, tzinfo=UTC)
    today = await refresh_city_now(tsdb, "a", "Europe/Paris", now, last_day=datetime(2025, 12, 31).date())
    assert str(today) == "2026-01-01"
    rows = await fetch(tsdb, "SELECT DISTINCT period_kind, period_start::text FROM kpi_values ORDER BY 1, 2")
    assert [tuple(r) for r in rows] == [
        ("day", "2025-12-31"),
        ("day", "2026-01-01"),
        ("month", "2025-12-01"),
        ("month", "2026-01-01"),
        ("year", "2025-01-01"),
        ("year", "2026-01-01"),
    ]
