"""citykpi's one configuration model.

Sources, highest precedence first: keyword arguments, environment variables (`CITYKPI_…`, nested
fields with `__`, e.g. `CITYKPI_MQTT__PORT=1883`), the TOML file named by `citykpi --config FILE` (or
`CITYKPI_CONFIG_FILE`), then the implicit files of the working directory, `.env` and the local
stack's `.stack/urls.env`, then defaults that point at the local stack started by
`deploy/local/stack.sh`. An explicit file outranks implicit ones, so `citykpi run --config prod.toml`
from a checkout never writes to the local stack; `value_origins` says which source set each value.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from schemas.decoders import DECODERS, check_field_map
from schemas.identifiers import ID_PATTERN, Identifier, TimeZoneName

CONFIG_FILE_ENV = "CITYKPI_CONFIG_FILE"
IMPLICIT_ENV_FILES = (".env", ".stack/urls.env")  # in the working directory; the first wins
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("citykpi_config_file", default=None)


class ConfigError(ValueError):
    """Invalid configuration: the message names each bad field and how to fix it."""


class DatabaseSettings(BaseModel):
    url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:15433/citykpi"),
        description="PostgreSQL/TimescaleDB DSN: the schema owner for `citykpi migrate`, an ingest login "
        "for `citykpi run`; a password in it is masked in `config show`.",
    )
    kpi_url: SecretStr | None = Field(
        None, description="DSN of the KPI login for KPI refreshes (service and `kpi refresh`); default: url"
    )
    migrate_on_start: bool = Field(
        False, description="`citykpi run` migrates first (needs the owner); else run `citykpi migrate` before"
    )
    role_prefix: str | None = Field(
        None,
        pattern=r"^[a-z_][a-z0-9_]{0,39}$",
        description="prefix of this deployment's roles (<prefix>_ingest, _kpi, _reader, _definer); "
        "default: the database's name, so deployments sharing a cluster share no role",
    )
    connect_timeout_s: float = Field(10.0, gt=0)
    command_timeout_s: float = Field(
        60.0,
        gt=0,
        description="a write statement waiting longer than this is cancelled and retried (a lock, a stall)",
    )
    raw_retention_days: int = Field(400, ge=1, description="raw readings older than this are dropped")
    rollup_1m_retention_days: int = Field(90, ge=1)
    retention_interval_s: float = Field(3600.0, gt=0, description="how often the retention job runs")

    @field_validator("url", "kpi_url")
    @classmethod
    def _postgres_scheme(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and urlsplit(v.get_secret_value()).scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL, e.g. postgresql://user:pass@host:5432/citykpi")
        return v

    def kpi_dsn(self) -> str:
        """The KPI refresh's DSN: its own login when configured."""
        return (self.kpi_url or self.url).get_secret_value()


class TopicRoute(BaseModel):
    """How a topic maps to city, device and payload format.

    `filter` is an MQTT filter (`+`/`#`) or a Kafka topic name; `city_level`/`device_level` are
    1-based topic levels (MQTT) to take the city and device from; `city` is a fixed city instead.
    `identity` says who names the device: "topic" (the default with a `device_level`: a payload id
    that disagrees with the topic is rejected, never merged) or "payload" (a gateway: each record's
    SenML `bn`, NGSI entity id, TTN device or JSON device field is its own device). A city named in
    the payload counts only when `trust_payload_city` is set; otherwise a different one is rejected.
    """

    filter: str
    format: str = "senml"
    city: str | None = None
    city_level: int | None = Field(None, ge=1)
    device_level: int | None = Field(None, ge=1)
    identity: Literal["topic", "payload"] | None = None
    trust_payload_city: bool = False
    field_map: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_format_and_identity(self) -> TopicRoute:
        if self.format not in DECODERS:
            known = ", ".join(sorted(DECODERS))
            raise ValueError(f"route {self.filter!r}: unknown format {self.format!r}; known formats: {known}")
        check_field_map(self.field_map)
        if self.identity is None:
            self.identity = "topic" if self.device_level is not None else "payload"
        elif self.identity == "topic" and self.device_level is None:
            raise ValueError(f"route {self.filter!r}: identity 'topic' needs a device_level")
        return self


