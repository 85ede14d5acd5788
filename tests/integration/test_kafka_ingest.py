"""Kafka -> citykpi -> TimescaleDB on the real broker (Apache Kafka, or Tansu where Java is missing)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError

from core import telemetry
from core.config import KafkaSettings, Settings
from ingest.deadletters import DeadLetterFilter, requeue_dead_letters
from ingest.publishers import KafkaPublisher
from ingest.service import Service
from ingest.simulator import SimMessage
from tests.conftest import KAFKA_BOOTSTRAP, KAFKA_IMPL, REPO
from tests.integration.test_mqtt_ingest import (
    count_readings,
    rollup_mismatches,
    senml_messages,
    wait_for_count,
)

pytestmark = pytest.mark.integration


async def new_topic(partitions: int = 4) -> str:
    name = f"citykpi.test.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    return name


def kafka_settings(topic: str, group: str) -> dict[str, object]:
    return {
        "bootstrap_servers": KAFKA_BOOTSTRAP,
        "group_id": group,
        "topics": [{"filter": topic, "format": "senml", "city": "demo"}],
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 500,
    }


async def produce(topic: str, n: int, offset: int = 0) -> None:
    pub = KafkaPublisher(KafkaSettings(bootstrap_servers=KAFKA_BOOTSTRAP), {"senml": topic})
    await pub.start()
    try:
        await pub.publish(senml_messages(n, offset=offset, per_pack=2))
    finally:
        await pub.stop()


def service_settings(dsn: str, topic: str, group: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        database={"url": dsn},
        mqtt={"enabled": False},
        http={"enabled": False},
        kafka=kafka_settings(topic, group),
        writer={"batch_max_delay_s": 0.05},
    )


def citykpi_run_env(
    dsn: str, topic: str, extra: dict[str, str], bootstrap: str = KAFKA_BOOTSTRAP
) -> dict[str, str]:
    """The environment of a `citykpi run` subprocess reading `topic` (SenML of city demo, group
    g-<topic>) into `dsn`, MQTT and HTTP off; `extra` adds or overrides CITYKPI_* variables."""
    return {
        **os.environ,
        "CITYKPI_DATABASE__URL": dsn,
        "CITYKPI_MQTT__ENABLED": "false",
        "CITYKPI_HTTP__ENABLED": "false",
        "CITYKPI_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "CITYKPI_KAFKA__TOPICS": json.dumps([{"filter": topic, "format": "senml", "city": "demo"}]),
        "CITYKPI_KAFKA__GROUP_ID": "g-" + topic,
        **extra,
    }


async def committed_and_end_offsets(
    group: str, topic: str, partitions: int = 4
) -> tuple[dict[int, int], dict[int, int]]:
    """Per partition: the group's committed offset, and the topic's end offset."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    probe = AIOKafkaConsumer(bootstrap_servers=KAFKA_BOOTSTRAP)
    await probe.start()
    try:
        ends = await probe.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await probe.stop()
    return (
        {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == topic},
        {tp.partition: end for tp, end in ends.items()},
    )


async def test_kafka_batches_land_once_and_offsets_are_committed(tsdb: str) -> None:
    print(f"Kafka broker under test: {KAFKA_IMPL}")
    topic = await new_topic()
    group = "g-" + topic
    await produce(topic, 2000)
    service = Service(service_settings(tsdb, topic, group))
    await service.start()
    try:
        assert await wait_for_count(tsdb, 4000) == 4000
    finally:
        await service.stop()
    committed, ends = await committed_and_end_offsets(group, topic)
    assert sum(ends.values()) == 2000 and committed == ends  # every partition committed to its end
    again = Service(service_settings(tsdb, topic, group))  # same group: resumes after the commit
    await again.start()
    try:
        await produce(topic, 1, offset=2000)  # once this one lands, the member has joined and read
        assert await wait_for_count(tsdb, 4002) == 4002
    finally:
        await again.stop()
    assert again.pipeline.stats.messages == 1  # the 2,000 committed messages were not read again
    assert await rollup_mismatches(tsdb) == []


@pytest.mark.slow
async def test_two_consumers_in_one_group_store_each_reading_once(tsdb: str) -> None:
    topic = await new_topic()
    a = Service(service_settings(tsdb, topic, "g-" + topic))
    b = Service(service_settings(tsdb, topic, "g-" + topic))
    await a.start()
    await b.start()
    try:
        await asyncio.sleep(3)  # let the group settle on two members
        await produce(topic, 3000)
        assert await wait_for_count(tsdb, 6000) == 6000
    finally:
        await a.stop()
        await b.stop()
    assert a.pipeline.stats.stored + b.pipeline.stats.stored == 6000


