"""The deployment files, checked without a Docker engine or a Kubernetes cluster.

Dockerfile, deploy/compose, deploy/k8s and deploy/systemd: they parse, they reference files that
exist, and every CITYKPI_… variable they pass reaches the real `citykpi config show` (a subprocess)
which must accept it, apply it (the settings model ignores unknown keys, so a misspelt variable would
otherwise be lost silently) and print no secret. The compose file's Mosquitto configuration runs on
the real Mosquitto with the certificates and password file that deploy/compose/make-certs.sh makes.
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from ingest.config import mask_dsn
from tests.conftest import REPO

pytestmark = pytest.mark.integration

CITYKPI = str(Path(sys.executable).parent / "citykpi")
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
K8S = REPO / "deploy" / "k8s"
SYSTEMD = REPO / "deploy" / "systemd"
MASKED = "**********"  # how pydantic prints a SecretStr
CITYKPI_SERVICES = ("migrate", "logins", "citykpi", "simulator")  # compose services running the citykpi image


# ----------------------------------------------------------------------------- helpers
def parse_dockerfile(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in parse_dockerfile():
        if word == "ENV":
            for item in shlex.split(rest):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {item!r}: use the KEY=value form"
                env[key] = value
    return env


def json_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines as docker compose and systemd read them (no shell expansion)."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=value: {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


_INTERPOLATION = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-d}, ${VAR:?err}."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        present = name in env
        value = env.get(name, "")
        if (op in (":-", ":?") and value == "") or (op in ("-", "?") and not present):
            if op.endswith("?"):
                raise AssertionError(f"${{{name}}} is required ({arg}) and .env.example does not set it")
            return arg
        if op is None and not present:
            raise AssertionError(f"${{{name}}} is used by compose.yaml but not set in .env.example")
        return value

    return _INTERPOLATION.sub(one, value)


def interpolated(obj: Any, env: dict[str, str]) -> Any:
    if isinstance(obj, str):
        return interpolate(obj, env)
    if isinstance(obj, list):
        return [interpolated(v, env) for v in obj]
    if isinstance(obj, dict):
        return {k: interpolated(v, env) for k, v in obj.items()}
    return obj


def env_mapping(environment: Any) -> dict[str, str]:
    """A compose `environment:` (mapping or list of KEY=value) as a dict of strings."""
    if environment is None:
        return {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {
        k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in environment.items()
    }


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def compose_env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


def with_secret_tokens(env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The same variables with every password (and the database URL's password) made unique, so the
    test can tell whether `config show` printed any of them."""
    out = dict(env)
    tokens: list[str] = []
    for key, value in env.items():
        if not key.startswith("CITYKPI_"):
            continue
        if key.endswith("PASSWORD"):
            out[key] = token = f"pw{uuid.uuid4().hex}"
            tokens.append(token)
        elif key in ("CITYKPI_DATABASE__URL", "CITYKPI_DATABASE__KPI_URL"):
            parts = urlsplit(value)
            assert parts.password, f"{key} has no password (placeholder expected): {value}"
            token = f"pw{uuid.uuid4().hex}"
            netloc = parts.netloc.replace(f":{parts.password}@", f":{token}@", 1)
            out[key] = urlunsplit(parts._replace(netloc=netloc))
            tokens.append(token)
    return out, tokens