class MqttSettings(BaseModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(18830, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = Field(
        "3.1.1",
        description="3.1.1 by default: paho decodes it about 2.4x faster than MQTT 5 (bench/ingest); "
        "Mosquitto, EMQX and HiveMQ accept $share subscriptions from 3.1.1 clients. Use 5 for "
        "session expiry intervals.",
    )
    client_id: str = "citykpi-1"
    clean_start: bool = False
    session_expiry_s: int = Field(86400, ge=0)
    qos: Literal[0, 1, 2] = 1
    shared_group: str | None = Field(
        None,
        description="shared subscription group ($share/<group>/…) to split topics between instances; off "
        "by default because Mosquitto does not restore shared subscriptions from its persistence file: "
        "after a broker restart, messages published before this client re-subscribes are lost",
    )
    username: str | None = None
    password: SecretStr | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_inflight: int = Field(
        20000,
        ge=1,
        le=65535,
        description="messages received but not yet acknowledged: the service stops reading from the "
        "broker at this bound (also sent as the MQTT 5 Receive Maximum); keep it above "
        "writer.batch_max_rows, or every batch waits for the delay",
    )
    max_held_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="payload bytes received but not yet acknowledged: the service stops reading here too",
    )
    network_process: bool = Field(
        False,
        description="run paho's network loop in a process of its own (its own GIL and core; acks still "
        "follow the commit) instead of a thread of the service. Off by default: in bench/results/"
        "peers.json it did not beat the thread (the service waits on its database, not on the GIL) "
        "and adds about 27 MiB",
    )
    keepalive_s: int = Field(30, ge=5)
    reconnect_max_s: float = Field(
        5.0, gt=0, description="cap of the jittered exponential reconnect backoff (first retry within 1 s)"
    )
    sparkplug_rebirth_s: float = Field(
        60.0,
        ge=0,
        description="ask a Sparkplug B edge node whose DATA could not be read (no BIRTH, a seq gap) to "
        "send its BIRTH again (NCMD Node Control/Rebirth), at most once per node in this many seconds; "
        "0 = never",
    )
    sparkplug_max_devices_per_node: int = Field(
        1000,
        ge=1,
        description="devices one Sparkplug B edge node may announce (DBIRTH); a BIRTH of one more is a "
        "too_many_devices dead letter, so a node cannot grow the host's sessions without limit",
    )
    startup_wait_s: float = Field(
        5.0, ge=0, description="start-up waits this long for the first SUBACK, then goes on in the background"
    )
    routes: list[TopicRoute] = Field(
        default_factory=lambda: [
            TopicRoute(filter="city/+/senml/+", format="senml", city_level=2, device_level=4),
            TopicRoute(filter="city/+/ngsi-ld/+", format="ngsi-ld", city_level=2, device_level=4),
            TopicRoute(filter="city/+/ngsi-v2/+", format="ngsi-v2", city_level=2, device_level=4),
            TopicRoute(
                filter="city/+/sensor-community/+", format="sensor-community", city_level=2, device_level=4
            ),
            TopicRoute(filter="v3/+/devices/+/up", format="ttn", city="demo", device_level=4),
            # Sparkplug B: the group is the city; edge node and device come from the topic
            TopicRoute(filter="spBv1.0/+/#", format="sparkplug-b", city_level=2),
        ]
    )

    @field_validator("shared_group")
    @classmethod
    def _empty_group_is_none(cls, v: str | None) -> str | None:
        return v or None

    @model_validator(mode="after")
    def _persistent_session_needs_stable_id(self) -> MqttSettings:
        if not self.clean_start and not ID_PATTERN.match(self.client_id):
            raise ValueError("a persistent session (clean_start=false) needs a stable client_id")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class KafkaSettings(BaseModel):
    enabled: bool = True
    bootstrap_servers: str = "127.0.0.1:19092"
    group_id: str = "citykpi"
    client_id: str = "citykpi"
    topics: list[TopicRoute] = Field(
        default_factory=lambda: [
            TopicRoute(filter=f"citykpi.{fmt}", format=fmt, city="demo")
            for fmt in ("senml", "ngsi-ld", "ngsi-v2", "sensor-community", "ttn")
        ]
    )
    dead_letter_topic: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    max_poll_records: int = Field(5000, ge=1)
    max_held_messages: int = Field(
        20000, ge=1, description="uncommitted messages held in memory; fetching pauses at this bound"
    )
    rebalance_wait_s: float = Field(
        10.0, ge=0, description="on a rebalance, how long to wait for in-flight batches to commit"
    )
    session_timeout_ms: int = Field(10000, ge=1000)
    heartbeat_interval_ms: int = Field(1000, ge=100)
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="consumer processes in the group (ingest/kafka/workers.py), each with its own pipeline "
        "and database connection: more cores for Kafka; use at least as many partitions",
    )
    worker_index: int = Field(
        0, ge=0, description="set by the service for the workers it starts (0: the service itself)"
    )

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError("SASL needs sasl_mechanism, sasl_username and sasl_password")
        return self


