"""Meter KPIs end to end: `citykpi replay` (SenML JSON lines) -> `citykpi kpi refresh` -> kpi_values.

Each city is in UTC so the hand arithmetic needs no time-zone shift; the local day 2025-06-11 is
then one whole rollup_1d bucket (the case where per-bucket first/last values are not enough). A
step between two register readings belongs to the bucket of the reading it ends at; a meter's rate
is its accepted consumption / the time its steps cover; the city rate is the sum over meters x
(registry meter total / meters reporting); per inhabitant, litres (x 1000) per day for water
(EN:EN:WS:2C) and kWh x 365 per year for electricity in 2025 (EN:E:E:2C).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from kpi_rollups.registry import import_registry_file
from tests.integration.test_cli import run

pytestmark = pytest.mark.integration

DAY = date(2025, 6, 11)
WATER, ELECTRICITY = "EN:EN:WS:2C", "EN:E:E:2C"


def registry(population: float, water_total: int, electricity_total: int, devices: str) -> str:
    return f"""
city_id = "m"
valid_from = 2025-01-01

[[cities]]
city_id = "m"
name = "Meter town"
timezone = "UTC"

[[facts]]
key = "population"
value = {population}
[[facts]]
key = "water_meters_total"
value = {water_total}
[[facts]]
key = "electricity_meters_total"
value = {electricity_total}
{devices}
"""


def at(hour: float, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(hours=hour)


def senml(device: str, metric: str, unit: str, t: datetime, value: float) -> str:
    return json.dumps([{"bn": f"{device}:", "bt": t.timestamp(), "n": metric, "u": unit, "v": value}])


async def replay_and_refresh(
    dsn: str, tmp_path: Path, reg: str, lines: list[str], *refresh: tuple[str, ...], fmt: str = "jsonl:senml"
) -> dict[tuple[str, str], asyncpg.Record]:
    """Import the registry, replay the lines, refresh with the CLI; kpi_values by (code, period)."""
    (tmp_path / "reg.toml").write_text(reg)
    conn = await asyncpg.connect(dsn)
    try:
        await import_registry_file(conn, tmp_path / "reg.toml")
    finally:
        await conn.close()
    f = tmp_path / "meters.jsonl"
    f.write_text("\n".join(lines) + "\n")
    env = {"CITYKPI_DATABASE__URL": dsn}
    out = run("replay", str(f), "--format", fmt, "--city", "m", env=env)
    assert out.returncode == 0, out.stderr
    assert f"{len(lines)} stored" in out.stdout, out.stdout
    for args in refresh or (("--period", DAY.isoformat(), "--kind", "day"),):
        out = run("kpi", "refresh", "--city", "m", *args, env=env)
        assert out.returncode == 0, out.stderr + out.stdout
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT * FROM kpi_values WHERE city_id = 'm' AND component = ''")
    finally:
        await conn.close()
    return {(r["kpi_code"], f"{r['period_kind']} {r['period_start']}"): r for r in rows}


def details(row: asyncpg.Record) -> dict[str, object]:
    d = row["details"]
    return json.loads(d) if isinstance(d, str) else dict(d)


async def test_plausibility_is_a_rate_for_the_meter_size(tsdb: str, tmp_path: Path) -> None:
    """Item 1. A DN80 bulk meter read once a day advances 150 m3 a day: 6.25 m3/h, within its
    overload flow Q4 = 1.25 x Q3 = 1.25 x 63 = 78.75 m3/h (ISO 4064), so the step ending at 00:00 on
    the 11th (150 m3 over 24 h) is consumption: 150 m3/day. (The old fixed 10 m3 step dropped it.)
    A household meter (default DN20, Q4 = 5 m3/h) read hourly at 0.25 m3/day: 23 steps of 0.25/24 m3
    over 23 h = 0.25 m3/day, except one reading at 12:00 jumping by 500 m3 (500 m3 in an hour is
    100 x its Q4): rejected, and 13:00 counts from 11:00's reading, so the total is unchanged.
    City: (150 + 0.25) m3/day x 1000 L / 1000 inhabitants = 150.25 L/inhabitant/day; registry total
    2 = 2 reporting, no extrapolation; the rejected step is in the label (it excluded no time: the
    13:00 step covers 11:00-13:00).
    """
    reg = registry(
        1000,
        2,
        1,
        """
