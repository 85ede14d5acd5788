"""KPI values as NGSI-LD `KeyPerformanceIndicator` entities (FIWARE Smart Data Models), and their
upsert into a context broker.

One entity per stored value (KPI, component, area, period). Key-values form is the model's JSON
Schema shape; the normalized form wraps each attribute as an NGSI-LD Property (date-times as
`{"@type": "DateTime", "@value": ...}`, the value with its UN/CEFACT `unitCode` when one exists).
Both carry the model's `@context` (the NGSI-LD core context and the model's own), as the model's
published examples do. Values not computable (NULL) are left out: an entity without `kpiValue`
would say nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import asyncpg
import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from core.config import NgsiLdSettings
from kpi_rollups.catalog import Catalog
from kpi_rollups.values import band_index

log = logging.getLogger(__name__)

NGSI_LD_CONTEXT = [
    "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld",
    "https://raw.githubusercontent.com/smart-data-models/dataModel.KeyPerformanceIndicator/master/context.jsonld",
]
UPSERT_PATH = "/ngsi-ld/v1/entityOperations/upsert"
FREQUENCY = {"year": "yearly", "month": "monthly", "day": "daily"}
# the model's currentStanding from the score band (bands of % of target, see values.py)
STANDING = {1: "bad", 2: "fair", 3: "good", 4: "veryGood"}
UNIT_CODES = {"µg/m³": "GQ", "%": "P1", "dB": "2N"}  # UN/CEFACT common codes
_DATE_TIMES = ("updatedAt",)


def _period_end(kind: str, start: date) -> date:
    if kind == "day":
        return start
    if kind == "month":
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    return date(start.year, 12, 31)


def _label(kind: str, start: date) -> str:
    return f"{start:%Y}" if kind == "year" else f"{start:%Y-%m}" if kind == "month" else start.isoformat()


def entity_id(city_id: str, slug: str, component: str, area_id: str, kind: str, start: date) -> str:
    """urn:ngsi-ld:KeyPerformanceIndicator:<city>:<kpi>[.<component>][@<area>]:<period>; every part
    is an Identifier (letters, digits, _ . : @ -), so the id matches the model's id pattern."""
    kpi = slug + (f".{component}" if component else "") + (f"@{area_id}" if area_id else "")
    return f"urn:ngsi-ld:KeyPerformanceIndicator:{city_id}:{kpi}:{_label(kind, start)}"


def key_values_entity(row: dict[str, Any], city_name: str, catalog: Catalog) -> dict[str, Any]:
    """The key-values entity of one kpi_values row (value not NULL)."""
    kpi = catalog.get(row["kpi_code"])
    comp = kpi.component(row["component"]) if kpi.has_component(row["component"]) else None
    label = comp.label if comp else row["component"]
    name = kpi.name if not row["component"] or label == kpi.name else f"{kpi.name}: {label}"
    kind, start = row["period_kind"], row["period_start"]
    entity: dict[str, Any] = {
        "id": entity_id(row["city_id"], kpi.slug, row["component"], row["area_id"], kind, start),
        "type": "KeyPerformanceIndicator",
        "name": name,
        "description": f"U4SSC {kpi.display_code}, {row['unit']}: {kpi.definition}",
        "category": ["quantitative"],
        "organization": city_name,
        "process": f"U4SSC {kpi.display_code} {kpi.name}",
        "calculatedBy": "citykpi",
        "calculationMethod": "automatic",
        "calculationFrequency": FREQUENCY[kind],
        "calculationPeriod": {"from": start.isoformat(), "to": _period_end(kind, start).isoformat()},
        "kpiValue": float(row["value"]),
        "updatedAt": row["computed_at"].isoformat(),
        "address": {"addressLocality": city_name},
        "dataProvider": "citykpi",
    }
    if row["target"] is not None:
        entity["businessTarget"] = f"{row['target']:g} {row['unit']}".strip()
    standing = STANDING.get(band_index(row["band"]))
    if standing:
        entity["currentStanding"] = standing
    if row["area_id"]:
        entity["area"] = row["area_id"]
    entity["@context"] = NGSI_LD_CONTEXT
    return entity


