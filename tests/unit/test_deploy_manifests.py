"""The deployment files, checked without a server, a Docker engine or a Kubernetes cluster.

Dockerfile, deploy/compose, deploy/k8s and deploy/systemd: they parse, and every CITYKPI_… variable
they pass reaches the real `citykpi config show` (a subprocess) which must accept it, apply it (the
settings model ignores unknown keys, so a misspelt variable would otherwise be lost silently) and
print no secret. What needs openssl, Mosquitto, docker or systemd-analyze is in
tests/integration/test_deploy_files.py.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.deploy_files import (
    CITYKPI_SERVICES,
    COMPOSE_DIR,
    DOCKERFILE,
    DOCKERIGNORE,
    K8S,
    MASKED,
    SYSTEMD,
    assert_applied_and_masked,
    compose_env_example,
    config_show,
    container_env,
    dockerfile_env,
    env_mapping,
    interpolate,
    json_form,
    k8s_objects,
    k8s_one,
    load_compose,
    load_k8s,
    parse_dockerfile,
    read_env_file,
    read_unit,
    toml_leaves,
    with_secret_tokens,
)


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
    for name in ("timescaledb", "mosquitto"):
        assert deps[name]["condition"] == "service_healthy"
    # Kafka's users, topics and ACLs exist before citykpi connects
    assert deps["kafka-init"]["condition"] == "service_completed_successfully"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
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


def test_compose_kafka_authenticates_clients_with_scram_and_authorizes_by_acl() -> None:
    """Kafka on the compose network takes clients only over SASL/SCRAM-SHA-512; its unauthenticated
    listeners (the anonymous super user's) are bound to the container's loopback, reached only by
    kafka-init in the same network namespace; StandardAuthorizer with no ACL meaning no access;
    citykpi and the simulator log in as their own users with passwords from .env."""
    services = load_compose()["services"]
    kafka = services["kafka"]["environment"]
    protocols = dict(p.split(":") for p in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    for listener in kafka["KAFKA_LISTENERS"].split(","):
        name, address = listener.split("://")
        if protocols[name] == "PLAINTEXT":
            assert address.startswith("127.0.0.1:"), f"{name} is unauthenticated: loopback only"
        else:
            assert protocols[name] == "SASL_PLAINTEXT", name
    assert all(
        a.startswith(("SASL_PLAINTEXT://kafka:", "BROKER://127.0.0.1:"))
        for a in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].endswith("@127.0.0.1:9093")
    assert kafka["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    jaas = kafka["KAFKA_LISTENER_NAME_SASL__PLAINTEXT_SCRAM___SHA___512_SASL_JAAS_CONFIG"]
    assert jaas.startswith("org.apache.kafka.common.security.scram.ScramLoginModule required")
    assert kafka["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert kafka["KAFKA_SUPER_USERS"] == "User:ANONYMOUS"
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "127.0.0.1:9091" in services["kafka"]["healthcheck"]["test"][1]
    init = services["kafka-init"]
    assert init["network_mode"] == "service:kafka"
    assert set(init["secrets"]) == {"kafka_citykpi_password", "kafka_simulator_password"}
    secrets = load_compose()["secrets"]
    assert secrets["kafka_citykpi_password"] == {"environment": "CITYKPI_KAFKA_PASSWORD"}
    assert secrets["kafka_simulator_password"] == {"environment": "SIMULATOR_KAFKA_PASSWORD"}
    for name, user, secret in (("citykpi", "citykpi", "CITYKPI"), ("simulator", "simulator", "SIMULATOR")):
        env = services[name]["environment"]
        assert env["CITYKPI_KAFKA__SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", name
        assert env["CITYKPI_KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512", name
        assert env["CITYKPI_KAFKA__SASL_USERNAME"] == user, name
        assert env["CITYKPI_KAFKA__SASL_PASSWORD"].startswith(f"${{{secret}_KAFKA_PASSWORD:?"), name


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
    for name in ("citykpi", "migrate", "logins", "simulator", "grafana", "mosquitto", "kafka-init"):
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