class WriterSettings(BaseModel):
    batch_max_rows: int = Field(5000, ge=1)
    batch_max_delay_s: float = Field(0.2, gt=0)
    connections: int = Field(
        2,
        ge=1,
        description="database connections writing batches, each in its own transaction: consecutive batches "
        "are written at once (acknowledged in order, each after its commit)",
    )
    retry_max_backoff_s: float = Field(30.0, gt=0)
    probe_interval_s: float = Field(
        0.25, gt=0, description="while the database is unreachable it is probed this often; writes resume"
    )
    unready_after_s: float = Field(
        30.0, gt=0, description="/readyz answers 503 while a write has waited this long without a commit"
    )
    stalled_after_s: float = Field(
        300.0,
        gt=0,
        description="/healthz answers 503 (a liveness probe restarts the service) once a write has waited "
        "this long without a commit",
    )
    max_attempts: int = Field(
        5, ge=1, description="internal errors (XX000) on one batch before it is bisected to the rows at fault"
    )


class ValidationSettings(BaseModel):
    max_payload_bytes: int = Field(256 * 1024, ge=64)
    max_future_s: float = Field(
        30.0,
        ge=0,
        description="readings stamped further ahead are rejected (a spoofed value sent early "
        "would win the 'first value wins' race)",
    )
    min_time: datetime = datetime.fromisoformat("2000-01-01T00:00:00+00:00")
    unknown_device: Literal["register", "reject"] = "register"
    naive_times: Literal["city", "UTC"] = Field(
        "city", description="payload times without a zone are read in the city's time zone, or in UTC"
    )
    max_new_devices_per_message: int = Field(
        10, ge=0, description="devices one message may auto-register; the rest are dead-lettered"
    )
    max_new_devices_per_city_minute: int = Field(
        5000, ge=0, description="devices a city may auto-register per minute; the rest are dead-lettered"
    )
    dead_letter_payload_bytes: int = Field(
        256 * 1024,
        ge=0,
        description="payload bytes kept with a dead letter (once per message); a cut payload cannot be "
        "requeued, so keep it at max_payload_bytes",
    )


class SimulatorSettings(BaseModel):
    city: str = "demo"
    transport: Literal["mqtt", "kafka"] = "mqtt"
    air_stations: int = Field(8, ge=0)
    noise_sensors: int = Field(12, ge=0)
    traffic_counters: int = Field(10, ge=0)
    water_meters: int = Field(40, ge=0)
    electricity_meters: int = Field(40, ge=0)
    parking_spots: int = Field(30, ge=0)
    waste_bins: int = Field(20, ge=0)
    weather_stations: int = Field(2, ge=0)
    interval_s: float = Field(10.0, gt=0, description="simulated seconds between a device's readings")
    speedup: float = Field(1.0, gt=0, description="simulated seconds per wall-clock second")
    fault_rate: float = Field(0.01, ge=0, le=1, description="share of messages with an injected fault")
    seed: int = 42
    sparkplug_kind: Literal["electricity", "water"] | None = Field(
        None,
        description="meters of this kind speak Sparkplug B over MQTT (each an edge node of group <city>: "
        "NBIRTH, then NDATA by alias); `make demo` sets electricity",
    )


