"""`citykpi replay` backfills archive files through the live path's validation, idempotently."""

from __future__ import annotations

import json
import time
from pathlib import Path

import asyncpg
import pytest

from tests.integration.test_cli import run

pytestmark = pytest.mark.integration
SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


async def test_sensor_community_archive_replays_once(tsdb: str) -> None:
    csv = SAMPLES / "sensor-community" / "sds011-archive.csv"
    first = run("replay", str(csv), env={"CITYKPI_DATABASE__URL": tsdb})
    second = run("replay", str(csv), env={"CITYKPI_DATABASE__URL": tsdb})
    assert first.returncode == 0, first.stderr
    assert "190 readings, 190 stored" in first.stdout  # 95 rows x (PM10, PM2.5)
    assert "0 stored, 190 already stored" in second.stdout
    conn = await asyncpg.connect(tsdb)
    try:
        pm10 = await conn.fetchval(
            "SELECT r.value FROM readings r JOIN metrics m USING (metric_id) "
            "JOIN devices d USING (device_key) "
            "WHERE m.name = 'pm10' AND d.device_id = 'sensor-community-15092' ORDER BY r.time LIMIT 1"
        )
    finally:
        await conn.close()
    first_row = csv.read_text().splitlines()[1].split(";")
    assert pm10 == pytest.approx(float(first_row[6]))


async def test_jsonl_replay_dead_letters_bad_lines_and_keeps_going(tsdb: str, tmp_path: Path) -> None:
    t = int(time.time()) - 3600
    lines = [json.dumps([{"bn": "st-1:", "bt": t + i, "n": "no2", "u": "ppb", "v": 10}]) for i in range(5)]
    lines.insert(2, "{broken")
    f = tmp_path / "packs.jsonl"
    f.write_text("\n".join(lines) + "\n")
    out = run("replay", str(f), "--format", "jsonl:senml", env={"CITYKPI_DATABASE__URL": tsdb})
    assert out.returncode == 0, out.stderr
    assert "5 readings, 5 stored" in out.stdout
    conn = await asyncpg.connect(tsdb)
    try:
        assert await conn.fetchval("SELECT min(value) FROM readings") == pytest.approx(19.0)  # 10 ppb NO2
        assert await conn.fetchval("SELECT reason FROM dead_letters") == "bad_json"
        assert await conn.fetchval('SELECT "offset" FROM dead_letters') == 3
    finally:
        await conn.close()


def test_unknown_format_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_text("hello\n")
    out = run("replay", str(f))
    assert out.returncode == 2
    assert "cannot tell the format" in out.stderr


async def test_jsonl_replay_applies_the_live_checks_and_keeps_payloads(tsdb: str, tmp_path: Path) -> None:
    """Replay decodes each line through the live path (Pipeline.decode_message): an oversized line,
    a payload naming another device than --device, and a bad line are dead letters with their
    payload and line number, as from a broker."""
    from core.config import Settings
    from ingest.replay import replay_file

    settings = Settings(database={"url": tsdb}, validation={"max_payload_bytes": 1024})  # type: ignore[arg-type]
    t = int(time.time()) - 3600
    lines = [
        json.dumps([{"bn": "st-1:", "bt": t, "n": "no2", "u": "ppb", "v": 10}]),
        json.dumps([{"bn": "st-1:", "bt": t + 1, "n": "no2", "u": "ppb", "v": 10, "x": "y" * 2000}]),
        json.dumps([{"bn": "other:", "bt": t + 2, "n": "no2", "u": "ppb", "v": 10}]),
        "{broken",
    ]
    f = tmp_path / "st-1.jsonl"
    f.write_text("\n".join(lines) + "\n")
    result = await replay_file(settings, f, "jsonl:senml", "demo", device="st-1")
    assert (result.items, result.stored, result.dead_letters) == (4, 1, 3)
    conn = await asyncpg.connect(tsdb)
    try:
        rows = await conn.fetch('SELECT reason, "offset", payload FROM dead_letters ORDER BY "offset"')
    finally:
        await conn.close()
    assert [(r["reason"], r["offset"]) for r in rows] == [
        ("payload_too_large", 2),
        ("device_mismatch", 3),
        ("bad_json", 4),
    ]
    assert [bytes(r["payload"]) for r in rows] == [line.encode() for line in lines[1:]]
