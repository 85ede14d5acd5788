"""The deployment files with the tools they meet: deploy/compose/make-certs.sh (openssl,
mosquitto_passwd) makes the certificates and password file, the compose file's Mosquitto
configuration runs on the real Mosquitto with them, and `docker compose config` and
`systemd-analyze verify` read the files where installed. The checks that need none of these are in
tests/unit/test_deploy_manifests.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import KafkaSettings
from tests.deploy_files import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    ENV_EXAMPLE,
    SYSTEMD,
    compose_env_example,
    interpolate,
    interpolated,
    load_compose,
)

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def compose_secrets() -> Iterator[Path]:
    """deploy/compose/make-certs.sh run for real, into a temporary directory (one that Mosquitto can
    reach after dropping its privileges: pytest's own tmp_path is private to its user)."""
    if not (shutil.which("openssl") and shutil.which("mosquitto_passwd")):
        pytest.skip("make-certs.sh needs openssl and mosquitto_passwd (Debian: openssl, mosquitto)")
    tmp = Path(tempfile.mkdtemp(prefix="citykpi-compose-"))
    tmp.chmod(0o755)
    try:
        yield _make_certs(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_certs(tmp: Path) -> Path:
    env_file = tmp / ".env"
    text = ENV_EXAMPLE.read_text()
    text = re.sub(r"^(CITYKPI_MQTT_PASSWORD)=.*$", r"\1=citykpi-pw", text, flags=re.M)
    text = re.sub(r"^(SIMULATOR_MQTT_PASSWORD)=.*$", r"\1=simulator-pw", text, flags=re.M)
    env_file.write_text(text)
    env = {**os.environ, "ENV_FILE": str(env_file), "SECRETS_DIR": str(tmp / "secrets")}
    if os.geteuid() == 0:  # let this machine's mosquitto user read what the container's would
        env["MOSQUITTO_GID"] = str(int(subprocess.check_output(["id", "-g", "mosquitto"], text=True)))
    out = subprocess.run(
        ["bash", str(COMPOSE_DIR / "make-certs.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    # a second run keeps the CA and the certificate
    ca = (tmp / "secrets" / "ca" / "ca.crt").read_bytes()
    out = subprocess.run(
        ["bash", str(COMPOSE_DIR / "make-certs.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert (tmp / "secrets" / "ca" / "ca.crt").read_bytes() == ca
    return tmp / "secrets"


def test_make_certs_refuses_placeholder_passwords(tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        pytest.skip("needs openssl")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    out = subprocess.run(
        ["bash", str(COMPOSE_DIR / "make-certs.sh"), "--passwords"],
        capture_output=True,
        text=True,
        env={**os.environ, "ENV_FILE": str(tmp_path / ".env"), "SECRETS_DIR": str(tmp_path / "s")},
        timeout=60,
    )
    assert out.returncode != 0 and "CHANGE_ME" in out.stderr


def test_compose_references_files_that_exist(compose_secrets: Path) -> None:
    """Build context, Dockerfile, env file and every bind mount; ./secrets/… as make-certs.sh makes it."""
    compose = interpolated(load_compose(), compose_env_example())
    checked = 0
    for name, service in compose["services"].items():
        if "build" in service:
            context = COMPOSE_DIR / service["build"]["context"]
            assert context.is_dir() and (context / service["build"]["dockerfile"]).is_file()
        for env_file in service.get("env_file", []) or []:
            assert (COMPOSE_DIR / env_file).is_file(), f"{name}: env_file {env_file}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: undeclared named volume {source}"
                continue
            if source.startswith("../grafana/"):
                continue  # deploy/grafana: test_compose_grafana_provisioning_paths
            rel = Path(source).relative_to(".") if source.startswith("./") else Path(source)
            base = compose_secrets.parent if rel.parts[0] == "secrets" else COMPOSE_DIR
            assert (base / rel).exists(), f"{name}: {source} does not exist"
            checked += 1
    assert checked >= 4
    assert ENV_EXAMPLE.is_file()
    gitignore = (COMPOSE_DIR / ".gitignore").read_text().split()
    assert "/.env" in gitignore and "/secrets/" in gitignore


def test_docker_compose_config_when_the_plugin_exists() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("the docker compose plugin is not installed here (no engine is needed for `config`)")
    out = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


# ----------------------------------------------------------------------------- Mosquitto, for real
def _mosquitto_conf(tmp: Path, secrets: Path, tls_port: int, plain_port: int) -> Path:
    lines = (COMPOSE_DIR / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#")) + "\n"
    targets = [v.split(":")[1] for v in load_compose()["services"]["mosquitto"]["volumes"]]
    for path in re.findall(r"/mosquitto/\S*", text):
        assert any(path.startswith(t) for t in targets), f"mosquitto.conf: {path} is not mounted"
    (tmp / "data").mkdir()
    (tmp / "data").chmod(0o777)
    text = text.replace("/mosquitto/secrets/", f"{secrets / 'mosquitto'}/")
    # a copy beside the data: Mosquitto reads it after dropping root, and the checkout may be private
    shutil.copy(COMPOSE_DIR / "mosquitto" / "acl", tmp / "acl")
    (tmp / "acl").chmod(0o644)
    text = text.replace("/mosquitto/config/acl", str(tmp / "acl"))
    text = text.replace("/mosquitto/data/", f"{tmp / 'data'}/")
    text = re.sub(r"^listener 8883$", f"listener {tls_port} 127.0.0.1", text, flags=re.M)
    text = re.sub(r"^listener 1883$", f"listener {plain_port} 127.0.0.1", text, flags=re.M)
    conf = tmp / "mosquitto.conf"
    conf.write_text(text)
    return conf


def test_mosquitto_tls_passwords_acl_and_healthcheck(compose_secrets: Path) -> None:
    """The compose Mosquitto config on the real broker: TLS with the made CA, the password file, the
    ACL (citykpi reads through its shared subscription, the simulator only writes), the healthcheck."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    if not shutil.which("mosquitto"):
        pytest.skip("mosquitto is not installed")
    tls_port, plain_port = free_port(), free_port()
    passwd = compose_secrets / "mosquitto" / "passwd"
    before = passwd.stat()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "demo/air-1", "device-pw"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "demo/gw-1", "edge-pw"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "demo/alerts", "alerts-pw"], check=True)
    os.chown(passwd, before.st_uid, before.st_gid)
    passwd.chmod(before.st_mode)
    run_dir = compose_secrets.parent / f"run-{uuid.uuid4().hex[:8]}"
    run_dir.mkdir(mode=0o755)
    conf = _mosquitto_conf(run_dir, compose_secrets, tls_port, plain_port)
    ca = compose_secrets / "mosquitto" / "ca.crt"
    broker = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    clients: list[mqtt.Client] = []
    try:
        try:
            wait_port(tls_port)
            wait_port(plain_port)
        except AssertionError:
            broker.kill()
            raise AssertionError(f"mosquitto did not start:\n{broker.communicate()[0]}") from None

        def client(user: str, password: str, tls: bool) -> tuple[mqtt.Client, dict[str, Any]]:
            state: dict[str, Any] = {"connected": threading.Event(), "rc": None, "got": [], "subs": []}
            c = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"t-{user}-{uuid.uuid4().hex[:6]}",
                protocol=MQTTProtocolVersion.MQTTv5,
            )
            c.username_pw_set(user, password)
            if tls:
                c.tls_set_context(ssl.create_default_context(cafile=str(ca)))

            def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
                state["rc"] = rc
                state["connected"].set()

            c.on_connect = on_connect
            c.on_message = lambda _c, _u, m: state["got"].append((m.topic, m.payload))
            c.on_subscribe = lambda _c, _u, _m, rcs, _p: state["subs"].extend(rcs)
            c.connect("localhost", tls_port if tls else plain_port, 30)
            c.loop_start()
            clients.append(c)
            assert state["connected"].wait(10), f"{user}: no CONNACK"
            return c, state

        _, bad = client("citykpi", "wrong", tls=True)
        assert bad["rc"].is_failure, "a wrong password was accepted"
        _, anon = client("", "", tls=False)
        assert anon["rc"].is_failure, "an anonymous client was accepted"

        reader, rstate = client("citykpi", "citykpi-pw", tls=True)
        assert not rstate["rc"].is_failure, rstate["rc"]
        reader.subscribe("$share/citykpi/city/+/senml/+", qos=1)
        writer, wstate = client("simulator", "simulator-pw", tls=False)  # as the simulator profile does
        assert not wstate["rc"].is_failure, wstate["rc"]
        writer.subscribe("city/#", qos=1)  # the ACL gives the simulator no read access
        deadline = time.monotonic() + 5
        while len(rstate["subs"]) < 1 or len(wstate["subs"]) < 1:
            assert time.monotonic() < deadline, "no SUBACK"
            time.sleep(0.02)
        writer.publish("city/demo/senml/dev-1", b'[{"n":"x","v":1}]', qos=1).wait_for_publish(5)
        # a device user <city>/<device> publishes its own topic only: not in another city, not as
        # another device (QoS 0: Mosquitto drops a denied publish silently)
        device, dstate = client("demo/air-1", "device-pw", tls=True)
        assert not dstate["rc"].is_failure, dstate["rc"]
        for topic in ("city/demo/senml/air-1", "city/other/senml/air-1", "city/demo/senml/air-2"):
            device.publish(topic, topic.encode(), qos=0).wait_for_publish(5)
        reader.publish("city/demo/senml/dev-1", b"not allowed", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while len(rstate["got"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert rstate["got"] == [
            ("city/demo/senml/dev-1", b'[{"n":"x","v":1}]'),
            ("city/demo/senml/air-1", b"city/demo/senml/air-1"),
        ], rstate["got"]
        assert wstate["got"] == [], "the simulator user could read"

        # a Sparkplug B edge node <city>/<node> publishes its own node's and devices' messages in
        # its city's group only: no BIRTH, DATA or DEATH for another group or node (which would
        # poison that node's aliases or mark it offline); a SenML device none at all; the service
        # reads them and sends the node its rebirth command, which only that node receives
        host, hstate = client("citykpi", "citykpi-pw", tls=False)
        host.subscribe("spBv1.0/#", qos=1)
        edge, estate = client("demo/gw-1", "edge-pw", tls=False)
        assert not estate["rc"].is_failure, estate["rc"]
        edge.subscribe("spBv1.0/demo/NCMD/gw-1", qos=1)
        edge.subscribe("spBv1.0/demo/NCMD/gw-2", qos=1)  # another node's commands: never delivered
        deadline = time.monotonic() + 5
        while not hstate["subs"] or len(estate["subs"]) < 2:
            assert time.monotonic() < deadline, "no SUBACK"
            time.sleep(0.02)
        own = ("spBv1.0/demo/NBIRTH/gw-1", "spBv1.0/demo/DDATA/gw-1/meter-1", "spBv1.0/demo/NDEATH/gw-1")
        foreign = (
            "spBv1.0/other/NBIRTH/gw-1",
            "spBv1.0/other/DDATA/gw-1/meter-1",
            "spBv1.0/demo/NBIRTH/gw-2",
            "spBv1.0/demo/NDEATH/gw-2",
            "spBv1.0/demo/DBIRTH/gw-2/meter-1",
            "spBv1.0/demo/NCMD/gw-2",
        )
        for topic in (*own, *foreign):
            edge.publish(topic, topic.encode(), qos=0).wait_for_publish(5)
        senml_device, _ = client("demo/air-1", "device-pw", tls=False)
        senml_device.publish("spBv1.0/demo/NBIRTH/air-1", b"x", qos=0).wait_for_publish(5)
        host.publish("spBv1.0/demo/NCMD/gw-1", b"rebirth", qos=1).wait_for_publish(5)
        host.publish("spBv1.0/demo/NCMD/gw-2", b"rebirth", qos=1).wait_for_publish(5)
        host.publish("spBv1.0/demo/NBIRTH/gw-1", b"forged by the host", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while (len(hstate["got"]) < 5 or not estate["got"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        seen = {t for t, _ in hstate["got"]}
        assert seen == {*own, "spBv1.0/demo/NCMD/gw-1", "spBv1.0/demo/NCMD/gw-2"}, hstate["got"]
        assert estate["got"] == [("spBv1.0/demo/NCMD/gw-1", b"rebirth")], estate["got"]

        # alert events on the compose topic: the service's notifier (as citykpi, over TLS) publishes
        # each on <topic>/<city>; a city's subscriber <city>/alerts reads its own city's only
        from core.config import AlertSettings, MqttSettings
        from ingest.alert_notify import AlertNotifier

        topic = load_compose()["x-citykpi-env"]["CITYKPI_ALERTS__MQTT_TOPIC"]
        subscriber, sstate = client("demo/alerts", "alerts-pw", tls=True)
        assert not sstate["rc"].is_failure, sstate["rc"]
        subscriber.subscribe(f"{topic}/demo", qos=1)
        subscriber.subscribe(f"{topic}/other", qos=1)  # another city's: refused or never delivered
        deadline = time.monotonic() + 5
        while len(sstate["subs"]) < 2:
            assert time.monotonic() < deadline, "no SUBACK"
            time.sleep(0.02)
        notifier = AlertNotifier(
            AlertSettings(mqtt_topic=topic),
            MqttSettings(
                host="localhost", port=tls_port, username="citykpi", password="citykpi-pw", tls_ca=ca
            ),
        )
        events = [{"alert_id": f"a-{city}", "event": "opened", "city_id": city} for city in ("demo", "other")]
        asyncio.run(notifier(events))
        deadline = time.monotonic() + 5
        while not sstate["got"] and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert [(t, json.loads(p)) for t, p in sstate["got"]] == [(f"{topic}/demo", events[0])], sstate["got"]

        # the compose healthcheck command itself, with the paths and port of this broker
        test = load_compose()["services"]["mosquitto"]["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL"
        cmd = interpolate(test[1], {}).replace("/mosquitto/secrets/", f"{compose_secrets / 'mosquitto'}/")
        cmd = cmd.replace("-p 8883", f"-p {tls_port}")
        if shutil.which("mosquitto_sub"):
            health = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=30)
            assert health.returncode == 0, health.stdout + health.stderr
    finally:
        for c in clients:
            c.loop_stop()
            c.disconnect()
        broker.terminate()
        log, _ = broker.communicate(timeout=10)
    assert "Error" not in log.replace("Error: Connection", ""), log


def test_systemd_analyze_verify_when_available(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    for name in ("citykpi.service", "citykpi-migrate.service"):
        unit = tmp_path / name
        unit.write_text((SYSTEMD / name).read_text())
        out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        problems = [
            line
            for line in (out.stdout + out.stderr).splitlines()
            if line.strip() and "is not executable" not in line and "/opt/citykpi/venv" not in line
        ]
        assert not problems, "\n".join(problems)


def test_kafka_init_makes_scram_users_topics_and_only_the_acls_citykpi_and_the_simulator_need(
    tmp_path: Path,
) -> None:
    """deploy/compose/kafka/init.sh with Kafka's command-line tools replaced by recorders: SCRAM
    users citykpi and simulator with the secret files' passwords (never on a command line), the
    source and dead-letter topics, and exactly these ACLs (literal names, no cluster operation):
    citykpi reads the topics compose routes and its group and writes the dead-letter topic, the
    simulator writes the source topics. Twice: it is re-run at every `up`."""
    calls = tmp_path / "calls.jsonl"
    bin_dir, secrets = tmp_path / "bin", tmp_path / "secrets"
    bin_dir.mkdir()
    secrets.mkdir()
    recorder = (
        f"#!{sys.executable}\nimport itertools, json, pathlib, sys\nargs = sys.argv[1:]\n"
        "pairs = itertools.pairwise(args)\n"
        "files = {a: pathlib.Path(a).read_text() for p, a in pairs if p == '--add-config-file'}\n"
        f"with open({str(calls)!r}, 'a') as f:\n"
        "    f.write(json.dumps([pathlib.Path(sys.argv[0]).name, args, files]) + '\\n')\n"
    )
    for tool in ("kafka-configs.sh", "kafka-topics.sh", "kafka-acls.sh"):
        (bin_dir / tool).write_text(recorder)
        (bin_dir / tool).chmod(0o755)
    passwords = {user: f"{user}-{uuid.uuid4().hex}" for user in ("citykpi", "simulator")}
    for user, password in passwords.items():
        (secrets / f"kafka_{user}_password").write_text(password)
    env = {**os.environ, "KAFKA_BIN": str(bin_dir), "KAFKA_SECRETS_DIR": str(secrets)}
    for _ in range(2):
        out = subprocess.run(
            ["bash", str(COMPOSE_DIR / "kafka" / "init.sh")],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert all(args[:2] == ["--bootstrap-server", "127.0.0.1:9091"] for _, args, _ in recorded)
    assert not any(p in " ".join(args) for _, args, _ in recorded for p in passwords.values())

    scram = {
        args[args.index("--entity-name") + 1]: files
        for tool, args, files in recorded
        if tool == "kafka-configs.sh"
    }
    assert {user: list(files.values()) for user, files in scram.items()} == {
        user: [f"SCRAM-SHA-512=password={password}\n"] for user, password in passwords.items()
    }

    compose = load_compose()["services"]["citykpi"]["environment"]
    sources = {route.filter for route in KafkaSettings().topics}  # what compose's citykpi reads (defaults)
    assert "CITYKPI_KAFKA__TOPICS" not in compose
    dead_letters, group = compose["CITYKPI_KAFKA__DEAD_LETTER_TOPIC"], compose["CITYKPI_KAFKA__GROUP_ID"]
    created = {args[args.index("--topic") + 1] for tool, args, _ in recorded if tool == "kafka-topics.sh"}
    assert created == sources | {dead_letters}

    acls = set()
    for tool, args, _ in recorded:
        if tool != "kafka-acls.sh":
            continue
        assert "--add" in args and "--cluster" not in args and "--resource-pattern-type" not in args, args
        principal = args[args.index("--allow-principal") + 1]
        kind = "topic" if "--topic" in args else "group"
        name = args[args.index(f"--{kind}") + 1]
        acls |= {(principal, op, kind, name) for p, op in itertools.pairwise(args) if p == "--operation"}
    expected = {("User:citykpi", op, "topic", t) for t in sources for op in ("Read", "Describe")}
    expected |= {("User:citykpi", op, "topic", dead_letters) for op in ("Write", "Describe")}
    expected |= {("User:citykpi", "Read", "group", group)}
    expected |= {("User:simulator", op, "topic", t) for t in sources for op in ("Write", "Describe")}
    assert acls == expected
