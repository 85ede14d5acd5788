"""The configuration model: defaults, environment, TOML, validation messages and masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError, load_settings, mask_dsn, masked_dump


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env or .stack/urls.env from the repo
    monkeypatch.delenv("CITYKPI_CONFIG_FILE", raising=False)
    for k in list(__import__("os").environ):
        if k.startswith("CITYKPI_"):
            monkeypatch.delenv(k)


def test_defaults_point_at_the_local_stack() -> None:
    s = load_settings()
    assert s.database.url.get_secret_value() == "postgresql://postgres@127.0.0.1:15433/citykpi"
    assert (s.mqtt.host, s.mqtt.port) == ("127.0.0.1", 18830)
    assert s.kafka.bootstrap_servers == "127.0.0.1:19092"


def test_environment_overrides_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYKPI_MQTT__PORT", "1884")
    monkeypatch.setenv("CITYKPI_WRITER__BATCH_MAX_ROWS", "123")
    s = load_settings()
    assert s.mqtt.port == 1884
    assert s.writer.batch_max_rows == 123


def test_toml_file_is_read_and_env_wins_over_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "citykpi.toml"
    f.write_text('[mqtt]\nport = 2883\nclient_id = "edge-7"\n[kafka]\ngroup_id = "g1"\n')
    monkeypatch.setenv("CITYKPI_KAFKA__GROUP_ID", "from-env")
    s = load_settings(f)
    assert s.mqtt.port == 2883
    assert s.mqtt.client_id == "edge-7"
    assert s.kafka.group_id == "from-env"


def test_invalid_values_name_the_field_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYKPI_MQTT__PORT", "70000")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "mqtt.port" in str(e.value)
    assert "CITYKPI_MQTT__PORT" in str(e.value)


def test_a_persistent_session_needs_a_stable_client_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYKPI_MQTT__CLIENT_ID", "")
    with pytest.raises(ConfigError, match="stable client_id"):
        load_settings()


def test_sasl_without_credentials_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYKPI_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ConfigError, match="SASL needs"):
        load_settings()


def test_unknown_time_zone_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[[cities]]\ncity_id = "x"\nname = "X"\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(ConfigError, match="unknown time zone"):
        load_settings(f)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYKPI_DATABASE__URL", "postgresql://ingest:s3cret@db:5432/citykpi")
    monkeypatch.setenv("CITYKPI_MQTT__PASSWORD", "mqtt-s3cret")
    monkeypatch.setenv("CITYKPI_KAFKA__SASL_PASSWORD", "kafka-s3cret")
    dump = str(masked_dump(load_settings()))
    assert "s3cret" not in dump
    assert "postgresql://ingest:***@db:5432/citykpi" in dump


def test_mask_dsn_leaves_passwordless_dsn_alone() -> None:
    assert mask_dsn("postgresql://u@h/db") == "postgresql://u@h/db"


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:pa#ss3cret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:s3/cret@h:5432/db?sslmode=require", "postgresql://u:***@h:5432/db?sslmode=require"),
        ("postgresql://u:s3@cret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:s3?cret@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql://u@h/db?password=s3cret&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        (
            "postgres://h/db?sslmode=verify-full&PASSWORD=s3#cret",
            "postgres://h/db?sslmode=verify-full&PASSWORD=***",
        ),
        ("postgresql://h/db?sslpassword=s3cret", "postgresql://h/db?sslpassword=***"),
        ("host=h user=u password=s3cret dbname=db", "***"),  # not a URL: fails closed
        ("mysql://u:s3cret@h/db", "***"),
        ("s3cret", "***"),
    ],
)
def test_mask_dsn_fails_closed(dsn: str, shown: str) -> None:
    assert mask_dsn(dsn) == shown
    assert "s3" not in mask_dsn(dsn)


@pytest.mark.parametrize(
    ("env", "value", "field"),
    [
        ("CITYKPI_DATABASE__URL", "mysql://u:s3cret@h/db", "database.url"),
        ("CITYKPI_DATABASE__KPI_URL", "http://u:s3cret@h/db", "database.kpi_url"),
        ("CITYKPI_MQTT__PASSWORD", '{"not": "s3cret"}', "mqtt.password"),
    ],
)
def test_invalid_secret_fields_are_named_not_echoed(
    env: str, value: str, field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as e:
        load_settings(mqtt={"password": {"nested": "s3cret"}} if "MQTT" in env else {})
    assert field in str(e.value) and "s3cret" not in str(e.value)


def test_a_section_error_does_not_echo_the_section_with_its_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model-level check (SASL incomplete) gets the whole kafka section as its input."""
    monkeypatch.setenv("CITYKPI_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CITYKPI_KAFKA__SASL_PASSWORD", "kafka-s3cret")
    with pytest.raises(ConfigError, match="SASL needs") as e:
        load_settings()
    assert "s3cret" not in str(e.value)


def test_non_secret_fields_still_show_the_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYKPI_MQTT__PORT", "99999")
    with pytest.raises(ConfigError, match="got '99999'"):
        load_settings()


def test_config_show_masks_the_kpi_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYKPI_DATABASE__KPI_URL", "postgresql://kpi:s3/cret#x@db/citykpi?password=s3cret")
    dump = str(masked_dump(load_settings()))
    assert "s3" not in dump and "postgresql://kpi:***@db/citykpi?password=***" in dump


