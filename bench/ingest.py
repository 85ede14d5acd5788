"""End-to-end ingestion benchmark on the local stack: `python -m bench.ingest [--messages N]`.

For MQTT and Kafka, a backlog of simulator-shaped SenML messages is published first, then timed
from the service's start to the last committed row (readings/s end to end), next to the bare client
limits measured in the same run (paho draining the same backlog doing nothing; aiokafka fetching it
without decoding) and a naive baseline (paho callback -> json.loads -> pydantic model -> one INSERT
per reading). Latency publish -> committed row is measured at a paced rate. Figures go to
bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import asyncpg
import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaConsumer
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel

from bench.stack import TSDB_URL, count_readings, drop_database, migrated_database
from core.config import Settings, SimulatorSettings
from ingest.pipeline import PipelineStats
from ingest.publishers import KafkaPublisher, MqttPublisher
from ingest.routing import Router
from ingest.service import Service
from ingest.simulator import CitySimulator, SimMessage
from ingest.validation import Validator
from schemas.decoders import DECODERS
from schemas.readings import DecodeContext

RESULTS = Path(__file__).parent / "results" / "ingest.json"


def forget_session(client_id: str) -> None:
    """Drop a benchmark's persistent session, so the broker stops queueing for it."""
    s = Settings().mqtt
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.connect(s.host, s.port)
    c.loop(1)
    c.disconnect()


def packs(n: int, per_pack: int, t0: int) -> list[SimMessage]:
    out = []
    for i in range(n):  # the simulator's shape: 2,000 devices, each reporting every 10 s
        device = f"air-{i % 2000:04d}"
        pack = [{"bn": f"{device}:", "bt": t0 + (i // 2000) * 10, "n": "pm25", "u": "ug/m3", "v": 10.5}]
        pack += [{"n": "pm10", "t": k + 1, "v": 20.0 + k} for k in range(per_pack - 1)]
        out.append(SimMessage(f"city/demo/senml/{device}", json.dumps(pack).encode()))
    return out


async def wait_rows(dsn: str, expected: int, timeout: float = 600) -> float:
    start = time.perf_counter()
    while await count_readings(dsn) < expected:
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"only {await count_readings(dsn)} of {expected} rows")
        await asyncio.sleep(0.05)
    return time.perf_counter()


async def drain_backlog(settings: Settings, dsn: str, expected: int) -> tuple[float, PipelineStats]:
    """Start citykpi on a waiting backlog, time it to the last committed row (readings/s), drop the db."""
    service = Service(settings)
    t0 = time.perf_counter()
    await service.start()
    t1 = await wait_rows(dsn, expected)
    await service.stop()
    await drop_database(TSDB_URL, dsn)
    return expected / (t1 - t0), service.pipeline.stats


async def citykpi_mqtt(n: int, per_pack: int, protocol: str = "3.1.1") -> float:
    dsn = await migrated_database(TSDB_URL)
    client_id = f"bench-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        database={"url": dsn},
        kafka={"enabled": False},
        http={"enabled": False},  # type: ignore[call-arg]
        mqtt={"client_id": client_id, "shared_group": None, "protocol": protocol},
    )
    service = Service(settings)
    await service.start()  # creates the persistent session; stop it so the backlog queues
    await service.stop()
    pub = MqttPublisher(settings.mqtt, client_id=f"pub-{client_id}")
    await pub.start()
    await pub.publish(packs(n, per_pack, int(time.time()) - 86400))
    await pub.stop()
    rate, _ = await drain_backlog(settings, dsn, n * per_pack)
    forget_session(client_id)
    return rate


def bare_paho_drain(n: int, per_pack: int) -> float:
    """paho receiving the same QoS 1 backlog and doing nothing else (messages/s x readings per message)."""
    s = Settings().mqtt
    cid = f"bare-{uuid.uuid4().hex[:6]}"
    got = threading.Event()
    received = [0]

    def on_message(*_a: object) -> None:
        received[0] += 1
        if received[0] >= n:
            got.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
    c.on_message = on_message
    c.connect(s.host, s.port)
    c.subscribe("bench/bare/#", qos=1)
    c.loop(1)
    c.disconnect()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid + "-pub")
    pub.max_inflight_messages_set(20000)
    pub.connect(s.host, s.port)
    pub.loop_start()
    for m in packs(n, per_pack, 0):
        pub.publish("bench/bare/" + m.topic, m.payload, qos=1).wait_for_publish()
    pub.loop_stop()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
    c.on_message = on_message
    t0 = time.perf_counter()
    c.connect(s.host, s.port)
    c.loop_start()
    got.wait(600)
    rate = n / (time.perf_counter() - t0)
    c.loop_stop()
    c.disconnect()
    forget_session(cid)
    return rate * per_pack


