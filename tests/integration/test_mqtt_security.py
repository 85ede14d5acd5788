"""MQTT with a password file and TLS (a self-signed CA made here), on a real Mosquitto."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import MqttSettings
from ingest.publishers import MqttPublisher
from ingest.service import Service
from tests.conftest import REPO, PrivateMosquitto, free_port
from tests.integration.test_mqtt_ingest import senml_messages, settings_for, wait_for_count

pytestmark = pytest.mark.integration
PASSWORD = "s3cret-mqtt-pw"


def make_ca_and_server_cert(d: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=citykpi test CA",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        str(d / "server.key"),
        "-out",
        str(d / "server.csr"),
    )
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        str(d / "server.csr"),
        "-CA",
        str(d / "ca.crt"),
        "-CAkey",
        str(d / "ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(d / "san.ext"),
        "-out",
        str(d / "server.crt"),
    )


@pytest.fixture
def secure_broker() -> Iterator[tuple[PrivateMosquitto, int, Path]]:
    root = REPO / ".stack" / "test-brokers" / f"tls-{uuid.uuid4().hex[:8]}"
    # certificates and passwords where Mosquitto can read them after dropping root, wherever the
    # checkout lives
    secrets = Path(tempfile.mkdtemp(prefix="citykpi-mqtt-", dir="/var/tmp"))
    secrets.chmod(0o755)
    tls = secrets / "tls"
    tls.mkdir()
    make_ca_and_server_cert(tls)
    passwords = secrets / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "citykpi", PASSWORD], check=True)
    shutil.chown(passwords, "mosquitto")
    shutil.chown(tls / "server.key", "mosquitto")
    broker = PrivateMosquitto(root / "stack")
    tls_port = free_port()
    broker.env.update(
        {
            "CITYKPI_STACK_MQTT_PASSWORD_FILE": str(passwords),
            "CITYKPI_STACK_MQTT_TLS_DIR": str(tls),
            "CITYKPI_STACK_MQTT_TLS_PORT": str(tls_port),
        }
    )
    broker.up()
    yield broker, tls_port, tls
    broker.down()
    shutil.rmtree(secrets)


async def test_service_ingests_over_tls_with_a_password_and_never_logs_it(
    tsdb: str, secure_broker: tuple[PrivateMosquitto, int, Path], caplog: pytest.LogCaptureFixture
) -> None:
    _broker, tls_port, tls = secure_broker
    caplog.set_level(logging.DEBUG)
    auth = {"host": "localhost", "username": "citykpi", "password": PASSWORD, "tls_ca": str(tls / "ca.crt")}
    service = Service(settings_for(tsdb, tls_port, **auth))
    await service.start()
    try:
        pub = MqttPublisher(MqttSettings(port=tls_port, **auth), client_id="tls-pub")  # type: ignore[arg-type]
        await pub.start()
        await pub.publish(senml_messages(200))
        await pub.stop()
        assert await wait_for_count(tsdb, 200) == 200
    finally:
        await service.stop()
    assert PASSWORD not in caplog.text


async def test_wrong_password_is_refused_and_logged_without_the_secret(
    tsdb: str, secure_broker: tuple[PrivateMosquitto, int, Path], caplog: pytest.LogCaptureFixture
) -> None:
    _broker, tls_port, tls = secure_broker
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-password"
    service = Service(
        settings_for(
            tsdb,
            tls_port,
            host="localhost",
            username="citykpi",
            password=wrong,
            tls_ca=str(tls / "ca.crt"),
            startup_wait_s=2,
        )
    )
    await service.start()
    try:
        await asyncio.sleep(1)
        assert not service.sources[0].connected  # type: ignore[attr-defined]
        assert not service.ready()
    finally:
        await service.stop()
    assert "refused" in caplog.text.lower() or "not authorized" in caplog.text.lower()
    assert wrong not in caplog.text