class QualitySettings(BaseModel):
    """The data-quality job (processors/quality.py): stuck sensors and Hampel spikes."""

    enabled: bool = True
    interval_s: float = Field(300.0, gt=0)
    lookback_s: float = Field(
        900.0, gt=0, description="trailing window re-examined on each run (longer than interval_s)"
    )
    stuck_min_run: int = Field(30, ge=2, description="identical consecutive values that make a stuck run")
    hampel_half_window: int = Field(5, ge=1, description="readings on each side in the Hampel window")
    hampel_sigmas: float = Field(5.0, gt=0, description="robust sigmas (1.4826·MAD) from the median")
    exclude_flagged_from_kpis: bool = Field(
        True, description="rebuild the rollups without stuck and spike readings (KPIs count them as missing)"
    )

    @model_validator(mode="after")
    def _window_covers_the_gap(self) -> QualitySettings:
        if self.lookback_s <= self.interval_s:
            raise ValueError("lookback_s must exceed interval_s, or readings between runs go unchecked")
        return self


class AlertSettings(BaseModel):
    """The threshold-alert job (processors/alerts.py) and where its events are published."""

    enabled: bool = True
    interval_s: float = Field(30.0, gt=0, description="seconds between evaluations")
    settle_s: float = Field(
        60.0, ge=0, description="readings younger than this wait for the next run (late arrivals join in)"
    )
    first_lookback_s: float = Field(3600.0, gt=0, description="how far back a new rule starts looking")
    mqtt_topic: str = Field("", description="publish each alert event here as JSON (empty: off)")
    webhook_url: SecretStr | None = Field(
        None, description="POST each batch of alert events here as JSON (a secret: such URLs carry tokens)"
    )
    webhook_timeout_s: float = Field(5.0, gt=0)
    webhook_attempts: int = Field(4, ge=1, description="tries per batch before it waits for the next run")
    retention_days: int = Field(
        400,
        ge=1,
        description="events older than this are deleted (an open alert's opening event and "
        "events not yet published are kept)",
    )

    @property
    def publishes(self) -> bool:
        """Whether events go to a channel (and wait in the table, unpublished, until one takes them)."""
        return bool(self.mqtt_topic or (self.webhook_url and self.webhook_url.get_secret_value()))


class HttpSettings(BaseModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)


class NgsiLdSettings(BaseModel):
    """Publishing KPI values to an NGSI-LD context broker (`citykpi kpi export --broker`)."""

    broker_url: str | None = Field(
        None, description="e.g. http://orion-ld:1026; entities go to /ngsi-ld/v1/entityOperations/upsert"
    )
    tenant: str | None = Field(None, description="NGSILD-Tenant header, if the broker is multi-tenant")
    batch_size: int = Field(100, ge=1, description="entities per upsert request")
    timeout_s: float = Field(10.0, gt=0)
    attempts: int = Field(5, ge=1, description="tries per request on connection errors, 429 and 5xx")
    retry_max_wait_s: float = Field(30.0, gt=0, description="cap of the jittered exponential backoff")