class NaiveReading(BaseModel):
    bn: str
    bt: float
    n: str
    v: float


async def naive_mqtt(n: int) -> float:
    """paho callback -> json.loads -> pydantic -> one INSERT per reading (the baseline to beat)."""
    dsn = await migrated_database(TSDB_URL)
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "CREATE TABLE naive (time timestamptz, device text, metric text, value float8, "
        "PRIMARY KEY (device, metric, time))"
    )
    q: asyncio.Queue[bytes] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    s = Settings().mqtt
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"naive-{uuid.uuid4().hex[:6]}")
    c.on_message = lambda _c, _u, m: loop.call_soon_threadsafe(q.put_nowait, m.payload)
    c.connect(s.host, s.port)
    c.subscribe("bench/naive/#", qos=1)
    c.loop_start()
    await asyncio.sleep(0.5)
    pub = MqttPublisher(s, client_id=f"naive-pub-{uuid.uuid4().hex[:6]}")
    await pub.start()
    t0 = time.perf_counter()
    await pub.publish(SimMessage("bench/naive/" + m.topic, m.payload) for m in packs(n, 1, int(time.time())))
    for _ in range(n):
        r = NaiveReading.model_validate(json.loads(await q.get())[0])
        await conn.execute(
            "INSERT INTO naive VALUES (to_timestamp($1), $2, $3, $4) ON CONFLICT DO NOTHING",
            r.bt,
            r.bn,
            r.n,
            r.v,
        )
    rate = n / (time.perf_counter() - t0)
    await pub.stop()
    c.loop_stop()
    await conn.close()
    await drop_database(TSDB_URL, dsn)
    return rate


async def citykpi_kafka(n: int, per_pack: int) -> tuple[float, float, float]:
    dsn = await migrated_database(TSDB_URL)
    topic = f"bench.{uuid.uuid4().hex[:8]}"
    base = Settings()
    pub = KafkaPublisher(base.kafka, {"senml": topic})
    await pub.start()
    await pub.publish(packs(n, per_pack, int(time.time()) - 86400))
    await pub.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=base.kafka.bootstrap_servers,
        group_id=f"bare-{topic}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    t0, seen = time.perf_counter(), 0
    while seen < n:
        for records in (await consumer.getmany(timeout_ms=500, max_records=10000)).values():
            seen += len(records)
    bare = n * per_pack / (time.perf_counter() - t0)
    await consumer.stop()
    settings = Settings(
        database={"url": dsn},
        mqtt={"enabled": False},
        http={"enabled": False},  # type: ignore[call-arg]
        kafka={"topics": [{"filter": topic, "format": "senml", "city": "demo"}], "group_id": f"g-{topic}"},
    )
    rate, st = await drain_backlog(settings, dsn, n * per_pack)
    return rate, bare, st.rollup_seconds / max(1e-9, st.write_seconds - st.rollup_seconds)


def simulated_city_backlog(n_messages: int) -> tuple[list[SimMessage], int]:
    """The simulator's own mix (SenML, NGSI-LD, NGSI-v2, Sensor.Community) for a city 20x the
    demo, no faults; with the number of readings it decodes to, counted by the decoders."""
    sim_settings = SimulatorSettings(
        air_stations=160,
        noise_sensors=240,
        traffic_counters=200,
        water_meters=800,
        electricity_meters=800,
        parking_spots=600,
        waste_bins=400,
        weather_stations=40,
        interval_s=60,
        fault_rate=0.0,
    )
    sim = CitySimulator(sim_settings)
    router, validator = Router(Settings().mqtt.routes), Validator(Settings().validation)
    messages: list[SimMessage] = []
    readings = 0
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    while len(messages) < n_messages:
        for m in sim.tick(t):
            route = router.match(m.topic)
            assert route is not None
            ctx = DecodeContext(
                default_time=t, topic=m.topic, headers=m.headers, device_id=route.device, city=route.city
            )
            for r in DECODERS[route.format](m.payload, ctx):
                validator.canonical(r, datetime.now(UTC))
                readings += 1
            messages.append(m)
        t += timedelta(seconds=sim_settings.interval_s)
    return messages, readings


