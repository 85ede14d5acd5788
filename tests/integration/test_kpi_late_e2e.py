"""Late data end to end: `citykpi replay` of a late reading marks its day in the ingest transaction;
the service's refresh round (kpi_rollups.refresh.refresh_city_now, what kpi_refresh_loop runs)
recomputes exactly that day, its month and its year; kpi_values keeps the revisions, and
`citykpi kpi show --history` shows them."""

from __future__ import annotations

from datetime import UTC, date, datetime

import asyncpg
import pytest

from kpi_rollups.refresh import refresh_city_now
from tests.integration.test_cli import run
from tests.integration.test_kpi_meters_e2e import at, registry, replay_and_refresh, senml

pytestmark = pytest.mark.integration

JUNE_10, JUNE_11 = date(2025, 6, 10), date(2025, 6, 11)
NOW = datetime.now(UTC)


async def fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def pm25_rows(dsn: str) -> dict[str, asyncpg.Record]:
    rows = await fetch(
        dsn,
        "SELECT * FROM kpi_values WHERE city_id = 'm' AND kpi_code = 'EN:EN:AQ:1C' AND component = 'pm25'",
    )
    return {f"{r['period_kind']} {r['period_start']}": r for r in rows}


async def test_a_late_reading_recomputes_its_day_month_and_year_with_a_revision(tsdb, tmp_path) -> None:
    """PM2.5 at one station, hourly, 10 µg/m³ on 10 and 11 June 2025, 10 June's 12:00 missing.
    Day 10: 23 hours of 10 -> 10.0; June and 2025 (mean of the hourly means): 10.0. The 12:00 reading
    then arrives late at 34: day 10 = (23 x 10 + 34) / 24 = 11.0; June and 2025 = (47 x 10 + 34) / 48
    = 10.5; day 11 is not recomputed (same computed_at, still revision 1)."""
    reg = registry(1000, 1, 1, '\n[[devices]]\ndevice_id = "air-1"\nexpected_interval_s = 3600\n')
    lines = [
        senml("air-1", "pm25", "ug/m3", at(h, d), 10.0)
        for d in (JUNE_10, JUNE_11)
        for h in range(24)
        if (d, h) != (JUNE_10, 12)
    ]
    await replay_and_refresh(
        tsdb,
        tmp_path,
        reg,
        lines,
        ("--period", "2025-06-10", "--kind", "day"),
        ("--period", "2025-06-11", "--kind", "day"),
        ("--period", "2025-06", "--kind", "month"),
        ("--period", "2025", "--kind", "year"),
    )
    assert {r["day"] for r in await fetch(tsdb, "SELECT day FROM kpi_pending_days")} == {JUNE_10, JUNE_11}
    await refresh_city_now(tsdb, "m", "UTC", NOW)  # serves the marks of the first replay: no change
    assert await fetch(tsdb, "SELECT * FROM kpi_pending_days") == []
    before = await pm25_rows(tsdb)
    assert before["day 2025-06-10"]["value"] == pytest.approx(10.0)
    assert before["day 2025-06-10"]["revision"] == 1 and before["day 2025-06-10"]["trigger"] == "cli"

    late = tmp_path / "late.jsonl"
    late.write_text(senml("air-1", "pm25", "ug/m3", at(12, JUNE_10), 34.0) + "\n")
    env = {"CITYKPI_DATABASE__URL": tsdb}
    out = run("replay", str(late), "--format", "jsonl:senml", "--city", "m", env=env)
    assert out.returncode == 0 and "1 stored" in out.stdout, out.stdout + out.stderr
    assert [r["day"] for r in await fetch(tsdb, "SELECT day FROM kpi_pending_days")] == [JUNE_10]
    await refresh_city_now(tsdb, "m", "UTC", NOW)
    after = await pm25_rows(tsdb)
    for key, value in (("day 2025-06-10", 11.0), ("month 2025-06-01", 10.5), ("year 2025-01-01", 10.5)):
        assert after[key]["value"] == pytest.approx(value), key
        assert (after[key]["revision"], after[key]["trigger"]) == (2, "late data"), key
    assert after["day 2025-06-11"]["computed_at"] == before["day 2025-06-11"]["computed_at"]
    assert after["day 2025-06-11"]["revision"] == 1
    assert await fetch(tsdb, "SELECT * FROM kpi_pending_days") == []
    history = await fetch(
        tsdb,
        "SELECT revision, value, trigger FROM kpi_value_revisions WHERE component = 'pm25' "
        "AND period_kind = 'day' AND period_start = $1 ORDER BY revision",
        JUNE_10,
    )
    assert [(r[0], round(r[1], 6), r[2]) for r in history] == [(1, 10.0, "cli"), (2, 11.0, "late data")]

    out = run("kpi", "show", "--city", "m", "--period", "2025-06-10", "--history", env=env)
    assert out.returncode == 0, out.stderr
    assert "late data" in out.stdout and "revisions" in out.stdout


async def test_a_redelivered_late_reading_marks_nothing(tsdb, tmp_path) -> None:
    """Only readings the insert reports as new are marked: replaying the same file again stores
    nothing and leaves no mark once the first ones were served."""
    reg = registry(1000, 1, 1, '\n[[devices]]\ndevice_id = "air-1"\nexpected_interval_s = 3600\n')
    lines = [senml("air-1", "pm25", "ug/m3", at(h, JUNE_10), 10.0) for h in range(3)]
    await replay_and_refresh(tsdb, tmp_path, reg, lines)
    await refresh_city_now(tsdb, "m", "UTC", NOW)
    out = run(
        "replay",
        str(tmp_path / "meters.jsonl"),
        "--format",
        "jsonl:senml",
        "--city",
        "m",
        env={"CITYKPI_DATABASE__URL": tsdb},
    )
    assert "0 stored" in out.stdout, out.stdout
    assert await fetch(tsdb, "SELECT * FROM kpi_pending_days") == []
