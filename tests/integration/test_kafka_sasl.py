"""Kafka with SASL/PLAIN on the local Apache Kafka's SASL listener (Tansu has none: skipped there)."""

from __future__ import annotations

import logging

import pytest
from aiokafka.errors import KafkaConnectionError

from core.config import KafkaSettings
from core.logs import setup_logging
from ingest.publishers import KafkaPublisher
from ingest.service import Service
from tests.conftest import KAFKA_IMPL, STACK_ENV
from tests.integration.test_kafka_ingest import new_topic, service_settings
from tests.integration.test_mqtt_ingest import senml_messages, wait_for_count

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        KAFKA_IMPL != "apache" or "CITYKPI_STACK_KAFKA_SASL" not in STACK_ENV,
        reason="SASL needs the Apache Kafka broker of deploy/local/stack.sh (Tansu has no SASL)",
    ),
]


def sasl(password: str | None = None) -> dict[str, object]:
    address, user, secret = STACK_ENV["CITYKPI_STACK_KAFKA_SASL"].split()
    return {
        "bootstrap_servers": address,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
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
    settings.kafka = KafkaSettings(**{**settings.kafka.model_dump(), **sasl("wrong")})  # type: ignore[arg-type]
    service = Service(settings)
    try:
        with pytest.raises(KafkaConnectionError):
            await service.start()
    finally:
        await service.stop()
    assert "Authentication failed" in caplog.text
    assert "wrong" not in caplog.text