def config_show(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """`citykpi config show` with exactly these variables (nothing from the caller's environment, no
    .env or .stack/urls.env: it runs in an empty directory)."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "LANG": "C.UTF-8"}
    out = subprocess.run(
        [CITYKPI, "config", "show"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **env},
        timeout=120,
    )
    assert out.returncode == 0, f"config show rejected the configuration:\n{out.stderr}"
    return {"data": json.loads(out.stdout), "text": out.stdout + out.stderr}


def _same(actual: Any, expected: str) -> bool:
    if isinstance(actual, bool):
        return actual == (expected.strip().lower() in ("1", "true", "yes", "on"))
    if isinstance(actual, int | float):
        return float(expected) == actual
    return str(actual) == expected


def assert_applied_and_masked(env: dict[str, str], tokens: list[str], shown: dict[str, Any]) -> None:
    """Each CITYKPI_ variable is a real field with the value given (secrets masked), no secret leaks."""
    data = shown["data"]
    for key, value in env.items():
        if not key.startswith("CITYKPI_") or key == "CITYKPI_CONFIG_FILE":
            continue
        node: Any = data
        for part in key.removeprefix("CITYKPI_").lower().split("__"):
            assert isinstance(node, dict) and part in node, f"{key} is not a setting: the model ignores it"
            node = node[part]
        if key.endswith("PASSWORD"):
            assert node == MASKED, f"{key} is not masked: {node!r}"
        elif key in ("CITYKPI_DATABASE__URL", "CITYKPI_DATABASE__KPI_URL"):
            assert node == mask_dsn(value) and ":***@" in node, node
        else:
            assert _same(node, value), f"{key}={value!r} but config show has {node!r}"
    for token in tokens:
        assert token not in shown["text"], "a secret appears in the output of config show"


def toml_leaves(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from toml_leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def load_k8s() -> dict[str, list[dict[str, Any]]]:
    docs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        docs[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [d for docs in load_k8s().values() for d in docs if d.get("kind") == kind]


def k8s_one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in k8s_objects(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container_env(container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom Secrets (from the template) and
    ConfigMaps, then env (literal values and the downward API), later entries winning."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            env.update(k8s_one("Secret", source["secretRef"]["name"])["stringData"])
        else:
            env.update(k8s_one("ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            field = item["valueFrom"]["fieldRef"]["fieldPath"]
            assert field == "metadata.name", f"{item['name']}: unexpected downward API field {field}"
            env[item["name"]] = pod_name
    return env


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


# ----------------------------------------------------------------------------- Dockerfile
def test_dockerfile_slim_python_non_root_healthcheck_entrypoint() -> None:
    ins = parse_dockerfile()
    words = [w for w, _ in ins]
    first = next(i for i, w in enumerate(words) if w != "ARG")
    assert words[first] == "FROM", "FROM must come first (only ARG may precede it)"
    assert re.match(r"python:3\.11[.\d]*-slim", ins[first][1]), ins[first][1]
    assert words.count("FROM") == 1

    users = [(i, rest) for i, (w, rest) in enumerate(ins) if w == "USER"]
    assert users, "no USER: the image would run as root"
    last_user = users[-1][1].split(":")[0]
    assert last_user not in ("root", "0"), last_user
    for i, (w, _) in enumerate(ins):
        if w in ("CMD", "ENTRYPOINT"):
            assert users[-1][0] < i, f"{w} before the final USER"

    assert json_form(dict(ins)["ENTRYPOINT"]) == ["citykpi"]
    assert json_form(dict(ins)["CMD"]) == ["run", "--no-progress"]

    env = dockerfile_env()
    assert env["CITYKPI_HTTP__HOST"] == "0.0.0.0", "in a container the endpoints must not be on loopback"
    port = env["CITYKPI_HTTP__PORT"]
    assert port in dict(ins)["EXPOSE"].split()
    health = dict(ins)["HEALTHCHECK"]
    assert "/healthz" in health and ("9464" in health if port == "9464" else "CITYKPI_HTTP__PORT" in health)
    probe = json_form(health.split("CMD", 1)[1].strip())
    assert probe[0] == "python", "the slim image has no curl: the probe uses Python"

    runs = [(i, rest) for i, (w, rest) in enumerate(ins) if w == "RUN"]
    assert any("pip install -c constraints.txt ." in r for _, r in runs)
    warm = [i for i, r in runs if "warm_up" in r]
    assert warm and warm[0] > users[-1][0], "the Numba cache must be warmed as the service user"
    assert env.get("NUMBA_CACHE_DIR"), "NUMBA_CACHE_DIR must point at a directory the user owns"
    assert any("-o citykpi" in r and env["NUMBA_CACHE_DIR"] in r for _, r in runs)


def test_dockerfile_copy_sources_exist_and_reach_the_build_context() -> None:
    patterns = [
        p.strip().rstrip("/")
        for p in DOCKERIGNORE.read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for required in (".venv", ".stack", ".env", "**/__pycache__", ".pytest_cache", ".mypy_cache"):
        assert required in patterns, f".dockerignore should exclude {required}"
    copied = 0
    for word, rest in parse_dockerfile():
        if word not in ("COPY", "ADD"):
            continue
        args = [a for a in shlex.split(rest) if not a.startswith("--")]
        assert not any(a.startswith("--from") for a in shlex.split(rest))
        for src in args[:-1]:
            assert (REPO / src).exists(), f"COPY {src}: no such file in the build context"
            parts = Path(src).parts
            for n in range(1, len(parts) + 1):
                prefix = "/".join(parts[:n])
                hit = [p for p in patterns if fnmatch.fnmatch(prefix, p) and not p.startswith("!")]
                assert not hit, f"COPY {src}: excluded by .dockerignore ({hit})"
            copied += 1
    assert copied >= 4


def test_dockerfile_warms_the_installed_package_not_a_source_copy() -> None:
    """Numba keys its cache by source path: the warm-up must import what the service imports."""
    workdir = "/"
    copy_dirs: set[str] = set()
    removed: set[str] = set()
    for word, rest in parse_dockerfile():
        if word == "WORKDIR":
            workdir = rest if rest.startswith("/") else f"{workdir.rstrip('/')}/{rest}"
        elif word == "COPY":
            copy_dirs.add(workdir)
        elif word == "RUN":
            removed.update(m for m in re.findall(r"rm -rf (\S+)", rest))
            if "warm_up" in rest:
                assert workdir not in copy_dirs or workdir in removed, (
                    f"the warm-up runs in {workdir}, where the sources were copied: it would compile "
                    "those instead of the installed package"
                )
                return
    raise AssertionError("no warm-up RUN")


# ----------------------------------------------------------------------------- compose
def test_compose_parses_with_the_services_and_their_order() -> None:
    compose = load_compose()
    services = compose["services"]
    expected = {"kafka", "timescaledb", "mosquitto", "grafana", "migrate", "citykpi", "simulator"}
    assert set(services) >= expected
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"], "KRaft"
    assert services["timescaledb"]["image"] == "timescale/timescaledb:2.19.3-pg17"
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2.0.21"
    assert services["grafana"]["image"].startswith("grafana/grafana")
    assert services["simulator"]["profiles"] == ["simulator"]
    assert all("profiles" not in s for name, s in services.items() if name != "simulator")
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["citykpi"]["command"] == ["run", "--no-progress"]
    for name in CITYKPI_SERVICES:
        build = services[name]["build"]
        assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE

    deps = services["citykpi"]["depends_on"]
    # migrate (as the owner), then the logins citykpi and Grafana use, then the service
    assert deps["logins"]["condition"] == "service_completed_successfully"
    assert services["logins"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["grafana"]["depends_on"]["logins"]["condition"] == "service_completed_successfully"
    assert "POSTGRES_USER" not in services["citykpi"]["environment"]["CITYKPI_DATABASE__URL"]
    for name in ("timescaledb", "kafka", "mosquitto"):
        assert deps[name]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    # every service something waits for as healthy has a health check (citykpi: the image's)
    for service in services.values():
        for dep, cond in (service.get("depends_on") or {}).items():
            if cond.get("condition") == "service_healthy":
                check = services[dep].get("healthcheck")
                if dep in CITYKPI_SERVICES:
                    assert check is None and "HEALTHCHECK" in dict(parse_dockerfile())
                else:
                    assert check and check["test"] and not check.get("disable"), dep


def test_compose_has_no_literal_secrets() -> None:
    """Every password compose passes comes from the env file, never from compose.yaml itself."""
    for name, service in load_compose()["services"].items():
        for key, value in env_mapping(service.get("environment")).items():
            if "PASSWORD" in key:
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*)?\}", value), f"{name}: {key}={value}"
            if key.endswith("DATABASE__URL"):
                assert re.search(r"://[^@]+:\$\{[^}]+\}@", value), f"{name}: {key} has a literal password"
    for key, value in compose_env_example().items():
        if "PASSWORD" in key:
            assert value == "CHANGE_ME", f".env.example: {key} must be a placeholder"


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


def test_compose_grafana_mounts_and_provisioning_variables() -> None:
    """deploy/grafana's provisioning and dashboards are mounted, and every $VARIABLE the provisioning
    files expand is set in the grafana service's environment."""
    provisioning = REPO / "deploy" / "grafana" / "provisioning"
    if not provisioning.is_dir():
        pytest.skip("deploy/grafana/provisioning is not in the tree yet")
    grafana = load_compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    for source in mounts:
        if source.startswith("../grafana/"):
            assert (COMPOSE_DIR / source).is_dir(), f"grafana: {source} does not exist"
    env = env_mapping(grafana["environment"])
    used: set[str] = set()
    for path in provisioning.rglob("*.y*ml"):
        text = "\n".join(x for x in path.read_text().splitlines() if not x.lstrip().startswith("#"))
        used.update(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text))
    missing = sorted(v for v in used if v not in env and not v.startswith("GF_"))
    assert not missing, f"the grafana service does not set {missing}"
    dashboards_dir = env.get("CITYKPI_GRAFANA_DASHBOARDS_DIR")
    if dashboards_dir:
        assert mounts.get("../grafana/dashboards") == dashboards_dir


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


