"""citykpi against Telegraf on MQTT and Kafka: `python -m bench.peers [--messages 100000] [--rounds 3]`.

One private Mosquitto (deploy/local/stack.sh: persistence on, `max_inflight_messages 0`, no queue
cap) holds, per round, one QoS 1 backlog of `--messages` flat JSON messages of one reading each
(`{"device_id": "air-0001", "time": <epoch s>, "pm25": 10.5}` on `city/demo/json/<device>`), queued
at once for four offline persistent sessions. Each consumer then drains its session as its own
process, one after the other, on the same cores and the same TimescaleDB:

* citykpi `run` with a flat JSON route (`format = "json"`), acks after commit, with paho's network
  loop in a thread of the service (`citykpi`, the default) and in a process of its own
  (`citykpi_process`, `mqtt.network_process`), each into a database of its own;
* Telegraf `inputs.mqtt_consumer` -> `outputs.postgresql` into a hypertable, persistent session,
  QoS 1, acks after write, batch 5,000, `max_undelivered_messages` 20,000, flush 200 ms (citykpi's
  batch delay); built once from the Go module proxy into ~/.cache/citykpi/telegraf (skipped, and
  said so, when Go or the build fails);
* bare paho draining and counting (bench/drains.py: the Python MQTT limit);
* citykpi's network loop alone, acking each batch as it arrives (its lean paho: citykpi's MQTT
  ceiling when its decode and write keep up);
* naive paho -> json.loads -> one INSERT per message, timed on its first `--naive-messages`;
* then citykpi `run` in both network-loop modes on `--messages` SenML packs of 10 readings
  (`citykpi_senml10`, `citykpi_process_senml10`: readings/s, the issue's 150k pack target on MQTT).
  As many messages as the one-reading backlog, ten times the readings: a backlog of the same
  readings as packs (a tenth of the messages) drained in one or two transactions in under a
  second, a burst rather than a rate (Kafka, 2026-12-01: 113k readings/s on 100,000 readings,
  71k on 600,000).

Kafka, the same backlog on a new 4-partition topic of the local stack's broker: citykpi `run` with a
flat JSON topic route, Telegraf `inputs.kafka_consumer` (`version = "3.7.0"`, which Kafka 4.x needs,
oldest offset, its own group, `max_undelivered_messages` 20,000) and aiokafka fetching without
decoding (bench/drains.py); then citykpi with `kafka.workers = 2` (two consumer processes in its
group) on it, and citykpi with one and two workers on `--messages` SenML packs of 10 readings.
CPU, peak RSS and run-queue wait of citykpi are summed over its worker processes; `cpu_us_per_row`
is the CPU it spent per row (the per-core cost). `--no-mqtt` / `--no-kafka` run one transport and
keep the other's last figures (dated) in the results.

Each MQTT round runs twice: unpinned (2 cores here), then with every consumer pinned to one CPU
(`taskset -c 0`, children included; the broker and the database stay unpinned; `--no-one-core`
skips it), into `mqtt` and `mqtt_one_core` of the results.

rows/s run from the last poll that saw no committed row to the one that saw them all (polls every
0.1 s: the consumer is connected and its backlog is waiting), so citykpi's start-up (imports,
numba kernels from their cache) is reported apart, as the seconds from the process's start to the
last row; the bare and naive drains time themselves from connect. Peak RSS is the process's VmHWM
plus its children's (citykpi's network process, also given apart), CPU counts them too.
CPU % and run-queue wait % (its threads' time runnable but waiting for a core, summed) are per
second of that window: on a shared machine a single-threaded consumer is starved more than a
multi-threaded one. Medians over the rounds go to bench/results/peers.json with each round's
figures and the ratios to Telegraf; next to them the peak RSS of a Python that only imports citykpi
(the interpreter's import baseline) and citykpi's decode-validate µs per message without the
network (the part of the per-message cost that is ours).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import paho.mqtt.client as mqtt
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from paho.mqtt.enums import CallbackAPIVersion

from bench.drains import runqueue_wait_s
from bench.stack import (
    KAFKA_BOOTSTRAP,
    KAFKA_IMPL,
    REPO,
    TSDB_URL,
    PrivateMosquitto,
    drop_database,
    migrated_database,
)
from bench.telegraf import telegraf_binary, telegraf_kafka_config, telegraf_mqtt_config
from core.config import Settings
from ingest.pipeline import Message, Pipeline
from ingest.publishers import KafkaPublisher, MqttPublisher
from ingest.routing import Router
from ingest.simulator import SimMessage
from processors.writer import TimescaleWriter, WriteBatch

RESULTS = Path(__file__).parent / "results" / "peers.json"
TOPIC_FILTER = "city/+/json/+"
KAFKA_PARTITIONS = 4  # so that two worker processes get two each
CITYKPI_ROUTE = [{"filter": TOPIC_FILTER, "format": "json", "city_level": 2, "device_level": 4}]
SENML_FILTER = "city/+/senml/+"
SENML_ROUTE = [{"filter": SENML_FILTER, "format": "senml", "city_level": 2, "device_level": 4}]


def backlog(n: int, t0: int) -> list[SimMessage]:
    """n one-reading flat JSON messages from 2,000 devices, each reporting once a second."""
    return [
        SimMessage(
            f"city/demo/json/air-{i % 2000:04d}",
            b'{"device_id":"air-%04d","time":%d,"pm25":%.1f}' % (i % 2000, t0 + i // 2000, 10 + i % 7),
        )
        for i in range(n)
    ]


def open_session(port: int, client_id: str, topic_filter: str = TOPIC_FILTER) -> None:
    """Create an offline persistent QoS 1 session on the topic filter, so the backlog queues for it."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.connect("127.0.0.1", port)
    c.subscribe(topic_filter, qos=1)
    c.loop(1)
    c.loop(1)
    c.disconnect()


