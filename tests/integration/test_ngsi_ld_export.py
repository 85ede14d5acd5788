"""`citykpi kpi export --format ngsi-ld`: KeyPerformanceIndicator entities checked against the FIWARE
Smart Data Model's JSON Schema (tests/data/samples/kpi-ngsi-ld, refs resolved locally), and their
upsert into a context broker played by a local HTTP server that records what it receives."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from kpi_rollups.ngsi_ld import NGSI_LD_CONTEXT, UPSERT_PATH
from kpi_rollups.refresh import refresh_kpis
from tests.conftest import REPO
from tests.integration.test_cli import run
from tests.integration.test_kpi_formulas import DAY, NOW, REGISTRY_A, city_a_batch, import_text, write

pytestmark = pytest.mark.integration

SAMPLES = REPO / "tests" / "data" / "samples" / "kpi-ngsi-ld"


def validator() -> jsonschema.protocols.Validator:
    """The model's schema, its two remote `$ref`s served from common-schema.json beside it."""
    schema = json.loads((SAMPLES / "schema.json").read_text())
    common = json.loads((SAMPLES / "common-schema.json").read_text())
    registry: Registry = Registry().with_resources(
        [(common["$id"], Resource.from_contents(common)), (schema["$id"], Resource.from_contents(schema))]
    )
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)


def key_values_of(entity: dict[str, Any]) -> dict[str, Any]:
    """A normalized entity back in key-values form (Property values, DateTime @values)."""
    out = {}
    for key, attr in entity.items():
        if key in ("id", "type", "@context"):
            out[key] = attr
            continue
        assert attr["type"] == "Property", (key, attr)
        value = attr["value"]
        out[key] = value["@value"] if isinstance(value, dict) and value.get("@type") == "DateTime" else value
    return out


async def city_a_day(dsn: str, tmp_path: Path) -> dict[str, str]:
    await import_text(dsn, tmp_path, REGISTRY_A)
    await write(dsn, city_a_batch())
    await refresh_kpis(dsn, "a", "day", DAY, now=NOW)
    return {"CITYKPI_DATABASE__URL": dsn, "CITYKPI_NGSI_LD__RETRY_MAX_WAIT_S": "0.2"}


