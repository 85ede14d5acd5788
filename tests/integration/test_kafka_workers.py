"""kafka.workers: more consumer processes in the group, each with its own pipeline and writer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest.service import Service
from tests.conftest import REPO
from tests.integration.test_kafka_ingest import (
    citykpi_run_env,
    committed_and_end_offsets,
    new_topic,
    produce,
    service_settings,
)
from tests.integration.test_mqtt_ingest import count_readings, rollup_mismatches, wait_for_count

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_two_workers_share_the_partitions_and_store_each_reading_once(tsdb: str) -> None:
    topic = await new_topic()
    group = "g-" + topic
    settings = service_settings(tsdb, topic, group)
    settings.kafka.workers = 2
    service = Service(settings)
    await service.start()
    try:
        assert service.kafka_workers is not None
        await produce(topic, 3000)  # SenML packs of 2 readings
        assert await wait_for_count(tsdb, 6000) == 6000
    finally:
        await service.stop()
    stored_here = service.pipeline.stats.stored
    assert 0 < stored_here < 6000  # the worker process stored the rest
    committed, ends = await committed_and_end_offsets(group, topic)
    assert sum(ends.values()) == 3000 and committed == ends  # every offset committed, after its write
    assert await count_readings(tsdb) == 6000
    assert await rollup_mismatches(tsdb) == []


async def test_a_worker_that_dies_fails_the_service(tsdb: str) -> None:
    topic = await new_topic()
    settings = service_settings(tsdb, topic, "g-" + topic)
    settings.kafka.workers = 2
    service = Service(settings)
    await service.start()
    try:
        assert service.kafka_workers is not None
        (worker,) = service.kafka_workers.pids
        os.kill(worker, signal.SIGKILL)
        await asyncio.wait_for(service.supervisor.failed.wait(), 10)
        assert service.failure is not None and "kafka-worker-1" in service.failure
    finally:
        await service.stop()


async def test_workers_stop_when_the_service_is_killed(tsdb: str, tmp_path: Path) -> None:
    topic = await new_topic()
    env = citykpi_run_env(tsdb, topic, {"CITYKPI_KPI_REFRESH_INTERVAL_S": "0", "CITYKPI_KAFKA__WORKERS": "2"})
    cmd = [str(Path(sys.executable).parent / "citykpi"), "run", "--no-progress"]
    log = tmp_path / "service.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while "Kafka workers consuming" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            await asyncio.sleep(0.2)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        workers = [
            int(c) for c in children if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()
        ]
        assert len(workers) == 1
        await produce(topic, 500)
        assert await wait_for_count(tsdb, 1000, timeout=60) == 1000
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 30
        while _alive(workers[0]):
            assert time.monotonic() < deadline, "the orphaned worker kept running"
            await asyncio.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