async def citykpi_simulated_city(n_messages: int, transport: str) -> float:
    """readings/s end to end for the simulator's message mix over MQTT or Kafka."""
    messages, expected = simulated_city_backlog(n_messages)
    dsn = await migrated_database(TSDB_URL)
    tag = uuid.uuid4().hex[:6]
    if transport == "kafka":
        topics = {fmt: f"bench.{tag}.{fmt}" for fmt in ("senml", "ngsi-ld", "ngsi-v2", "sensor-community")}
        kpub = KafkaPublisher(Settings().kafka, topics)
        await kpub.start()
        await kpub.publish(messages)
        await kpub.stop()
        settings = Settings(
            database={"url": dsn},
            mqtt={"enabled": False},
            http={"enabled": False},  # type: ignore[call-arg]
            kpi_refresh_interval_s=0,
            kafka={
                "topics": [{"filter": t, "format": f, "city": "demo"} for f, t in topics.items()],
                "group_id": f"g-{tag}",
            },
        )
        rate, _ = await drain_backlog(settings, dsn, expected)
        return rate
    client_id = f"bench-city-{tag}"
    settings = Settings(
        database={"url": dsn},
        kafka={"enabled": False},
        http={"enabled": False},  # type: ignore[call-arg]
        kpi_refresh_interval_s=0,
        mqtt={"client_id": client_id, "shared_group": None},
    )
    service = Service(settings)
    await service.start()  # the persistent session exists before the backlog is published
    await service.stop()
    mpub = MqttPublisher(settings.mqtt, client_id=f"pub-{client_id}")
    await mpub.start()
    await mpub.publish(messages)
    await mpub.stop()
    rate, _ = await drain_backlog(settings, dsn, expected)
    forget_session(client_id)
    return rate


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def publish_paced(
    pub: MqttPublisher, rate: int, seconds: float, sent: int, sample: Callable[[], None], every_s: float
) -> int:
    """Publish one-reading SenML packs stamped with their publish time at `rate` msg/s for `seconds`,
    calling `sample()` every `every_s`; returns the count sent so far (`sent` before)."""
    first, start = sent, time.perf_counter()
    next_sample = start
    while (elapsed := time.perf_counter() - start) < seconds:
        due = first + int(elapsed * rate) - sent
        if due > 0:
            now = time.time()
            await pub.publish(
                SimMessage(
                    f"city/demo/senml/dev-{(sent + k) % 2000:04d}",
                    json.dumps(
                        [{"bn": f"dev-{(sent + k) % 2000:04d}:", "bt": now, "n": "pm25", "v": 7.0}]
                    ).encode(),
                )
                for k in range(due)
            )
            sent += due
        if time.perf_counter() >= next_sample:
            sample()
            next_sample += every_s
        await asyncio.sleep(0.005)
    return sent