def forget_session(port: int, client_id: str) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.connect("127.0.0.1", port)
    c.loop(1)
    c.disconnect()


def proc_status(pid: int, key: str) -> float:
    """A /proc/<pid>/status figure in MiB (VmHWM = peak RSS, VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """The process and its children (citykpi's MQTT network process)."""
    kids = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    return [pid, *kids]


def pinned(cmd: list[str], cores: int | None) -> list[str]:
    """`cmd` on the first `cores` CPUs (taskset; its children inherit it), or unpinned."""
    return ["taskset", "-c", f"0-{cores - 1}", *cmd] if cores else cmd


async def drain_into(
    cmd: list[str], env: dict[str, str], dsn: str, table: str, n: int, log: Path
) -> dict[str, float]:
    """Start `cmd`, time it to `n` rows in `table`, then read its peak RSS and CPU and stop it."""
    conn = await asyncpg.connect(dsn)
    with log.open("ab") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        # the window opens at the last poll that saw no row (so it is never empty: a fast
        # consumer may commit everything between two polls) and closes at the one that saw all
        empty_at, cpu_empty, wait_empty = t0, 0.0, 0.0
        try:
            while True:
                await asyncio.sleep(0.1)
                pids = family(proc.pid)
                cpu_now = sum(proc_cpu_s(p) for p in pids)
                wait_now = sum(runqueue_wait_s(p) for p in pids)
                rows = await conn.fetchval(f"SELECT count(*) FROM {table}")
                now = time.perf_counter()
                if not rows:
                    empty_at, cpu_empty, wait_empty = now, cpu_now, wait_now
                if rows >= n:
                    break
                if proc.poll() is not None or now - t0 > 900:
                    raise RuntimeError(f"{cmd[0]} stopped at {rows} of {n} rows; see {log}")
            seconds, steady_s = now - t0, now - empty_at
            pids = family(proc.pid)
            peaks = [proc_status(p, "VmHWM") for p in pids]
            cpu = sum(proc_cpu_s(p) for p in pids) - cpu_empty
            wait = sum(runqueue_wait_s(p) for p in pids) - wait_empty
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(90)
            await conn.close()
    return {
        "rows_per_s": n / steady_s,
        "start_to_last_row_s": seconds,
        "peak_rss_mib": sum(peaks),  # the process and its children, each at its own peak
        "children_peak_rss_mib": sum(peaks[1:]),
        "cpu_percent": 100 * cpu / steady_s,
        "cpu_us_per_row": 1e6 * cpu / n,
        "runqueue_wait_percent": 100 * wait / steady_s,
    }


def run_drain(
    kind: str, where: str, client_id: str, n: int, dsn: str = "", cores: int | None = None
) -> dict[str, float]:
    proc = subprocess.Popen(
        pinned([sys.executable, "-m", "bench.drains", kind, where, client_id, str(n), dsn], cores),
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, proc_status(proc.pid, "VmHWM") if Path(f"/proc/{proc.pid}").exists() else 0)
        time.sleep(0.05)
    assert proc.stdout is not None
    out = json.loads(proc.stdout.read().decode().strip().splitlines()[-1])
    return {
        "rows_per_s": n / out["seconds"],
        "peak_rss_mib": peak,
        "cpu_percent": 100 * out["cpu_s"] / out["seconds"],
        "runqueue_wait_percent": 100 * out["runqueue_wait_s"] / out["seconds"],
    }


def decode_us_per_message(n: int = 50_000, repeats: int = 7) -> float:
    """citykpi's own work per message on the asyncio side, without the network: the backlog's
    messages through Pipeline's decode-validate path into a write batch (µs, best of `repeats`)."""
    settings = Settings(mqtt={"routes": CITYKPI_ROUTE})  # type: ignore[call-arg]
    pipeline = Pipeline(settings, TimescaleWriter("postgresql://unused@127.0.0.1:1/unused"))
    router, now = Router(settings.mqtt.routes), datetime.now(UTC)
    messages = [Message(m.payload, m.topic, now) for m in backlog(n, int(time.time()) - 86400)]
    best = float("inf")
    for _ in range(repeats):
        batch, start = WriteBatch(source=""), time.perf_counter()
        for m in messages:
            pipeline.decode_message(batch, "mqtt", m, router.match, now)
        best = min(best, time.perf_counter() - start)
        assert len(batch) == n and not batch.dead_letters
    return best / n * 1e6


def import_baseline_mib() -> float:
    """Peak RSS of a Python that only imports citykpi's service (interpreter, numba, pydantic...)."""
    code = (
        "import ingest.cli, ingest.service, resource;"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return float(out.stdout.strip())


CITYKPI_ENV = {
    "CITYKPI_HTTP__ENABLED": "false",
    "CITYKPI_KPI_REFRESH_INTERVAL_S": "0",
}


async def peer_database() -> str:
    """A migrated citykpi database with Telegraf's hypertable and the naive table beside `readings`."""
    dsn = await migrated_database(TSDB_URL)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE tg_readings (time timestamptz NOT NULL, city text, device text, pm25 float8);"
            "SELECT create_hypertable('tg_readings', 'time');"
            "CREATE TABLE naive (time timestamptz, device text, pm25 float8, PRIMARY KEY (device, time))"
        )
    finally:
        await conn.close()
    return dsn


async def citykpi_and_telegraf(
    env: dict[str, str],
    telegraf_conf: str | None,
    telegraf: Path | None,
    dsn: str,
    n: int,
    log: Path,
    variants: dict[str, dict[str, str]] | None = None,
    cores: int | None = None,
) -> dict[str, dict[str, float]]:
    """citykpi (each of `variants`: name -> extra environment, into a database of its own after the
    first), then Telegraf, each on the first `cores` CPUs (None: unpinned)."""
    out: dict[str, dict[str, float]] = {}
    citykpi = pinned([str(Path(sys.executable).parent / "citykpi"), "run", "--no-progress"], cores)
    for name, extra in (variants or {"citykpi": {}}).items():
        own = dsn if not out else await peer_database()
        try:
            run_env = {**os.environ, **CITYKPI_ENV, "CITYKPI_DATABASE__URL": own, **env, **extra}
            out[name] = await drain_into(citykpi, run_env, own, "readings", n, log)
        finally:
            if own != dsn:
                await drop_database(TSDB_URL, own)
    if telegraf is not None and telegraf_conf is not None:
        conf = log.parent / f"telegraf-{uuid.uuid4().hex[:6]}.conf"
        conf.write_text(telegraf_conf)
        cmd = pinned([str(telegraf), "--config", str(conf)], cores)
        out["telegraf"] = await drain_into(cmd, dict(os.environ), dsn, "tg_readings", n, log)
    return out


MQTT_VARIANTS = {  # citykpi with paho's network loop in a thread (the default), in a process of its own
    "citykpi": {"CITYKPI_MQTT__NETWORK_PROCESS": "false"},
    "citykpi_process": {"CITYKPI_MQTT__NETWORK_PROCESS": "true"},
}


async def mqtt_round(
    port: int, n: int, naive_n: int, telegraf: Path | None, log: Path, cores: int | None = None
) -> dict[str, dict[str, float]]:
    """Every MQTT consumer on one backlog, each pinned to the first `cores` CPUs (None: unpinned);
    the naive drain only when `naive_n`."""
    tag = uuid.uuid4().hex[:6]
    names = [*MQTT_VARIANTS, "telegraf", "bare", "network", *(["naive"] if naive_n else [])]
    ids = {k: f"peer-{k.replace('_', '-')}-{tag}" for k in names}
    for cid in ids.values():
        open_session(port, cid)
    pub = MqttPublisher(Settings(mqtt={"port": port}).mqtt, client_id=f"peer-pub-{tag}")  # type: ignore[call-arg]
    await pub.start()
    await pub.publish(backlog(n, int(time.time()) - 86400))
    await pub.stop()
    dsn = await peer_database()
    try:
        env = {
            "CITYKPI_MQTT__PORT": str(port),
            "CITYKPI_MQTT__ROUTES": json.dumps(CITYKPI_ROUTE),
            "CITYKPI_KAFKA__ENABLED": "false",
        }
        variants = {k: {**v, "CITYKPI_MQTT__CLIENT_ID": ids[k]} for k, v in MQTT_VARIANTS.items()}
        conf = telegraf_mqtt_config(port, TOPIC_FILTER, ids["telegraf"], dsn)
        out = await citykpi_and_telegraf(env, conf, telegraf, dsn, n, log, variants, cores)
        out["bare_paho"] = await asyncio.to_thread(run_drain, "bare", str(port), ids["bare"], n, "", cores)
        out["network_loop"] = await asyncio.to_thread(
            run_drain, "network", str(port), ids["network"], n, "", cores
        )
        if naive_n:
            out["naive"] = await asyncio.to_thread(
                run_drain, "naive", str(port), ids["naive"], naive_n, dsn, cores
            )
    finally:
        await drop_database(TSDB_URL, dsn)
        for cid in ids.values():
            forget_session(port, cid)
    return out | await mqtt_senml_round(port, n, log, cores)


async def mqtt_senml_round(port: int, n: int, log: Path, cores: int | None) -> dict[str, dict[str, float]]:
    """citykpi (both network-loop modes) on n SenML packs of 10 readings on MQTT: the issue's
    150k readings/s target for packs (rows/s are readings/s)."""
    tag = uuid.uuid4().hex[:6]
    ids = {k: f"peer-senml-{k.replace('_', '-')}-{tag}" for k in MQTT_VARIANTS}
    for cid in ids.values():
        open_session(port, cid, SENML_FILTER)
    pub = MqttPublisher(Settings(mqtt={"port": port}).mqtt, client_id=f"peer-pub-{tag}")  # type: ignore[call-arg]
    await pub.start()
    await pub.publish(senml_backlog(n, int(time.time()) - 86400))
    await pub.stop()
    dsn = await peer_database()
    try:
        env = {
            "CITYKPI_MQTT__PORT": str(port),
            "CITYKPI_MQTT__ROUTES": json.dumps(SENML_ROUTE),
            "CITYKPI_KAFKA__ENABLED": "false",
        }
        variants = {
            f"{k}_senml10": {**v, "CITYKPI_MQTT__CLIENT_ID": ids[k]} for k, v in MQTT_VARIANTS.items()
        }
        return await citykpi_and_telegraf(env, None, None, dsn, 10 * n, log, variants, cores)
    finally:
        await drop_database(TSDB_URL, dsn)
        for cid in ids.values():
            forget_session(port, cid)


def senml_backlog(n: int, t0: int) -> list[SimMessage]:
    """n SenML packs of 10 readings (one device, ten seconds of pm25 each) from 2,000 devices."""
    packs = []
    for i in range(n):
        device, bt = f"air-{i % 2000:04d}", t0 + (i // 2000) * 10
        records: list[dict[str, object]] = [
            {"bn": f"{device}:", "bt": bt, "n": "pm25", "u": "ug/m3", "v": 10.5}
        ]
        records += [{"n": "pm25", "t": k, "v": 10.0 + k} for k in range(1, 10)]
        packs.append(SimMessage(f"city/demo/senml/{device}", json.dumps(records).encode()))
    return packs


async def new_kafka_topic(fmt: str, messages: list[SimMessage]) -> str:
    """A new topic of KAFKA_PARTITIONS partitions holding `messages`."""
    topic = f"peers.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=KAFKA_PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()
    pub = KafkaPublisher(Settings().kafka, {fmt: topic})
    await pub.start()
    await pub.publish(messages)
    await pub.stop()
    return topic


def citykpi_kafka_env(topic: str, fmt: str) -> dict[str, str]:
    return {
        "CITYKPI_KAFKA__BOOTSTRAP_SERVERS": KAFKA_BOOTSTRAP,
        "CITYKPI_KAFKA__TOPICS": json.dumps([{"filter": topic, "format": fmt, "city": "demo"}]),
        "CITYKPI_MQTT__ENABLED": "false",
    }


def kafka_workers(topic: str, workers: int) -> dict[str, str]:
    """A citykpi variant with `workers` consumer processes, in a group of its own."""
    return {"CITYKPI_KAFKA__WORKERS": str(workers), "CITYKPI_KAFKA__GROUP_ID": f"citykpi-{topic}-{workers}"}


async def kafka_round(n: int, telegraf: Path | None, log: Path) -> dict[str, dict[str, float]]:
    """The same backlog on a new topic; each consumer in a group of its own, citykpi with one and
    with two worker processes. Then citykpi with one and two on the n readings as SenML packs of 10."""
    t0 = int(time.time()) - 86400
    topic = await new_kafka_topic("json", backlog(n, t0))
    dsn = await peer_database()
    try:
        conf = telegraf_kafka_config(KAFKA_BOOTSTRAP, topic, dsn)
        variants = {"citykpi": kafka_workers(topic, 1), "citykpi_2_workers": kafka_workers(topic, 2)}
        env = citykpi_kafka_env(topic, "json")
        out = await citykpi_and_telegraf(env, conf, telegraf, dsn, n, log, variants)
        out["bare_aiokafka"] = await asyncio.to_thread(run_drain, "kafka-bare", KAFKA_BOOTSTRAP, topic, n)
    finally:
        await drop_database(TSDB_URL, dsn)
    senml = await new_kafka_topic("senml", senml_backlog(n, t0))
    dsn = await peer_database()
    try:
        variants = {
            "citykpi_senml10": kafka_workers(senml, 1),
            "citykpi_senml10_2_workers": kafka_workers(senml, 2),
        }
        out |= await citykpi_and_telegraf(
            citykpi_kafka_env(senml, "senml"), None, None, dsn, 10 * n, log, variants
        )
    finally:
        await drop_database(TSDB_URL, dsn)
    return out


def median_of(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        name: {k: statistics.median(r[name][k] for r in rounds) for k in rounds[0][name]}
        for name in rounds[0]
    }


async def retried(
    run: Callable[[], Awaitable[dict[str, dict[str, float]]]], attempts: int = 3
) -> dict[str, dict[str, float]]:
    """A round again when the shared database went away under it (other work restarts it)."""
    for attempt in range(1, attempts + 1):
        try:
            return await run()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RuntimeError) as e:
            if attempt == attempts:
                raise
            print(f"round failed ({type(e).__name__}: {e}); again in 10 s", flush=True)
            await asyncio.sleep(10)
    raise AssertionError("unreachable")


def summary(rounds: list[dict[str, dict[str, float]]]) -> dict[str, object]:
    """Medians over the rounds, ratios to Telegraf's medians, and each round."""
    med = median_of(rounds)
    out: dict[str, object] = {"median": med}
    if "telegraf" in med:
        tg = med["telegraf"]
        out["ratio_to_telegraf"] = {
            name: {
                "rows_per_s": round(m["rows_per_s"] / tg["rows_per_s"], 3),
                "peak_rss": round(m["peak_rss_mib"] / tg["peak_rss_mib"], 2),
            }
            for name, m in med.items()
        }
    if "bare_paho" in med:
        bare = med["bare_paho"]
        out["ratio_to_bare_paho"] = {
            name: round(m["rows_per_s"] / bare["rows_per_s"], 3) for name, m in med.items()
        }
    out["per_round"] = rounds
    return out


def print_table(title: str, med: dict[str, dict[str, float]]) -> None:
    head = ("pipeline", "rows/s", "peak MiB", "CPU %", "µs CPU/row", "wait %", "start->last s")
    print(f"{title}\n" + "{:26s} {:>9s} {:>9s} {:>6s} {:>10s} {:>6s} {:>13s}".format(*head))
    for name, m in med.items():
        start = f"{m['start_to_last_row_s']:13.1f}" if "start_to_last_row_s" in m else ""
        print(
            f"{name:26s} {m['rows_per_s']:9,.0f} {m['peak_rss_mib']:9.1f} {m['cpu_percent']:6.0f} "
            f"{m.get('cpu_us_per_row', 1e4 * m['cpu_percent'] / m['rows_per_s']):10.1f} "
            f"{m['runqueue_wait_percent']:6.0f} {start}"
        )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--naive-messages", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-kafka", action="store_true")
    ap.add_argument(
        "--one-core",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run each MQTT round with every consumer pinned to one CPU (taskset -c 0)",
    )
    ap.add_argument("--no-mqtt", action="store_true")
    args = ap.parse_args()
    telegraf, telegraf_note = telegraf_binary()
    print(telegraf_note, flush=True)
    root = REPO / ".stack" / "test-brokers" / f"peers-{uuid.uuid4().hex[:8]}"
    broker = PrivateMosquitto(root)
    broker.up()
    log = root / "consumers.log"
    mqtt_rounds: list[dict[str, dict[str, float]]] = []
    kafka_rounds: list[dict[str, dict[str, float]]] = []
    one_core_rounds: list[dict[str, dict[str, float]]] = []
    try:
        for i in range(args.rounds):
            if not args.no_mqtt:
                mqtt_rounds.append(
                    await retried(
                        lambda: mqtt_round(broker.port, args.messages, args.naive_messages, telegraf, log)
                    )
                )
                print(f"mqtt round {i + 1}: " + json.dumps(mqtt_rounds[-1]), flush=True)
                if args.one_core:
                    one_core_rounds.append(
                        await retried(lambda: mqtt_round(broker.port, args.messages, 0, telegraf, log, 1))
                    )
                    print(f"mqtt round {i + 1}, one core: " + json.dumps(one_core_rounds[-1]), flush=True)
            if not args.no_kafka:
                kafka_rounds.append(await retried(lambda: kafka_round(args.messages, telegraf, log)))
                print(f"kafka round {i + 1}: " + json.dumps(kafka_rounds[-1]), flush=True)
    finally:
        broker.down()
    result: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, shared with other work (noisy): "
        "compare within one run",
        "messages_per_round": args.messages,
        "naive_messages": args.naive_messages,
        "rounds": args.rounds,
        "mqtt_broker": "private Mosquitto, max_inflight_messages 0, persistence on",
        "kafka_broker": f"the local stack's Kafka ({KAFKA_IMPL}), a new {KAFKA_PARTITIONS}-partition topic "
        "per round and backlog",
        "telegraf": telegraf_note,
        "citykpi_import_baseline_mib": round(import_baseline_mib(), 1),
        "citykpi_decode_us_per_message": round(decode_us_per_message(), 2),
    }
    earlier = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for transport, rounds in (
        ("mqtt", mqtt_rounds),
        ("mqtt_one_core", one_core_rounds),
        ("kafka", kafka_rounds),
    ):
        if rounds:
            result[transport] = summary(rounds)
        elif transport in earlier:  # not run this time (--no-mqtt, --no-kafka): the last run's, dated
            result[transport] = {
                **earlier[transport],
                "date": earlier[transport].get("date", earlier["date"]),
            }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"citykpi import baseline: {result['citykpi_import_baseline_mib']} MiB; decode-validate "
        f"{result['citykpi_decode_us_per_message']} µs/message; {telegraf_note}"
    )
    for transport in ("mqtt", "mqtt_one_core", "kafka"):
        if transport in result:
            part = result[transport]
            assert isinstance(part, dict)
            print_table(f"{transport} (median of {args.rounds})", part["median"])
            print(json.dumps(part.get("ratio_to_telegraf", {})))
            print(json.dumps(part.get("ratio_to_bare_paho", {})))


if __name__ == "__main__":
    asyncio.run(main())