@pytest.mark.slow
async def test_kill_9_mid_stream_then_restart_stores_every_reading_once(tsdb: str, tmp_path: Path) -> None:
    topic = await new_topic()
    env = citykpi_run_env(tsdb, topic, {"CITYKPI_WRITER__BATCH_MAX_ROWS": "500"})
    cmd = [str(Path(sys.executable).parent / "citykpi"), "run", "--no-progress"]
    log = (tmp_path / "service.log").open("ab")
    await produce(topic, 10000)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while await count_readings(tsdb) < 2000:
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert await count_readings(tsdb) < 20000
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        assert await wait_for_count(tsdb, 20000, timeout=90) == 20000
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert await rollup_mismatches(tsdb) == []


async def test_rejected_payloads_also_go_to_the_dead_letter_topic(tsdb: str) -> None:
    topic, dlq = await new_topic(), await new_topic(partitions=1)
    pub = KafkaPublisher(KafkaSettings(bootstrap_servers=KAFKA_BOOTSTRAP), {"senml": topic})
    await pub.start()
    await pub.publish([SimMessage("city/demo/senml/x", b"{truncated"), *senml_messages(10)])
    await pub.stop()
    settings = service_settings(tsdb, topic, "g-" + topic)
    settings.kafka.dead_letter_topic = dlq
    service = Service(settings)
    await service.start()
    try:
        assert await wait_for_count(tsdb, 10) == 10
    finally:
        await service.stop()
    consumer = AIOKafkaConsumer(
        dlq, bootstrap_servers=KAFKA_BOOTSTRAP, auto_offset_reset="earliest", group_id="read-" + dlq
    )
    await consumer.start()
    try:
        records = [r for batch in (await consumer.getmany(timeout_ms=5000)).values() for r in batch]
    finally:
        await consumer.stop()
    assert len(records) == 1
    record = json.loads(records[0].value)
    assert record["reason"] == "bad_json"
    assert record["topic"] == topic
    assert record["partition"] is not None and record["offset"] is not None
    assert base64.b64decode(record["payload_base64"]) == b"{truncated"
    assert record["message_id"] and datetime.fromisoformat(record["received_at"]).tzinfo is not None


@pytest.mark.slow
async def test_a_stalled_database_pauses_fetching_at_the_bound_and_lag_is_measured(tsdb: str) -> None:
    topic = await new_topic()
    await produce(topic, 3000)
    settings = service_settings(tsdb, topic, "g-" + topic)
    settings.kafka.max_held_messages, settings.kafka.max_poll_records = 500, 100
    service = Service(settings)
    lock = await asyncpg.connect(tsdb)
    tx = lock.transaction()
    await tx.start()
    await lock.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
    try:
        await service.start()
        source = service.sources[0]
        peak = 0
        for _ in range(60):
            await asyncio.sleep(0.1)
            peak = max(peak, source.held_messages)
        assert 500 <= peak < 500 + 100, peak  # paused at the bound: the rest stays in Kafka
        await asyncio.sleep(5)  # the monitor measures lag every 5 s, paused or not
        lags = {
            s.labels["partition"]: s.value
            for m in telemetry.KAFKA_LAG.collect()
            for s in m.samples
            if s.labels["topic"] == topic
        }
        assert sum(lags.values()) == 3000, lags  # nothing committed: every message is lag
        await tx.rollback()
        assert await wait_for_count(tsdb, 6000) == 6000
    finally:
        await lock.close()
        await service.stop()
    assert source.held_messages == 0