@pytest.mark.parametrize("service", CITYKPI_SERVICES)
def test_compose_citykpi_environment_is_accepted_by_config_show(service: str, tmp_path: Path) -> None:
    """What the container gets (the image's ENV, then the service's environment, interpolated from
    .env.example) is accepted, applied and masked by `citykpi config show`."""
    compose = load_compose()
    raw = env_mapping(compose["services"][service]["environment"])
    env = {k: v for k, v in dockerfile_env().items() if k.startswith("CITYKPI_")}
    env.update({k: interpolate(v, compose_env_example()) for k, v in raw.items()})
    env, tokens = with_secret_tokens(env)
    shown = config_show(env, tmp_path)
    assert_applied_and_masked(env, tokens, shown)
    data = shown["data"]
    if service == "citykpi":
        assert data["http"]["host"] == "0.0.0.0"
        published = compose["services"]["citykpi"]["ports"][0].rsplit(":", 1)[1]
        assert str(data["http"]["port"]) == published
        mounts = [v.split(":")[1] for v in compose["services"]["citykpi"]["volumes"]]
        assert data["mqtt"]["tls_ca"] in mounts, "MQTT TLS CA is not mounted where the setting points"
        assert data["mqtt"]["port"] == 8883
        assert data["mqtt"]["shared_group"] is None  # Mosquitto loses shared subscriptions on restart
        assert data["mqtt"]["username"] and data["mqtt"]["password"] == MASKED


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