def export(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    out = run(
        "kpi", "export", "--city", "a", "--period", DAY.isoformat(), "--format", "ngsi-ld", *args, env=env
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_validator_accepts_the_models_example_and_rejects_broken_ones() -> None:
    v = validator()
    example = json.loads((SAMPLES / "example.jsonld").read_text())
    v.validate(example)
    assert key_values_of(json.loads((SAMPLES / "example-normalized.jsonld").read_text()))["kpiValue"] == 20
    with pytest.raises(jsonschema.ValidationError):
        v.validate({**example, "currentStanding": "excellent"})
    with pytest.raises(jsonschema.ValidationError):  # Location-Commons, through the resolved $ref
        v.validate({**example, "address": "Ciudad"})
    with pytest.raises(jsonschema.ValidationError):  # GSMA-Commons, likewise
        v.validate({**example, "name": 5})
    with pytest.raises(jsonschema.ValidationError):
        v.validate({**example, "calculationPeriod": {"from": "June"}})


async def test_key_values_entities_follow_the_smart_data_model(tsdb: str, tmp_path: Path) -> None:
    entities = export(await city_a_day(tsdb, tmp_path), "--key-values")
    v = validator()
    for e in entities:
        v.validate(e)
        assert e["@context"] == NGSI_LD_CONTEXT
    assert len({e["id"] for e in entities}) == len(entities)
    by_id = {e["id"]: e for e in entities}
    # PM2.5 on 2025-06-10: stations at 10 and 20 µg/m³ -> 15, target 5: score 33.3 % -> band 33-66 %: "fair"
    pm25 = by_id["urn:ngsi-ld:KeyPerformanceIndicator:a:air_pollution.pm25:2025-06-10"]
    assert pm25["kpiValue"] == pytest.approx(15.0)
    assert pm25["calculationFrequency"] == "daily"
    assert pm25["calculationPeriod"] == {"from": "2025-06-10", "to": "2025-06-10"}
    assert pm25["businessTarget"] == "5 µg/m³" and pm25["currentStanding"] == "fair"
    assert pm25["organization"] == "City A" and pm25["process"] == "U4SSC EN: EN: AQ: 1C Air pollution"
    lden = by_id["urn:ngsi-ld:KeyPerformanceIndicator:a:noise_exposure.lden@centre:2025-06-10"]
    assert lden["area"] == "centre"


async def test_normalized_entities_are_properties_of_the_same_values(tsdb: str, tmp_path: Path) -> None:
    env = await city_a_day(tsdb, tmp_path)
    out_file = tmp_path / "kpis.jsonld"
    out = run("kpi", "export", "--city", "a", "--period", DAY.isoformat(), "--out", str(out_file), env=env)
    assert out.returncode == 0 and out.stdout == "", out.stderr  # normalized is the default form
    normalized = json.loads(out_file.read_text())
    key_values = export(env, "--key-values")
    v = validator()
    assert [key_values_of(e) for e in normalized] == key_values
    for e in normalized:
        v.validate(key_values_of(e))
        assert e["@context"] == json.loads((SAMPLES / "example-normalized.jsonld").read_text())["@context"]
        assert e["updatedAt"]["value"]["@type"] == "DateTime"
    pm25 = next(e for e in normalized if e["id"].endswith(":air_pollution.pm25:2025-06-10"))
    assert pm25["kpiValue"] == {"type": "Property", "value": pytest.approx(15.0), "unitCode": "GQ"}


class Broker:
    """A context broker stand-in: answers with the scripted statuses in turn, records each request."""

    def __init__(self, statuses: list[tuple[int, dict[str, Any] | None]]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        broker = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                broker.requests.append((self.path, dict(self.headers.items()), json.loads(body)))
                status, answer = broker.statuses.pop(0) if broker.statuses else (204, None)
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                if data:
                    self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Broker:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def broker_503_then_201() -> Iterator[Broker]:
    with Broker([(503, {"title": "busy"}), (201, None)]) as b:
        yield b


async def test_upsert_posts_json_ld_and_retries_a_busy_broker(
    tsdb: str, tmp_path: Path, broker_503_then_201: Broker
) -> None:
    env = await city_a_day(tsdb, tmp_path) | {"CITYKPI_NGSI_LD__TENANT": "city-a"}
    out = run(
        "kpi",
        "export",
        "--city",
        "a",
        "--period",
        DAY.isoformat(),
        "--broker",
        broker_503_then_201.url,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    entities = json.loads(out.stdout)
    requests = broker_503_then_201.requests
    assert len(requests) == 2  # the 503 was retried
    for path, headers, body in requests:
        assert path == UPSERT_PATH
        assert headers["Content-Type"] == "application/ld+json"
        assert headers["NGSILD-Tenant"] == "city-a"
        assert "Link" not in headers  # the context travels in the body
        assert body == entities and all(e["@context"] == NGSI_LD_CONTEXT for e in body)
    assert f"upserted {len(entities)} entities" in out.stderr


@pytest.mark.parametrize(
    ("status", "answer", "message"),
    [
        (400, {"title": "bad request"}, "HTTP 400"),
        (207, {"success": [], "errors": [{"entityId": "x", "error": {"status": 400}}]}, "refused 1 of"),
    ],
)
async def test_a_refusing_broker_fails_the_command_without_retrying(
    tsdb: str, tmp_path: Path, status: int, answer: dict[str, Any], message: str
) -> None:
    env = await city_a_day(tsdb, tmp_path)
    with Broker([(status, answer)]) as broker:
        out = run(
            "kpi", "export", "--city", "a", "--period", DAY.isoformat(), "--broker", broker.url, env=env
        )
    assert out.returncode == 1
    assert message in out.stderr
    assert len(broker.requests) == 1


async def test_export_of_an_unknown_city_or_an_empty_period_says_so(tsdb: str, tmp_path: Path) -> None:
    env = await city_a_day(tsdb, tmp_path)
    out = run("kpi", "export", "--city", "nowhere", "--period", "2025", env=env)
    assert out.returncode == 2 and "unknown city" in out.stderr
    out = run("kpi", "export", "--city", "a", "--period", "2024", env=env)
    assert out.returncode == 1 and "no KPI values stored" in out.stderr
    out = run("kpi", "export", "--city", "a", "--period", "2025", "--format", "csv", env=env)
    assert out.returncode == 2


async def test_a_broker_url_password_is_never_printed(tsdb: str, tmp_path: Path) -> None:
    """A broker URL may carry credentials (http://user:password@host): `config show`, the success
    line and the failure line after a 500 (httpx's message quotes the URL) show none of them."""
    env = await city_a_day(tsdb, tmp_path) | {"CITYKPI_NGSI_LD__ATTEMPTS": "1"}
    with Broker([(201, None), (500, {"title": "down"})]) as broker:
        url = broker.url.replace("http://", "http://ngsi-user:brk-s3cret@")
        shown = run("config", "show", env=env | {"CITYKPI_NGSI_LD__BROKER_URL": url})
        ok = run("kpi", "export", "--city", "a", "--period", DAY.isoformat(), "--broker", url, env=env)
        failed = run("kpi", "export", "--city", "a", "--period", DAY.isoformat(), "--broker", url, env=env)
    assert shown.returncode == 0 and "ngsi-user:***@" in shown.stdout, shown.stdout
    assert ok.returncode == 0 and "ngsi-user:***@" in ok.stderr, ok.stderr
    assert failed.returncode == 1 and "HTTP 500" in failed.stderr, failed.stderr
    for out in (shown, ok, failed):
        assert "brk-s3cret" not in out.stdout + out.stderr
