"""Reading the deployment files (Dockerfile, compose, k8s, systemd) as their tools do, and running
`citykpi config show` on the environment they pass: shared by the unit and integration tests."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from core.config import mask_dsn
from tests.conftest import REPO

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