# ----------------------------------------------------------------------------- Kubernetes
def test_k8s_manifests_parse_and_kustomization_lists_existing_files() -> None:
    docs = load_k8s()
    assert {"namespace.yaml", "configmap.yaml", "secret.example.yaml", "statefulset.yaml"} <= set(docs)
    assert {"service.yaml", "migrate-job.yaml", "kustomization.yaml"} <= set(docs)
    for name, objs in docs.items():
        for obj in objs:
            assert obj.get("apiVersion") and obj.get("kind"), f"{name}: not a Kubernetes object"
            if obj["kind"] not in ("Namespace", "Kustomization"):
                assert obj["metadata"].get("namespace") == "citykpi", f"{name}: {obj['kind']} namespace"
    kustomization = docs["kustomization.yaml"][0]
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"], "a template with placeholders"
    for secret in k8s_objects("Secret"):
        name = secret["metadata"]["name"]
        for key, value in secret["stringData"].items():
            if "PASSWORD" in key or key.endswith("DATABASE__URL") or key.endswith(".crt"):
                assert "CHANGE_ME" in value, f"Secret {name}: {key} is not a placeholder"


def test_k8s_replicas_probes_ports_and_security() -> None:
    sts = k8s_one("StatefulSet", "citykpi")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 3
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    headless = k8s_one("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"

    (main,) = pod["containers"]
    env = container_env(main, "citykpi-0")
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    toml = tomllib.loads(k8s_one("ConfigMap", "citykpi-config")["data"]["citykpi.toml"])
    http_port = int(env.get("CITYKPI_HTTP__PORT", toml["http"]["port"]))
    assert toml["http"]["port"] == http_port and toml["http"]["host"] == "0.0.0.0"

    def probe_port(probe: dict[str, Any]) -> int:
        port = probe["httpGet"]["port"]
        return ports[port] if isinstance(port, str) else int(port)

    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for name in ("livenessProbe", "readinessProbe", "startupProbe"):
        if name in main:
            assert probe_port(main[name]) == http_port, name
    for svc in k8s_objects("Service"):
        assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
        for p in svc["spec"]["ports"]:
            target = p["targetPort"]
            assert (ports[target] if isinstance(target, str) else target) == http_port

    # one MQTT client id per pod, from the pod name; one consumer group; no shared subscription
    # (Mosquitto does not restore it after a restart: opt-in only)
    client_id = next(e for e in main["env"] if e["name"] == "CITYKPI_MQTT__CLIENT_ID")
    assert client_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert toml["kafka"]["group_id"] and "shared_group" not in toml["mqtt"]
    assert "CITYKPI_KAFKA__GROUP_ID" not in env and "CITYKPI_MQTT__SHARED_GROUP" not in env

    assert main["resources"]["requests"] and main["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in [main, *pod.get("initContainers", [])]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
    numba = env["NUMBA_CACHE_DIR"]
    assert numba == dockerfile_env()["NUMBA_CACHE_DIR"]
    assert "emptyDir" in volumes[mounts[numba]], "the Numba cache must be writable on a read-only root"
    (seed,) = pod["initContainers"]
    assert seed["image"] == main["image"] and f"{numba}/." in seed["command"]
    assert seed["volumeMounts"][0]["name"] == mounts[numba]

    job = k8s_one("Job", "citykpi-migrate")["spec"]["template"]["spec"]
    (migrate,) = job["containers"]
    assert migrate["args"] == ["migrate"] and migrate["image"] == main["image"]
    job_mounts = {m["mountPath"]: m["name"] for m in migrate["volumeMounts"]}
    assert "emptyDir" in {v["name"]: v for v in job["volumes"]}[job_mounts[numba]]
    assert migrate["securityContext"]["readOnlyRootFilesystem"] is True


def test_k8s_environment_and_configmap_are_accepted_by_config_show(tmp_path: Path) -> None:
    """Each replica's environment (Secret template, downward API, literals) plus the ConfigMap's
    citykpi.toml, as the pod sees them; and the migration Job's."""
    sts = k8s_one("StatefulSet", "citykpi")
    (main,) = sts["spec"]["template"]["spec"]["containers"]
    toml_text = k8s_one("ConfigMap", "citykpi-config")["data"]["citykpi.toml"]
    toml_file = tmp_path / "citykpi.toml"
    toml_file.write_text(toml_text)
    mount = next(m for m in main["volumeMounts"] if m.get("subPath") == "citykpi.toml")

    for pod_name in ("citykpi-0", "citykpi-2"):
        env = container_env(main, pod_name)
        assert env["CITYKPI_CONFIG_FILE"] == mount["mountPath"]
        env["CITYKPI_CONFIG_FILE"] = str(toml_file)
        env, tokens = with_secret_tokens(env)
        shown = config_show(env, tmp_path)
        assert_applied_and_masked(env, tokens, shown)
        data = shown["data"]
        assert data["mqtt"]["client_id"] == pod_name
        for path, value in toml_leaves(tomllib.loads(toml_text)):
            node: Any = data
            for part in path:
                assert part in node, f"citykpi.toml: {'.'.join(path)} is not a setting"
                node = node[part]
            assert node == value or str(node) == str(value), f"{'.'.join(path)}: {node!r} != {value!r}"
        assert data["kafka"]["security_protocol"] == "SASL_SSL"
        assert data["kafka"]["sasl_password"] == MASKED

    job = k8s_one("Job", "citykpi-migrate")["spec"]["template"]["spec"]
    env, tokens = with_secret_tokens(container_env(job["containers"][0], "citykpi-migrate-x"))
    assert "CITYKPI_DATABASE__URL" in env
    assert_applied_and_masked(env, tokens, config_show(env, tmp_path))


# ----------------------------------------------------------------------------- systemd
class _MultiDict(dict[str, Any]):
    """Repeated keys (Environment=, SystemCallFilter=, …) accumulate instead of replacing."""

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, list) and key in self:
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def read_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, dict_type=_MultiDict)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_systemd_unit_restart_drain_user_and_hardening() -> None:
    unit = read_unit(SYSTEMD / "citykpi.service")
    svc = unit["Service"]
    assert svc["ExecStart"].split()[0].endswith("/citykpi")
    assert svc["ExecStart"].split()[1:] == ["run", "--no-progress"]
    assert svc["Restart"] == "on-failure"
    assert svc["KillSignal"] == "SIGTERM"
    stop = svc["TimeoutStopSec"].removesuffix("s")
    assert stop.isdigit() and int(stop) >= 30, "TimeoutStopSec must leave time to drain"
    assert svc["User"] not in ("root", "0") and svc.get("DynamicUser", "no") == "no"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "RestrictSUIDSGID"):
        assert svc[key] == "yes", key
    assert svc["ProtectSystem"] == "strict"
    assert svc["CapabilityBoundingSet"] == ""
    assert "MemoryDenyWriteExecute" not in svc, "Numba's JIT needs writable+executable memory"
    env = dict(line.split("=", 1) for line in svc["Environment"].split("\n"))
    numba = env["NUMBA_CACHE_DIR"]
    writable = [p.lstrip("-") for p in svc["ReadWritePaths"].split()]
    assert numba in writable or any(numba.startswith(p + "/") for p in writable)
    assert numba.startswith("/var/cache/") and "citykpi" in svc["CacheDirectory"].split()
    assert svc["EnvironmentFile"].lstrip("-").startswith("/etc/citykpi/")
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"]

    migrate = read_unit(SYSTEMD / "citykpi-migrate.service")["Service"]
    assert migrate["Type"] == "oneshot" and migrate["ExecStart"].split()[1:] == ["migrate"]
    assert migrate["User"] == svc["User"]


