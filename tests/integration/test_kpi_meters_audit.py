"""Audit variations on meter consumption (issue 13) through `citykpi replay` -> `kpi refresh`."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from tests.integration.test_cli import run
from tests.integration.test_kpi_meters_e2e import DAY, WATER, at, details, registry, replay_and_refresh, senml

pytestmark = pytest.mark.integration

ONE_METER = registry(
    1,
    1,
    1,
    """
[[devices]]
device_id = "w-1"
expected_interval_s = 3600
rollover_at = 100000
""",
)


def hourly(values: list[float]) -> list[str]:
    return [senml("w-1", "water_volume_total", "m3", at(h), v) for h, v in enumerate(values)]


async def water_day(tsdb: str, tmp_path: Path, lines: list[str]) -> tuple[float, dict[str, object]]:
    v = await replay_and_refresh(tsdb, tmp_path, ONE_METER, lines)
    row = v[(WATER, f"day {DAY}")]
    return row["value"], details(row)


async def test_replayed_in_reverse_order(tsdb: str, tmp_path: Path) -> None:
    """0.075 m3/h for 23 h = 1.8 m3/day = 1,800 L/inhabitant/day, whatever the file's order."""
    values = [1234.5 + 0.075 * h for h in range(24)]
    value, d = await water_day(tsdb, tmp_path, list(reversed(hourly(values))))
    assert value == pytest.approx(1800.0), d


async def test_late_half_replayed_after_the_other_half(tsdb: str, tmp_path: Path) -> None:
    """The even hours first, the odd hours in a second replay (late data): still 1,800."""
    values = [1234.5 + 0.075 * h for h in range(24)]
    lines = hourly(values)
    await replay_and_refresh(tsdb, tmp_path, ONE_METER, lines[0::2])
    f = tmp_path / "late.jsonl"
    f.write_text("\n".join(lines[1::2]) + "\n")
    env = {"CITYKPI_DATABASE__URL": tsdb}
    assert run("replay", str(f), "--format", "jsonl:senml", "--city", "m", env=env).returncode == 0
    out = run("kpi", "refresh", "--city", "m", "--period", DAY.isoformat(), "--kind", "day", env=env)
    assert out.returncode == 0
    conn = await asyncpg.connect(tsdb)
    try:
        row = await conn.fetchrow(
            "SELECT value, details FROM kpi_values WHERE city_id = 'm' AND kpi_code = $1 "
            "AND period_kind = 'day' AND component = ''",
            WATER,
        )
    finally:
        await conn.close()
    assert row["value"] == pytest.approx(1800.0), row


async def test_noise_drifting_down_a_few_litres_each_hour(tsdb: str, tmp_path: Path) -> None:
    """Rises 0.075 m3/h; at 05:00-07:00 it reads 3 L lower each hour (each step within the 5 L
    tolerance, 9 L below the high-water mark at 07:00), then resumes at the 04:00 level + 0.075 per
    hour from 08:00. The register advances last - first = 1.5 m3 over the 23 h: 1,565.2 L/inh/day,
    no reset. (Seen: 07:00 taken as a reset from 0, rejected as implausible and its hour excluded:
    1,642.9.)"""
    values = []
    for h in range(24):
        if h in (5, 6, 7):
            values.append(values[-1] - 0.003)
        elif h > 7:
            values.append(1234.5 + 0.075 * 4 + 0.075 * (h - 7))
        else:
            values.append(1234.5 + 0.075 * h)
    expected_m3 = values[-1] - values[0]  # the high-water mark rises by exactly this much
    value, d = await water_day(tsdb, tmp_path, hourly(values))
    # accepted consumption over the 23 h the steps cover, per day, in litres
    assert value == pytest.approx(expected_m3 / 23 * 24 * 1000), d
    assert d["resets_handled"] == 0, d


async def test_jitter_a_few_litres_back_twice_on_a_new_meter(tsdb: str, tmp_path: Path) -> None:
    """A new meter (index 0.6 m3) rises 0.075 m3/h, except 05:00 and 06:00, each 3 L below the
    reading before (each a backward step within the 5 L tolerance; 06:00 is 6 L below the 04:00
    high-water mark). The register advances last - first = 1.5 m3 over 23 h: 1,565.2 L/inh/day.
    (Seen: 06:00 counted as a reset from 0, its 0.894 m3 added: 2,504.3.)"""
    values = []
    for h in range(24):
        if h in (5, 6):
            values.append(values[-1] - 0.003)
        elif h > 6:
            values.append(0.6 + 0.075 * 4 + 0.075 * (h - 6))
        else:
            values.append(0.6 + 0.075 * h)
    values[-1] = values[0] + 1.5
    value, d = await water_day(tsdb, tmp_path, hourly(values))
    assert value == pytest.approx(1.5 / 23 * 24 * 1000), d


async def test_rollover_with_noise_on_both_sides(tsdb: str, tmp_path: Path) -> None:
    """A five-digit register at 99,999.0 rises 0.5 m3/h; 02:00 dips 2 L below 01:00 (noise), 03:00
    is 99,999.0 + 1.5 - 100,000 wrapped = 0.5, 04:00 dips 2 L below that (noise), then +0.5/h.
    High-water rise over 23 h = 23 x 0.5 = 11.5 m3 -> 12 m3/day = 12,000 L/inhabitant/day."""
    values = []
    for h in range(24):
        v = (99_999.0 + 0.5 * h) % 100_000
        if h in (2, 4):
            v = values[-1] - 0.002
        values.append(round(v, 3))
    value, d = await water_day(tsdb, tmp_path, hourly(values))
    assert value == pytest.approx(12_000.0), (values, d)
    assert d["rollovers_handled"] == 1 and d["resets_handled"] == 0, d