def service_process(dsn: str, client_id: str, **env: str) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """`citykpi run` on `dsn`, MQTT only, no HTTP or KPI refresh; its log goes to the file named by
    CITYKPI_BENCH_SERVICE_LOG (kept open for the life of the process: `end_service` closes it)."""
    service_log = Path(os.environ.get("CITYKPI_BENCH_SERVICE_LOG", os.devnull)).open("ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "citykpi"), "run", "--no-progress"],
        env={
            **os.environ,
            "CITYKPI_DATABASE__URL": dsn,
            "CITYKPI_KAFKA__ENABLED": "false",
            "CITYKPI_HTTP__ENABLED": "false",
            "CITYKPI_KPI_REFRESH_INTERVAL_S": "0",
            "CITYKPI_MQTT__CLIENT_ID": client_id,
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=service_log,
    )
    return proc, service_log


async def end_service(
    proc: subprocess.Popen[bytes], service_log: IO[bytes], dsn: str, client_id: str
) -> None:
    """SIGTERM the service, then drop its database and its persistent session."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(90)
    service_log.close()
    await drop_database(TSDB_URL, dsn)
    forget_session(client_id)


async def paced_latency_and_soak(rate: int, seconds: float) -> dict[str, object]:
    """`citykpi run` as its own process; MQTT packs published at `rate` msg/s, each stamped with its
    publish time; latency = batch commit time - publish time; RSS of the service sampled every 10 s."""
    dsn = await migrated_database(TSDB_URL)
    soak_id = f"soak-{uuid.uuid4().hex[:6]}"
    # a group of its own: Mosquitto gives offline persistent members of a shared group their
    # share of the messages, so a stale member from an earlier run would take part of the load
    proc, service_log = service_process(dsn, soak_id, CITYKPI_MQTT__SHARED_GROUP=soak_id)
    try:
        while await _readings_or_none(dsn) is None:  # migrated; wait for the service to subscribe
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)
        pub = MqttPublisher(Settings().mqtt, client_id=f"soak-pub-{uuid.uuid4().hex[:6]}")
        await pub.start()
        rss: list[float] = []
        sent = await publish_paced(pub, rate, seconds, 0, lambda: rss.append(rss_mib(proc.pid)), 10)
        await pub.stop()
        await wait_rows(dsn, sent, timeout=120)
        p50, p99 = await commit_latency(dsn)
    finally:
        await end_service(proc, service_log, dsn, soak_id)
    return {
        "paced_rate_msg_per_s": rate,
        "paced_seconds": seconds,
        "messages": sent,
        "latency_p50_s": p50,
        "latency_p99_s": p99,
        "service_rss_mib_samples": rss,
        "service_rss_growth_mib": (rss[-1] - rss[min(1, len(rss) - 1)]) if rss else None,
    }


async def commit_latency(dsn: str) -> tuple[float, float]:
    """p50 and p99 seconds from a reading's time (its publish time) to its batch's commit."""
    conn = await asyncpg.connect(dsn)
    try:
        p50, p99 = await conn.fetchrow("""
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lat),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY lat)
            FROM (SELECT extract(epoch FROM b.committed_at - r.time) AS lat
                  FROM readings r JOIN ingest_batches b USING (batch_id)) x""")
    finally:
        await conn.close()
    return float(p50), float(p99)


async def _readings_or_none(dsn: str) -> int | None:
    try:
        return await count_readings(dsn)
    except asyncpg.PostgresError:
        return None


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--naive-messages", type=int, default=5_000)
    ap.add_argument("--paced-rate", type=int, default=5_000, help="msg/s for the latency and soak phase")
    ap.add_argument("--soak-seconds", type=float, default=300.0)
    args = ap.parse_args()
    n = args.messages
    out: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(),
        "machine": platform.node(),
        "messages": n,
    }
    kafka10, kafka_bare, rollup_overhead = await citykpi_kafka(n // 10, 10)
    out["rollup_cost_vs_raw_write"] = rollup_overhead
    out["kafka_senml10_readings_per_s"] = kafka10
    out["kafka_bare_fetch_readings_per_s"] = kafka_bare
    out["mqtt_1_per_msg_readings_per_s"] = await citykpi_mqtt(n // 4, 1)
    out["mqtt5_1_per_msg_readings_per_s"] = await citykpi_mqtt(n // 4, 1, protocol="5")
    out["mqtt_bare_paho_drain_per_s"] = bare_paho_drain(n // 4, 1)
    out["mqtt_senml10_readings_per_s"] = await citykpi_mqtt(n // 10, 10)
    out["kafka_simulated_city_readings_per_s"] = await citykpi_simulated_city(n // 4, "kafka")
    out["mqtt_simulated_city_readings_per_s"] = await citykpi_simulated_city(n // 4, "mqtt")
    out["naive_baseline_readings_per_s"] = await naive_mqtt(args.naive_messages)
    out.update(await paced_latency_and_soak(args.paced_rate, args.soak_seconds))
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    naive = float(out["naive_baseline_readings_per_s"])  # type: ignore[arg-type]
    out["ratio_mqtt_vs_bare_paho"] = float(out["mqtt_1_per_msg_readings_per_s"]) / float(  # type: ignore[arg-type]
        out["mqtt_bare_paho_drain_per_s"]
    )  # type: ignore[arg-type]
    out["ratio_kafka_vs_naive"] = kafka10 / naive
    out["ratio_mqtt_senml10_vs_naive"] = float(out["mqtt_senml10_readings_per_s"]) / naive  # type: ignore[arg-type]
    for k, v in out.items():
        print(f"{k:40s} {v:,.3f}" if isinstance(v, float) else f"{k:40s} {v}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