class CitySettings(BaseModel):
    city_id: Identifier
    name: str
    timezone: TimeZoneName = "UTC"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CITYKPI_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    writer: WriterSettings = Field(default_factory=WriterSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    ngsi_ld: NgsiLdSettings = Field(default_factory=NgsiLdSettings)
    cities: list[CitySettings] = Field(
        default_factory=lambda: [CitySettings(city_id="demo", name="Demo City", timezone="Europe/Paris")]
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    kpi_refresh_interval_s: float = Field(60.0, ge=0, description="0 turns the in-service KPI refresh off")
    kpi_refresh_month_year_s: float = Field(
        900.0,
        ge=0,
        description="how often the current month and year are recomputed, on a schedule of their own "
        "beside the day's (their cost grows with the data: bench/refresh.py; at least "
        "kpi_refresh_interval_s)",
    )
    shutdown_timeout_s: float = Field(
        60.0,
        gt=0,
        description="SIGTERM drain deadline (below the deploy files' 90 s grace periods): what is not "
        "committed by then stays unacknowledged and is redelivered",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        named = _named_sources(settings_cls, init_settings, env_settings)
        return (*(source for _, source in named), file_secret_settings)


def _config_file() -> Path | None:
    """The explicit configuration file: `load_settings(config_file)`, else CITYKPI_CONFIG_FILE."""
    explicit = _CONFIG_FILE.get()
    if explicit is not None:
        return explicit
    named = os.environ.get(CONFIG_FILE_ENV)
    return Path(named) if named else None


def _named_sources(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
) -> list[tuple[str, PydanticBaseSettingsSource]]:
    """The sources with what `config show` calls them, highest precedence first."""
    named: list[tuple[str, PydanticBaseSettingsSource]] = [
        ("argument", init_settings),
        ("environment", env_settings),
    ]
    config_file = _config_file()
    if config_file is not None:
        named.append((f"config file {config_file}", TomlConfigSettingsSource(settings_cls, config_file)))
    named += [
        (f"{f} in {Path.cwd()}", DotEnvSettingsSource(settings_cls, env_file=f)) for f in IMPLICIT_ENV_FILES
    ]
    return named


def _leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _secret_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Dotted paths (list indexes left out) of every SecretStr field under `model`."""
    found: set[tuple[str, ...]] = set()
    for name, field in model.model_fields.items():
        types = (field.annotation, *get_args(field.annotation))
        if SecretStr in types:
            found.add((*prefix, name))
        for sub in (*types, *(a for t in types for a in get_args(t))):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                found |= _secret_fields(sub, (*prefix, name))
    return found


def _shown_input(loc: tuple[str | int, ...], value: Any) -> str:
    """What a validation error may echo: never a secret field, never a whole section (it may hold
    one); just the field's name then."""
    path = tuple(p for p in loc if isinstance(p, str))
    if path in SECRET_FIELDS or isinstance(value, dict | list):
        return "value not shown"
    return f"got {value!r}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings or raise `ConfigError` naming each bad field and its fix (never echoing
    a secret). `config_file` applies to this call only (nothing is written to the environment)."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"configuration file {config_file} does not exist")
    token = _CONFIG_FILE.set(config_file)
    try:
        return Settings(**overrides)
    except ValidationError as e:
        lines = ["invalid configuration:"]
        for err in e.errors(include_url=False, include_input=True):
            loc = ".".join(str(p) for p in err["loc"])
            env = "CITYKPI_" + "__".join(str(p).upper() for p in err["loc"] if not isinstance(p, int))
            lines.append(
                f"  {loc or '(root)'}: {err['msg']} ({_shown_input(err['loc'], err.get('input'))}; "
                f"set {env} or fix it in the TOML file)"
            )
        raise ConfigError("\n".join(lines)) from None
    finally:
        _CONFIG_FILE.reset(token)


def value_origins(config_file: Path | None = None, **overrides: Any) -> dict[str, str]:
    """Dotted setting -> the source that set it, for every value not left at its default (a value
    set in several sources is named by the one that wins)."""
    token = _CONFIG_FILE.set(config_file)
    try:
        named = _named_sources(Settings, InitSettingsSource(Settings, overrides), EnvSettingsSource(Settings))
    finally:
        _CONFIG_FILE.reset(token)
    origins: dict[str, str] = {}
    for name, source in named:
        for key in _leaves(source()):
            shown = (
                f"{name} (CITYKPI_{key.upper().replace('.', '__')})"
                if isinstance(source, EnvSettingsSource)
                else name
            )
            origins.setdefault(key, shown)
    return dict(sorted(origins.items()))


_QUERY_SECRET = re.compile(r"(?i)((?:^|[?&;])(?:password|sslpassword)=)[^&;]*")


def mask_dsn(dsn: str, schemes: tuple[str, ...] = ("postgresql", "postgres")) -> str:
    """The DSN (or URL of one of `schemes`) with every password replaced by ***; fails closed:
    anything else is shown as *** whole. The user info ends at the last '@', so a password
    holding '#', '/', '?' or '@' is masked whole too."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme not in schemes:
        return "***"
    userinfo, at, hosts = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    return scheme + "://" + _QUERY_SECRET.sub(r"\1***", rest)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, every secret masked."""
    data = settings.model_dump(mode="json")
    data["database"]["url"] = mask_dsn(settings.database.url.get_secret_value())
    if settings.database.kpi_url is not None:
        data["database"]["kpi_url"] = mask_dsn(settings.database.kpi_url.get_secret_value())
    if settings.ngsi_ld.broker_url is not None:
        data["ngsi_ld"]["broker_url"] = mask_url(settings.ngsi_ld.broker_url)
    return data


def mask_url(url: str) -> str:
    """An HTTP(S) URL with its user info's password as ***; anything else *** whole."""
    return mask_dsn(url, ("http", "https"))


SECRET_FIELDS = _secret_fields(Settings)
