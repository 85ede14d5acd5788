"""Telegraf for bench.peers: the binary, built once with only the plugins the comparison needs, and
its configurations (MQTT and Kafka consumers writing through `outputs.postgresql`), set to match
citykpi's delivery guarantees (acks after the write, persistent session, 20,000 unacknowledged)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

TELEGRAF_VERSION = "v1.37.2"
TELEGRAF_PLUGINS = "custom,inputs.mqtt_consumer,inputs.kafka_consumer,outputs.postgresql,parsers.json_v2"
TELEGRAF_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "citykpi" / "telegraf"


def telegraf_binary() -> tuple[Path | None, str]:
    """The cached Telegraf binary, built with only the plugins needed when absent; or None and why."""
    binary = TELEGRAF_DIR / "telegraf"
    if binary.exists():
        return binary, f"cached {binary}"
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        return None, "no Go toolchain on PATH (or /usr/local/go): Telegraf rows skipped"
    TELEGRAF_DIR.mkdir(parents=True, exist_ok=True)
    print(f"building Telegraf {TELEGRAF_VERSION} into {TELEGRAF_DIR} (about a minute)...", flush=True)
    build = subprocess.run(
        [
            go,
            "install",
            "-tags",
            TELEGRAF_PLUGINS,
            f"github.com/influxdata/telegraf/cmd/telegraf@{TELEGRAF_VERSION}",
        ],
        env={**os.environ, "GOBIN": str(TELEGRAF_DIR)},
        capture_output=True,
        text=True,
    )
    if build.returncode != 0 or not binary.exists():
        return None, f"Telegraf build failed, rows skipped: {build.stderr.strip()[-500:]}"
    return binary, f"built {binary}"


TELEGRAF_AGENT = """
[agent]
  omit_hostname = true
  metric_batch_size = 5000
  metric_buffer_limit = 100000
  flush_interval = "200ms"
  flush_jitter = "0s"
  quiet = true
"""

JSON_V2 = """
  data_format = "json_v2"
  [[inputs.{plugin}.json_v2]]
    measurement_name = "tg_readings"
    timestamp_path = "time"
    timestamp_format = "unix"
    [[inputs.{plugin}.json_v2.field]]
      path = "pm25"
      type = "float"
"""


def telegraf_config(inputs: str, dsn: str) -> str:
    """The agent, one input and the PostgreSQL output writing into the database `dsn`."""
    return f'{TELEGRAF_AGENT}\n{inputs}\n[[outputs.postgresql]]\n  connection = "{libpq(dsn)}"\n'


def telegraf_mqtt_config(port: int, topic_filter: str, client_id: str, dsn: str) -> str:
    """Persistent session, QoS 1, acks after the output's write, at most 20,000 unacknowledged."""
    inputs = f"""[[inputs.mqtt_consumer]]
  servers = ["tcp://127.0.0.1:{port}"]
  topics = ["{topic_filter}"]
  qos = 1
  client_id = "{client_id}"
  persistent_session = true
  max_undelivered_messages = 20000
  topic_tag = ""
{JSON_V2.format(plugin="mqtt_consumer")}
  [[inputs.mqtt_consumer.topic_parsing]]
    topic = "{topic_filter}"
    tags = "_/city/_/device"
"""
    return telegraf_config(inputs, dsn)


def telegraf_kafka_config(bootstrap: str, topic: str, dsn: str) -> str:
    """A consumer group from the oldest offset; offsets marked after the output's write."""
    inputs = f"""[[inputs.kafka_consumer]]
  brokers = ["{bootstrap}"]
  topics = ["{topic}"]
  version = "3.7.0"
  consumer_group = "tg-{topic}"
  offset = "oldest"
  max_undelivered_messages = 20000
{JSON_V2.format(plugin="kafka_consumer")}
    [[inputs.kafka_consumer.json_v2.tag]]
      path = "device_id"
      rename = "device"
"""
    return telegraf_config(inputs, dsn)


def libpq(dsn: str) -> str:
    """postgresql://user@host:port/db as a libpq key/value string (Telegraf's pgx takes both)."""
    rest = dsn.split("://", 1)[1]
    user, rest = rest.split("@", 1)
    hostport, db = rest.split("/", 1)
    host, port = hostport.split(":")
    return f"host={host} port={port} user={user} dbname={db} sslmode=disable"