[[devices]]
device_id = "bulk-1"
expected_interval_s = 86400
meter_dn = 80
[[devices]]
device_id = "home-1"
expected_interval_s = 3600
""",
    )
    lines = [senml("bulk-1", "water_volume_total", "m3", at(24 * k - 24), 10_000 + 150 * k) for k in range(3)]
    for h in range(24):
        v = 20 + 0.25 / 24 * h + (500 if h == 12 else 0)
        lines.append(senml("home-1", "water_volume_total", "m3", at(h), v))
    v = await replay_and_refresh(tsdb, tmp_path, reg, lines)
    water = v[(WATER, f"day {DAY}")]
    assert water["value"] == pytest.approx(150.25)
    d = details(water)
    assert d["rejected_steps"] == 1 and d["excluded_share"] == 0.0
    assert water["quality_label"] == (
        "Based on accurate measurements; 1 implausible meter step excluded (0.0 % of metered time)"
    )
    assert water["valid"]


async def test_register_noise_is_zero_consumption_not_a_reset(tsdb: str, tmp_path: Path) -> None:
    """Item 2. One inhabitant, one water and one electricity meter, read hourly 00:00-23:00.
    Water rises 0.075 m3/h; electricity 0.75 kWh/h. At 05:00, 11:00 and 17:00 each register reads
    slightly below its previous reading (water -0.002 m3, within the 5 L noise tolerance; electricity
    -0.03 kWh, within 0.1 kWh): zero consumption, and the next step counts from the high-water mark,
    so consumption is last - first = 23 h x rate. Water: 23 x 0.075 = 1.725 m3 over 23 h = 1.8
    m3/day = 1,800 L/inhabitant/day (a reset from 0 would add the whole index each time: the
    32,400 of the issue). Electricity: 23 x 0.75 = 17.25 kWh over 23 h = 18 kWh/day x 365 days =
    6,570 kWh/inhabitant/year.
    """
    reg = registry(
        1,
        1,
        1,
        """
[[devices]]
device_ids = ["w-1", "e-1"]
expected_interval_s = 3600
""",
    )
    lines = []
    w_prev = e_prev = 0.0
    for h in range(24):
        w, e = 1234.5 + 0.075 * h, 5000 + 0.75 * h
        if h in (5, 11, 17):
            w, e = w_prev - 0.002, e_prev - 0.03
        lines += [
            senml("w-1", "water_volume_total", "m3", at(h), w),
            senml("e-1", "energy_total", "kWh", at(h), e),
        ]
        w_prev, e_prev = w, e
    v = await replay_and_refresh(tsdb, tmp_path, reg, lines)
    water, elec = v[(WATER, f"day {DAY}")], v[(ELECTRICITY, f"day {DAY}")]
    assert water["value"] == pytest.approx(1800.0)
    assert elec["value"] == pytest.approx(6570.0)
    for row in (water, elec):
        d = details(row)
        assert (d["noise_steps"], d["resets_handled"], d["rejected_steps"]) == (3, 0, 0)
        assert row["quality_label"] == "Based on accurate measurements"


async def test_rollover_from_the_register_size_in_the_registry(tsdb: str, tmp_path: Path) -> None:
    """Item 3. A five-digit register (99,999 then 0: rollover_at = 100000 in the registry) starts at
    99,995.2 m3 at 00:00 and rises 0.5 m3/h: at 10:00 it reads 0.2 (99,999.7 + 0.5 wrapped). The
    wrap is 100000 - 99,999.7 + 0.2 = 0.5 m3, so 23 steps of 0.5 = 11.5 m3 over 23 h = 12 m3/day;
    10 inhabitants -> 1,200 L/inhabitant/day. Counted as a reset (from 0) it would be 11.2 m3, 1,168.7.
    """
    reg = registry(
        10,
        1,
        1,
        """
[[devices]]
device_id = "w-5digit"
expected_interval_s = 3600
rollover_at = 100000
""",
    )
    lines = [
        senml("w-5digit", "water_volume_total", "m3", at(h), round((99_995.2 + 0.5 * h) % 100_000, 3))
        for h in range(24)
    ]
    v = await replay_and_refresh(tsdb, tmp_path, reg, lines)
    water = v[(WATER, f"day {DAY}")]
    assert water["value"] == pytest.approx(1200.0)
    assert details(water)["rollovers_handled"] == 1 and details(water)["resets_handled"] == 0


async def test_a_reset_inside_a_daily_bucket_counts_in_month_and_year(tsdb: str, tmp_path: Path) -> None:
    """Item 4. One meter, one inhabitant, hourly readings 10-12 June 2025 (72 readings), 0.3 m3/day
    (0.0125 m3/h). At 12:00 on the 11th the meter restarts from 0 and reads 0.0125. Every step is
    0.0125 m3 (the reset is counted from 0), so 71 steps over 71 h = 0.3 m3/day = 300 L/inhabitant/
    day, for the day, for June (a whole rollup_1d bucket holds the reset) and for 2025.
    Coverage of June: 72 readings x 1 h / 720 h = 0.1.
    """
    reg = registry(
        1,
        1,
        1,
        """
[[devices]]
device_id = "w-1"
expected_interval_s = 3600
""",
    )
    lines, index = [], 500.0
    for k in range(72):
        index = 0.0125 if k == 24 + 12 else index + (0.0125 if k else 0.0)
        lines.append(senml("w-1", "water_volume_total", "m3", at(k, date(2025, 6, 10)), index))
    v = await replay_and_refresh(
        tsdb,
        tmp_path,
        reg,
        lines,
        ("--period", DAY.isoformat(), "--kind", "day"),
        ("--period", "2025-06", "--kind", "month"),
        ("--period", "2025", "--kind", "year"),
    )
    for period in (f"day {DAY}", "month 2025-06-01", "year 2025-01-01"):
        row = v[(WATER, period)]
        assert row["value"] == pytest.approx(300.0), period
    month = v[(WATER, "month 2025-06-01")]
    assert details(month)["resets_handled"] == 1
    assert month["coverage"] == pytest.approx(72 / 720)
