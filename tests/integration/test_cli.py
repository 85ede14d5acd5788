"""The `citykpi` command as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration
CITYKPI = str(Path(sys.executable).parent / "citykpi")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CITYKPI, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_help_lists_the_commands() -> None:
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("run", "migrate", "simulate", "config", "deadletters"):
        assert cmd in out.stdout


def test_config_show_prints_json_with_secrets_masked() -> None:
    out = run(
        "config",
        "show",
        env={
            "CITYKPI_DATABASE__URL": "postgresql://u:topsecret@h:5432/d",
            "CITYKPI_MQTT__PASSWORD": "alsosecret",
        },
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["database"]["url"] == "postgresql://u:***@h:5432/d"
    assert "topsecret" not in out.stdout + out.stderr
    assert "alsosecret" not in out.stdout + out.stderr


def test_invalid_config_fails_at_start_naming_the_field() -> None:
    out = run("config", "show", env={"CITYKPI_WRITER__BATCH_MAX_ROWS": "zero"})
    assert out.returncode == 2
    assert "writer.batch_max_rows" in out.stderr


def test_migrate_against_the_real_database(tsdb: str) -> None:
    out = run("migrate", env={"CITYKPI_DATABASE__URL": tsdb})
    assert out.returncode == 0, out.stderr
    assert "hypertables on" in out.stderr


def test_a_route_format_typo_stops_the_start_with_exit_2_naming_the_route(tmp_path: Path) -> None:
    config = tmp_path / "citykpi.toml"
    config.write_text(
        '[[mqtt.routes]]\nfilter = "city/+/sc/+"\nformat = "sensor.community"\ndevice_level = 4\n'
    )
    out = run("config", "show", "--config", str(config))
    assert out.returncode == 2
    message = " ".join(out.stderr.split())  # the console wraps long lines
    assert "route 'city/+/sc/+': unknown format 'sensor.community'" in message
    assert "known formats: json, ngsi-ld, ngsi-v2, openaq, senml, sensor-community, ttn" in message