def normalized(entity: dict[str, Any], unit: str) -> dict[str, Any]:
    """The same entity with every attribute an NGSI-LD Property."""
    out: dict[str, Any] = {}
    for key, value in entity.items():
        if key in ("id", "type", "@context"):
            out[key] = value
        elif key in _DATE_TIMES:
            out[key] = {"type": "Property", "value": {"@type": "DateTime", "@value": value}}
        else:
            out[key] = {"type": "Property", "value": value}
    if unit in UNIT_CODES:
        out["kpiValue"]["unitCode"] = UNIT_CODES[unit]
    return out


async def kpi_entities(
    conn: asyncpg.Connection,
    city_id: str,
    kind: str,
    start: date,
    catalog: Catalog,
    *,
    key_values: bool = False,
) -> list[dict[str, Any]]:
    """The city's stored KPI values of one period as entities, in catalog order."""
    city_name = await conn.fetchval("SELECT name FROM cities WHERE city_id = $1", city_id)
    if city_name is None:
        raise LookupError(f"unknown city {city_id!r}")
    rows = await conn.fetch(
        """SELECT * FROM kpi_values WHERE city_id = $1 AND period_kind = $2 AND period_start = $3
           AND value IS NOT NULL""",
        city_id,
        kind,
        start,
    )
    order = {code: i for i, code in enumerate(catalog.codes)}
    entities = []
    for r in sorted(rows, key=lambda r: (order.get(r["kpi_code"], 99), r["component"], r["area_id"])):
        if r["kpi_code"] not in order:
            continue  # a KPI no longer in the catalog
        kv = key_values_entity(dict(r), city_name, catalog)
        entities.append(kv if key_values else normalized(kv, r["unit"]))
    return entities


class BrokerError(RuntimeError):
    """The broker refused entities (4xx other than 429, or a 207 listing errors)."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and (
        exc.response.status_code == 429 or exc.response.status_code >= 500
    )


async def upsert(
    entities: Sequence[dict[str, Any]], settings: NgsiLdSettings, broker_url: str | None = None
) -> int:
    """POST the entities (JSON-LD, `@context` in each) to the broker's batch upsert, `batch_size` at
    a time; connection errors, 429 and 5xx are retried with jittered exponential backoff. Returns
    the number of entities the broker accepted; raises BrokerError when it refused some."""
    url = (broker_url or settings.broker_url or "").rstrip("/")
    if not url:
        raise ValueError("no broker URL: pass --broker or set ngsi_ld.broker_url")
    headers = {"Content-Type": "application/ld+json", "Accept": "application/json"}
    if settings.tenant:
        headers["NGSILD-Tenant"] = settings.tenant
    done = 0
    async with httpx.AsyncClient(timeout=settings.timeout_s, headers=headers) as client:
        for i in range(0, len(entities), settings.batch_size):
            batch = list(entities[i : i + settings.batch_size])
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_retryable),
                stop=stop_after_attempt(settings.attempts),
                wait=wait_random_exponential(multiplier=0.5, max=settings.retry_max_wait_s),
                reraise=True,
            ):
                with attempt:
                    response = await client.post(url + UPSERT_PATH, content=json.dumps(batch))
                    if response.status_code == 429 or response.status_code >= 500:
                        log.warning("NGSI-LD upsert: HTTP %s, retrying", response.status_code)
                        response.raise_for_status()
            if response.status_code == 207:
                errors = response.json().get("errors", [])
                raise BrokerError(f"broker refused {len(errors)} of {len(batch)} entities: {errors}")
            if response.status_code >= 400:
                raise BrokerError(f"broker answered HTTP {response.status_code}: {response.text[:500]}")
            done += len(batch)
    return done