@pytest.mark.parametrize("sample", ["mqtt", "kafka"])
def test_each_source_sample_config_is_valid(sample: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYKPI_MQTT__PASSWORD", "x")
    monkeypatch.setenv("CITYKPI_KAFKA__SASL_PASSWORD", "x")
    path = Path(__file__).resolve().parents[2] / "ingest" / sample / "sample.toml"
    s = load_settings(path)
    if sample == "mqtt":
        assert [r.format for r in s.mqtt.routes] == ["senml", "ttn", "json"]
        assert s.mqtt.routes[2].field_map["metric:pm25"] == "pm2_5"
    else:
        assert s.kafka.security_protocol == "SASL_SSL"
        assert s.kafka.dead_letter_topic == "citykpi.dead-letters"


def test_an_empty_shared_group_turns_sharing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYKPI_MQTT__SHARED_GROUP", "")
    assert load_settings().mqtt.shared_group is None


def _implicit_files(tmp_path: Path) -> None:
    """The working directory of a checkout: the local stack's urls.env and a developer's .env."""
    (tmp_path / ".stack").mkdir()
    (tmp_path / ".stack" / "urls.env").write_text(
        "CITYKPI_DATABASE__URL=postgresql://postgres@127.0.0.1:15433/citykpi\nCITYKPI_MQTT__PORT=18830\n"
    )
    (tmp_path / ".env").write_text("CITYKPI_KAFKA__GROUP_ID=from-dotenv\nCITYKPI_MQTT__PORT=18831\n")


def _prod_toml(tmp_path: Path) -> Path:
    f = tmp_path / "prod.toml"
    f.write_text('[database]\nurl = "postgresql://ingest@db.prod:5432/citykpi"\n[kafka]\ngroup_id = "prod"\n')
    return f


def test_an_explicit_config_file_outranks_dotenv_and_the_local_stack(tmp_path: Path) -> None:
    _implicit_files(tmp_path)
    s = load_settings(_prod_toml(tmp_path))
    assert s.database.url.get_secret_value() == "postgresql://ingest@db.prod:5432/citykpi"
    assert s.kafka.group_id == "prod"
    assert s.mqtt.port == 18831  # not in the file: .env still fills it, and .env outranks urls.env


def test_citykpi_config_file_is_as_explicit_as_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _implicit_files(tmp_path)
    monkeypatch.setenv("CITYKPI_CONFIG_FILE", str(_prod_toml(tmp_path)))
    assert load_settings().database.url.get_secret_value() == "postgresql://ingest@db.prod:5432/citykpi"


def test_environment_variables_outrank_the_explicit_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _implicit_files(tmp_path)
    monkeypatch.setenv("CITYKPI_KAFKA__GROUP_ID", "from-env")
    assert load_settings(_prod_toml(tmp_path)).kafka.group_id == "from-env"


def test_without_a_file_the_implicit_files_apply(tmp_path: Path) -> None:
    _implicit_files(tmp_path)
    s = load_settings()
    assert s.database.url.get_secret_value() == "postgresql://postgres@127.0.0.1:15433/citykpi"
    assert (s.kafka.group_id, s.mqtt.port) == ("from-dotenv", 18831)


def test_a_config_file_applies_to_its_own_call_only(tmp_path: Path) -> None:
    """The file given to one load is not written to the environment, so later loads (every
    Settings() of a test run) do not read it."""
    import os

    from core.config import Settings

    assert load_settings(_prod_toml(tmp_path)).kafka.group_id == "prod"
    assert "CITYKPI_CONFIG_FILE" not in os.environ
    assert load_settings().kafka.group_id == "citykpi"
    assert Settings().kafka.group_id == "citykpi"


def test_value_origins_name_the_source_that_won(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.config import value_origins

    _implicit_files(tmp_path)
    monkeypatch.setenv("CITYKPI_LOG_LEVEL", "DEBUG")
    prod = _prod_toml(tmp_path)
    origins = value_origins(prod, writer={"batch_max_rows": 7})
    assert origins["database.url"] == f"config file {prod}"
    assert origins["kafka.group_id"] == f"config file {prod}"
    assert origins["mqtt.port"] == f".env in {tmp_path} (CITYKPI_MQTT__PORT)"
    assert origins["log_level"] == "environment (CITYKPI_LOG_LEVEL)"
    assert origins["writer.batch_max_rows"] == "argument"
    assert "http.port" not in origins  # a default
    assert value_origins()["database.url"] == f".stack/urls.env in {tmp_path} (CITYKPI_DATABASE__URL)"


@pytest.mark.parametrize(("city_id", "zone"), [("bad id", "UTC"), ("-x", "UTC"), ("ok", "Mars/Olympus")])
def test_configuration_and_registry_refuse_the_same_city_ids_and_zones(
    tmp_path: Path, city_id: str, zone: str
) -> None:
    """One identifier rule and one time-zone rule (schemas/identifiers.py) for both inputs."""
    from kpi_rollups.registry import RegistryImportError, parse_registry

    f = tmp_path / "c.toml"
    f.write_text(f'[[cities]]\ncity_id = "{city_id}"\nname = "X"\ntimezone = "{zone}"\n')
    with pytest.raises(ConfigError, match=r"cities\.0\.(city_id|timezone)"):
        load_settings(f)
    reg = tmp_path / "r.toml"
    reg.write_text(
        'city_id = "ok"\nvalid_from = 2025-01-01\n'
        f'[[cities]]\ncity_id = "{city_id}"\nname = "X"\ntimezone = "{zone}"\n'
    )
    with pytest.raises(RegistryImportError, match=r"city_id|time zone"):
        parse_registry(reg)