async def test_a_missing_topic_is_noted_once_at_info_and_consumed_once_it_exists(
    tsdb: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The topic does not exist when the service starts: no ERROR on each metadata refresh, one INFO
    note (none if the local broker auto-created it on subscription first), and once a producer creates
    it the group joins, stores every message and commits every partition to its end."""
    missing = f"citykpi.test.absent.{uuid.uuid4().hex[:8]}"
    group = "g-" + missing
    service = Service(service_settings(tsdb, missing, group))
    with caplog.at_level(logging.INFO):
        await service.start()
        try:
            await produce(missing, 50)  # the broker creates the topic with num.partitions=4
            assert await wait_for_count(tsdb, 100) == 100
        finally:
            await service.stop()
    committed, ends = await committed_and_end_offsets(group, missing)
    assert sum(ends.values()) == 50 and committed == ends
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    notes = [r for r in caplog.records if "not created yet" in r.getMessage()]
    assert errors == [], [r.getMessage() for r in errors]
    assert len(notes) <= 1 and all(n.levelno == logging.INFO and missing in n.getMessage() for n in notes)


async def test_a_time_less_payload_takes_the_record_timestamp_and_its_requeue_the_same_time(
    tsdb: str,
) -> None:
    """The record's timestamp stamps a payload without a time (a redelivery gives the same time);
    the dead letter keeps it as sent_at beside its own receive time, and a requeue stamps as before."""
    topic = await new_topic(partitions=1)
    sent = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP)
    await producer.start()
    try:
        pack = [{"bn": "air-1:", "n": "pm25", "v": 12.5}, {"n": "pm10", "v": "high"}]  # the 2nd is rejected
        await producer.send_and_wait(
            topic, json.dumps(pack).encode(), timestamp_ms=int(sent.timestamp() * 1000)
        )
    finally:
        await producer.stop()
    settings = service_settings(tsdb, topic, "g-" + topic)
    service = Service(settings)
    started = datetime.now(UTC)
    await service.start()
    try:
        assert await wait_for_count(tsdb, 1) == 1
    finally:
        await service.stop()
    conn = await asyncpg.connect(tsdb)
    try:
        assert await conn.fetchval("SELECT time FROM readings") == sent
        letter = await conn.fetchrow("SELECT received_at, sent_at, reason FROM dead_letters")
        assert letter["sent_at"] == sent and letter["received_at"] >= started - timedelta(seconds=1)
        result = await requeue_dead_letters(settings, DeadLetterFilter(topic=topic))
        assert (result.messages, result.already_stored, result.stored) == (1, 1, 0)
        assert await conn.fetch("SELECT time FROM readings") == [(sent,)]  # nothing stored twice
        again = await conn.fetchrow("SELECT sent_at FROM dead_letters WHERE requeued_at IS NULL")
        assert again["sent_at"] == sent  # the part that fails again keeps the message's times
    finally:
        await conn.close()


@pytest.mark.slow
async def test_a_rebalance_during_a_stall_abandons_the_batch_in_flight_and_its_new_owner_replays_it(
    tsdb: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A holds an uncommitted batch behind a locked table when B joins: A gives its partitions up
    after `rebalance_wait_s`; once the lock goes, A's late offset commit fails harmlessly and B's
    replay of the same offsets is stored once."""
    topic = await new_topic(partitions=2)
    await produce(topic, 1000)
    settings = service_settings(tsdb, topic, "g-" + topic)
    settings.kafka.rebalance_wait_s = 1.0
    lock = await asyncpg.connect(tsdb)
    tx = lock.transaction()
    await tx.start()
    await lock.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
    a, b = Service(settings), Service(service_settings(tsdb, topic, "g-" + topic))
    try:
        with caplog.at_level(logging.WARNING, logger="ingest.kafka.source"):
            await a.start()
            while a.sources[0].held_messages == 0:
                await asyncio.sleep(0.05)
            await b.start()
            for _ in range(200):
                if "revoked with" in caplog.text:
                    break
                await asyncio.sleep(0.1)
        assert "revoked with" in caplog.text
        await tx.rollback()
        assert await wait_for_count(tsdb, 2000) == 2000
    finally:
        await lock.close()
        await a.stop()
        await b.stop()
    assert await rollup_mismatches(tsdb) == []


async def test_failed_fetches_are_retried_with_jittered_backoff_and_nothing_is_lost(
    tsdb: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Three fetches fail on the real consumer (a fault injected in front of `getmany`): the source
    reports itself disconnected, waits 0.2, 0.4, 0.8 s plus up to 0.5 s of jitter, then reads
    every message once and counts one reconnect."""
    topic = await new_topic()
    await produce(topic, 200)
    service = Service(service_settings(tsdb, topic, "g-" + topic))
    reconnects = telemetry.RECONNECTS.labels("kafka")._value.get()
    caplog.set_level(logging.WARNING, "ingest.kafka.source")
    await service.start()
    try:
        source = service.sources[0]
        consumer = source._consumer  # type: ignore[attr-defined]
        fetch, failures, seen_down = consumer.getmany, 3, []

        async def failing_then_real(*args: object, **kwargs: object) -> object:
            nonlocal failures
            seen_down.append(not source.connected)
            if failures:
                failures -= 1
                raise KafkaConnectionError("injected fetch failure")
            return await fetch(*args, **kwargs)

        consumer.getmany = failing_then_real
        assert await wait_for_count(tsdb, 400) == 400
        async with asyncio.timeout(10):  # the fetches may fail only after the messages were read
            while len(seen_down) < 5:
                await asyncio.sleep(0.05)
    finally:
        await service.stop()
    assert seen_down[1:4] == [True, True, True]  # disconnected while retrying
    waits = [
        float(r.getMessage().rsplit(" in ", 1)[1].split()[0])
        for r in caplog.records
        if r.getMessage().startswith("Kafka fetch failed")
    ]
    assert len(waits) == 3
    for wait, base in zip(waits, (0.2, 0.4, 0.8), strict=True):
        assert base <= wait <= base + 0.5 + 0.05, waits  # rounded to 0.1 s in the log
    assert telemetry.RECONNECTS.labels("kafka")._value.get() == reconnects + 1
    assert service.pipeline.stats.messages == 200
