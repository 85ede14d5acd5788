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
    known = "json, ngsi-ld, ngsi-v2, openaq, senml, sensor-community, sparkplug-b, ttn"
    assert f"known formats: {known}" in message


def test_config_show_from_a_checkout_uses_the_given_file_and_says_where_values_came_from(
    tmp_path: Path,
) -> None:
    """Run from a directory holding the local stack's urls.env and a .env, `--config prod.toml`
    wins over both; stderr names the source of each value that is not a default."""
    (tmp_path / ".stack").mkdir()
    (tmp_path / ".stack" / "urls.env").write_text(
        "CITYKPI_DATABASE__URL=postgresql://postgres@127.0.0.1:1/x\n"
    )
    (tmp_path / ".env").write_text("CITYKPI_MQTT__PORT=18831\n")
    prod = tmp_path / "prod.toml"
    prod.write_text('[database]\nurl = "postgresql://ingest:s3cr3t-pw@db.prod:5432/citykpi"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYKPI_")}
    out = subprocess.run(
        [CITYKPI, "config", "show", "--config", "prod.toml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "CITYKPI_LOG_LEVEL": "ERROR"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["database"]["url"] == "postgresql://ingest:***@db.prod:5432/citykpi"
    assert data["mqtt"]["port"] == 18831
    origins = " ".join(out.stderr.split())
    assert "database.url: config file prod.toml" in origins
    assert f"mqtt.port: .env in {tmp_path} (CITYKPI_MQTT__PORT)" in origins
    assert "log_level: environment (CITYKPI_LOG_LEVEL)" in origins
    assert "s3cr3t-pw" not in out.stdout + out.stderr


def test_alerts_import_evaluate_and_list_as_a_user_runs_them(tsdb: str, tmp_path: Path) -> None:
    """A file with an error imports nothing and names the rule; the shipped rules import; one
    evaluation runs; the city's events list (none yet: a fresh database has no readings)."""
    env = {"CITYKPI_DATABASE__URL": tsdb}
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nrule_id = "x"\nmetric = "pm25"\nstatistic = "reading"\n')
    out = run("alerts", "import", str(bad), env=env)
    assert out.returncode == 2 and "rule 1 (x)" in out.stderr and "needs a threshold" in out.stderr
    out = run("alerts", "import", "processors/default_alert_rules.toml", env=env)
    assert out.returncode == 0 and "12 rules, 12 new or changed" in out.stdout, out.stderr
    out = run("alerts", "evaluate", env=env)
    assert out.returncode == 0 and "0 new alert events" in out.stdout, out.stderr
    out = run("alerts", "list", "--city", "demo", env=env)
    assert out.returncode == 0 and "demo: latest alert events" in out.stdout, out.stderr