def test_systemd_environment_is_accepted_by_config_show(tmp_path: Path) -> None:
    """Environment= of the unit (with %H expanded) overridden by citykpi.env.example, as systemd does."""
    svc = read_unit(SYSTEMD / "citykpi.service")["Service"]
    env = dict(line.split("=", 1) for line in svc["Environment"].split("\n"))
    env = {k: v.replace("%H", "host1") for k, v in env.items()}
    env.update(read_env_file(SYSTEMD / "citykpi.env.example"))
    env, tokens = with_secret_tokens(env)
    shown = config_show(env, tmp_path)
    assert_applied_and_masked(env, tokens, shown)
    assert shown["data"]["mqtt"]["client_id"] == "citykpi-host1"
    assert shown["data"]["kafka"]["sasl_password"] == MASKED


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


def test_compose_services_are_hardened_and_pinned() -> None:
    """Every container: no new privileges, every capability dropped (some added back by name), a
    process limit; long-running ones a memory and CPU limit; images pinned to a version."""
    services = load_compose()["services"]
    for name, service in services.items():
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("cap_drop") == ["ALL"], name
        assert service.get("pids_limit"), name
        added = set(service.get("cap_add", []))
        assert added <= {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"}, name
        image = service["image"]
        if name not in CITYKPI_SERVICES:  # citykpi's own image is built here, tagged by CITYKPI_IMAGE
            assert re.search(r":[^:]*\d", image) and "latest" not in image, f"{name}: {image} is not pinned"
        if service.get("restart") == "unless-stopped" and "profiles" not in service:
            limits = service["deploy"]["resources"]["limits"]
            assert limits["memory"] and limits["cpus"], name
    for name in ("citykpi", "migrate", "logins", "simulator", "grafana", "mosquitto"):
        assert services[name].get("read_only") is True, name


def test_k8s_network_policy_admits_only_prometheus_to_the_metrics_port() -> None:
    docs = load_k8s()
    assert "networkpolicy.yaml" in docs["kustomization.yaml"][0]["resources"]
    (policy,) = docs["networkpolicy.yaml"]
    pod_labels = docs["statefulset.yaml"][0]["spec"]["template"]["metadata"]["labels"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9464}]
    assert rule["from"] and all(peer.get("podSelector") for peer in rule["from"])


def test_systemd_units_have_memory_and_task_limits() -> None:
    unit = (REPO / "deploy" / "systemd" / "citykpi.service").read_text()
    for setting in ("MemoryMax=", "MemoryHigh=", "CPUQuota=", "TasksMax="):
        assert f"\n{setting}" in unit, setting
    assert "\nMemoryMax=" in (REPO / "deploy" / "systemd" / "citykpi-migrate.service").read_text()


def test_service_configs_use_separate_ingest_and_kpi_logins() -> None:
    """The service's URL is never the owner's, and the KPI refresh has a login of its own."""
    (k8s,) = [
        d["stringData"] for d in load_k8s()["secret.example.yaml"] if d["metadata"]["name"] == "citykpi-env"
    ]
    systemd = read_env_file(REPO / "deploy" / "systemd" / "citykpi.env.example")
    compose = env_mapping(load_compose()["services"]["citykpi"]["environment"])
    for env in (k8s, systemd, compose):
        url, kpi_url = env["CITYKPI_DATABASE__URL"], env["CITYKPI_DATABASE__KPI_URL"]
        assert url.split("://")[1].split(":")[0] != kpi_url.split("://")[1].split(":")[0]
        assert "owner" not in url and "POSTGRES_USER" not in url
