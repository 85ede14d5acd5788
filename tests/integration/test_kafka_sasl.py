"""Kafka with SASL (PLAIN, SCRAM-SHA-512) on the local Apache Kafka's SASL listener (Tansu has none:
skipped there)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from core.config import KafkaSettings
from core.logs import setup_logging
from ingest.publishers import KafkaPublisher
from ingest.service import Service
from tests.conftest import KAFKA_IMPL, REPO, STACK_ENV
from tests.integration.test_kafka_ingest import citykpi_run_env, new_topic, service_settings
from tests.integration.test_mqtt_ingest import senml_messages, wait_for_count

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        KAFKA_IMPL != "apache" or "CITYKPI_STACK_KAFKA_SASL" not in STACK_ENV,
        reason="SASL needs the Apache Kafka broker of deploy/local/stack.sh (Tansu has no SASL)",
    ),
]


def sasl(mechanism: str = "PLAIN", password: str | None = None) -> dict[str, object]:
    """KafkaSettings for the stack's SASL user, with PLAIN or SCRAM-SHA-512."""
    line = "CITYKPI_STACK_KAFKA_SASL" if mechanism == "PLAIN" else "CITYKPI_STACK_KAFKA_SCRAM"
    address, user, secret = STACK_ENV[line].split()
    return {
        "bootstrap_servers": address,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_username": user,
        "sasl_password": password or secret,
    }


async def test_service_consumes_over_sasl_plain(tsdb: str, caplog: pytest.LogCaptureFixture) -> None:
    setup_logging("DEBUG", json_logs=True)  # as `citykpi run --log-level DEBUG` does
    caplog.set_level(logging.DEBUG)
    topic = await new_topic()
    pub = KafkaPublisher(KafkaSettings(**sasl()), {"senml": topic})  # type: ignore[arg-type]
    await pub.start()
    await pub.publish(senml_messages(100))
    await pub.stop()
    settings = service_settings(tsdb, topic, "g-" + topic)
    settings.kafka = KafkaSettings(**{**settings.kafka.model_dump(), **sasl()})  # type: ignore[arg-type]
    service = Service(settings)
    await service.start()
    try:
        assert await wait_for_count(tsdb, 100) == 100
    finally:
        await service.stop()
    assert sasl()["sasl_password"] not in caplog.text


async def test_a_wrong_sasl_password_fails_the_start_and_the_log_says_why(
    tsdb: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = await new_topic()
    setup_logging("DEBUG", json_logs=True)
    settings = service_settings(tsdb, topic, "g-" + topic)
    settings.kafka = KafkaSettings(**{**settings.kafka.model_dump(), **sasl(password="wrong")})  # type: ignore[arg-type]
    service = Service(settings)
    try:
        with pytest.raises(KafkaConnectionError):
            await service.start()
    finally:
        await service.stop()
    assert "Authentication failed" in caplog.text
    assert "wrong" not in caplog.text


SCRAM = STACK_ENV.get("CITYKPI_STACK_KAFKA_SCRAM")
needs_scram = pytest.mark.skipif(
    SCRAM is None,
    reason="the stack's Kafka offers no SCRAM-SHA-512: restart it (stack.sh down kafka; up kafka)",
)


def scram_env(dsn: str, topic: str, password: str | None = None) -> dict[str, str]:
    """`citykpi run`'s environment for the stack's SCRAM-SHA-512 user, as an operator would set it."""
    address, user, secret = (SCRAM or "").split()
    sasl = {
        "CITYKPI_WRITER__BATCH_MAX_DELAY_S": "0.05",
        "CITYKPI_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "CITYKPI_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "CITYKPI_KAFKA__SASL_USERNAME": user,
        "CITYKPI_KAFKA__SASL_PASSWORD": password or secret,
    }
    return citykpi_run_env(dsn, topic, sasl, bootstrap=address)


def citykpi_run(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "citykpi"), "run", "--no-progress", "--log-level", "DEBUG"],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


@needs_scram
async def test_citykpi_run_ingests_over_sasl_scram_sha_512(tsdb: str, tmp_path: Path) -> None:
    """Producer and `citykpi run` authenticate with SCRAM-SHA-512 (configured through the
    environment); every reading is stored and the password appears in no log line."""
    topic = await new_topic()
    env = scram_env(tsdb, topic)
    pub = KafkaPublisher(KafkaSettings(**sasl("SCRAM-SHA-512")), {"senml": topic})  # type: ignore[arg-type]
    await pub.start()
    await pub.publish(senml_messages(100))
    await pub.stop()
    log = tmp_path / "service.log"
    proc = citykpi_run(env, log)
    try:
        assert await wait_for_count(tsdb, 100, timeout=60) == 100
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    assert (SCRAM or "").split()[2] not in log.read_text()


@needs_scram
async def test_a_wrong_scram_password_stops_citykpi_run_with_a_line_that_says_why(
    tsdb: str, tmp_path: Path
) -> None:
    """A wrong SCRAM password: `citykpi run` exits non-zero with an ERROR line naming the failed
    authentication, stores nothing, and neither password is in its output."""
    wrong = f"wrong-{uuid.uuid4().hex}"
    env = scram_env(tsdb, await new_topic(), wrong)
    log = tmp_path / "service.log"
    proc = citykpi_run(env, log)
    try:
        returncode = await asyncio.to_thread(proc.wait, 90)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert returncode != 0, text[-2000:]
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(
        line["level"] == "ERROR"
        and "Authentication failed" in line["message"]
        and "SCRAM-SHA-512" in line["message"]
        for line in lines
    ), text[-2000:]
    assert wrong not in text
    assert (SCRAM or "").split()[2] not in text
    assert await wait_for_count(tsdb, 1, timeout=1) == 0
