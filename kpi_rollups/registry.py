"""Reference data for the KPIs: import (`citykpi registry import FILE`) and as-of snapshots.

A registry file is TOML or CSV.

TOML (see demo_registry.toml): optional top-level `city_id` and `valid_from` defaults, then arrays
of tables `[[cities]]`, `[[areas]]`, `[[facts]]`, `[[targets]]`, `[[devices]]`. A device entry may
list several ids in `device_ids` that share its attributes.

CSV: one section per file, recognised by its header: `device_id` -> devices, `kpi_code` ->
targets, `area_id` + `population` -> areas, `key` + `value` -> facts, `timezone` -> cities. Empty
cells are unset; a devices CSV may carry a `metadata` column of JSON.

Every row is validated with pydantic; all errors are collected and reported together, each naming
the section, the row (1-based; CSV rows count the header as line 1) and the field. The import runs
in one transaction: a file with any error changes nothing. Re-importing a file is a no-op.
"""

from __future__ import annotations

import csv
import io
import json
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kpi_rollups.catalog import load_catalog, normalize_code
from schemas.identifiers import Identifier, TimeZoneName
from schemas.transactions import import_transaction

SECTIONS = ("cities", "areas", "facts", "targets", "devices")


class RegistryImportError(ValueError):
    """The file is invalid; `errors` lists each problem with its section, row and field."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: {len(errors)} error(s):\n" + "\n".join(f"  {e}" for e in errors))


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class CityRow(_Row):
    city_id: Identifier
    name: str
    timezone: TimeZoneName = "UTC"
    country: str | None = None


class AreaRow(_Row):
    city_id: Identifier
    area_id: Identifier
    name: str = ""
    population: float | None = Field(None, ge=0)
    area_km2: float | None = Field(None, gt=0)
    valid_from: date


class FactRow(_Row):
    city_id: Identifier
    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    value: float
    unit: str = ""
    source: str = ""
    valid_from: date


class TargetRow(_Row):
    city_id: Identifier
    kpi_code: str
    component: str = ""
    target: float
    band_edges: list[float] | None = None
    valid_from: date

    @model_validator(mode="after")
    def _known_kpi(self) -> TargetRow:
        catalog = load_catalog()
        try:
            kpi = catalog.get(self.kpi_code)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
        self.kpi_code = kpi.code
        if not kpi.has_component(self.component):
            raise ValueError(
                f"KPI {kpi.code} has no component {self.component!r}; "
                f"known: {[c.name for c in kpi.components]}"
            )
        if self.band_edges is not None and (
            len(self.band_edges) != 3 or not 0 < self.band_edges[0] < self.band_edges[1] < self.band_edges[2]
        ):
            raise ValueError("band_edges must be three increasing % values > 0, e.g. [33, 66, 95]")
        return self


# DeviceRow fields stored in devices.metadata: coverage KPIs, travel time, meters (processors/meters.py)
METADATA_FIELDS = (
    "street_km",
    "drainage_km",
    "segment_id",
    "free_flow_kmh",
    "role",
    "intersection_id",
    "rollover_at",
    "max_rate_per_h",
    "meter_dn",
    "max_current_a",
    "phases",
    "noise_tolerance",
)


class DeviceRow(_Row):
    """A device's registry attributes; the KPI attributes go into devices.metadata."""

    city_id: Identifier
    device_id: Identifier
    kind: str | None = None
    area_id: Identifier | None = None
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    unit: str | None = None
    installed_on: date | None = None
    expected_interval_s: float | None = Field(None, gt=0)
    street_km: float | None = Field(None, ge=0, description="km of major street the sensor covers")
    drainage_km: float | None = Field(None, ge=0, description="km of storm-water network monitored")
    segment_id: str | None = None
    free_flow_kmh: float | None = Field(None, gt=0)
    role: str | None = None
    intersection_id: str | None = None
    rollover_at: float | None = Field(None, gt=0, description="meter register size (99,999 wraps at 100000)")
    max_rate_per_h: float | None = Field(None, gt=0, description="most a meter can count per hour")
    meter_dn: int | None = Field(None, gt=0, description="water meter nominal diameter (mm)")
    max_current_a: float | None = Field(None, gt=0, description="electricity meter maximum current")
    phases: int | None = Field(None, ge=1, le=3)
    noise_tolerance: float | None = Field(None, ge=0, description="register jitter, metric's unit")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata", mode="before")
    @classmethod
    def _json(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return json.loads(v) if v.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(f"metadata must be a JSON object: {e}") from None
        return v

    def metadata_json(self) -> str:
        meta = dict(self.metadata)
        for key in METADATA_FIELDS:
            value = getattr(self, key)
            if value is not None:
                meta[key] = value
        return json.dumps(meta)


_MODELS: dict[str, type[_Row]] = {
    "cities": CityRow,
    "areas": AreaRow,
    "facts": FactRow,
    "targets": TargetRow,
    "devices": DeviceRow,
}
_KEY_FIELDS = {
    "cities": "city_id",
    "areas": "area_id",
    "facts": "key",
    "targets": "kpi_code",
    "devices": "device_id",
}


@dataclass
class RegistryData:
    cities: list[CityRow] = field(default_factory=list)
    areas: list[AreaRow] = field(default_factory=list)
    facts: list[FactRow] = field(default_factory=list)
    targets: list[TargetRow] = field(default_factory=list)
    devices: list[DeviceRow] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {s: len(getattr(self, s)) for s in SECTIONS}


def _describe(section: str, index: int, raw: dict[str, Any], line: int | None) -> str:
    where = f"line {line}" if line is not None else f"#{index + 1}"
    key = _KEY_FIELDS[section]
    ident = raw.get(key) or raw.get("device_ids")
    return f"{section} {where}" + (f" ({key}={ident!r})" if ident else "")


def _validate_rows(
    section: str,
    rows: Iterable[tuple[int | None, dict[str, Any]]],
    defaults: dict[str, Any],
    out: RegistryData,
    errors: list[str],
) -> None:
    model = _MODELS[section]
    for index, (line, raw) in enumerate(rows):
        if not isinstance(raw, dict):
            errors.append(f"{section} #{index + 1}: expected a table of fields, got {raw!r}")
            continue
        data = {k: v for k, v in defaults.items() if k in model.model_fields} | raw
        ids: list[Any] = [None]
        if section == "devices" and "device_ids" in data:
            ids = data.pop("device_ids")
            if not isinstance(ids, list) or not ids:
                errors.append(f"{_describe(section, index, raw, line)}: device_ids: must be a non-empty list")
                continue
            if "device_id" in data:
                errors.append(
                    f"{_describe(section, index, raw, line)}: give device_id or device_ids, not both"
                )
                continue
        for one in ids:
            if one is not None:
                data["device_id"] = one
            try:
                getattr(out, section).append(model.model_validate(data))
            except ValidationError as e:
                for err in e.errors():
                    loc = ".".join(str(p) for p in err["loc"]) or "(row)"
                    got = f" (got {err['input']!r})" if loc != "(row)" and "input" in err else ""
                    msg = err["msg"].removeprefix("Value error, ")
                    errors.append(f"{_describe(section, index, data, line)}: {loc}: {msg}{got}")


def parse_toml(text: str, source: str = "registry.toml", default_city: str | None = None) -> RegistryData:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RegistryImportError(source, [f"not valid TOML: {e}"]) from None
    errors: list[str] = []
    unknown = sorted(set(doc) - set(SECTIONS) - {"city_id", "valid_from"})
    if unknown:
        errors.append(f"unknown top-level keys {unknown}; expected city_id, valid_from and {list(SECTIONS)}")
    defaults: dict[str, Any] = {}
    if doc.get("city_id", default_city):
        defaults["city_id"] = doc.get("city_id", default_city)
    if "valid_from" in doc:
        defaults["valid_from"] = doc["valid_from"]
    out = RegistryData()
    for section in SECTIONS:
        rows = doc.get(section, [])
        if not isinstance(rows, list):
            errors.append(f"{section}: must be an array of tables ([[{section}]])")
            continue
        section_defaults = dict(defaults)
        if section == "cities":
            section_defaults.pop("city_id", None)
        _validate_rows(section, ((None, r) for r in rows), section_defaults, out, errors)
    if errors:
        raise RegistryImportError(source, errors)
    return out


def _csv_section(header: list[str]) -> str | None:
    cols = set(header)
    if "device_id" in cols:
        return "devices"
    if "kpi_code" in cols:
        return "targets"
    if {"area_id", "population"} <= cols:
        return "areas"
    if {"key", "value"} <= cols:
        return "facts"
    if "timezone" in cols:
        return "cities"
    return None


def parse_csv(text: str, source: str = "registry.csv", default_city: str | None = None) -> RegistryData:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    section = _csv_section(header)
    if section is None:
        raise RegistryImportError(
            source,
            [
                f"cannot tell the section from the header {header}: a devices file has device_id, targets "
                "kpi_code, areas area_id and population, facts key and value, cities timezone"
            ],
        )
    reader.fieldnames = header
    rows: list[tuple[int | None, dict[str, Any]]] = []
    for row in reader:
        clean = {k: v.strip() for k, v in row.items() if k is not None and v is not None and v.strip() != ""}
        if None in row:
            clean["(extra cells)"] = row[None]
        if "band_edges" in clean:
            clean["band_edges"] = [x for x in clean["band_edges"].replace(";", " ").split() if x]
        rows.append((reader.line_num, clean))
    defaults = {"city_id": default_city} if default_city and section != "cities" else {}
    out, errors = RegistryData(), list[str]()
    _validate_rows(section, rows, defaults, out, errors)
    if errors:
        raise RegistryImportError(source, errors)
    return out


def parse_registry(path: Path, default_city: str | None = None) -> RegistryData:
    """Read and validate a registry file (TOML or CSV, by extension)."""
    if not path.is_file():
        raise RegistryImportError(str(path), ["file not found"])
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return parse_toml(text, str(path), default_city)
    if suffix == ".csv":
        return parse_csv(text, str(path), default_city)
    raise RegistryImportError(str(path), [f"unknown file type {suffix!r}: use .toml or .csv"])


_UPSERT_CITY = """
INSERT INTO cities (city_id, name, timezone, country) VALUES ($1, $2, $3, $4)
ON CONFLICT (city_id) DO UPDATE SET name = EXCLUDED.name, timezone = EXCLUDED.timezone,
    country = COALESCE(EXCLUDED.country, cities.country)
"""
_UPSERT_AREA = """
INSERT INTO areas (city_id, area_id, name, population, area_km2, valid_from) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (city_id, area_id, valid_from) DO UPDATE SET name = EXCLUDED.name,
    population = EXCLUDED.population, area_km2 = EXCLUDED.area_km2
"""
_UPSERT_FACT = """
INSERT INTO city_facts (city_id, key, value, unit, source, valid_from) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (city_id, key, valid_from) DO UPDATE SET value = EXCLUDED.value, unit = EXCLUDED.unit,
    source = EXCLUDED.source
"""
_UPSERT_TARGET = """
INSERT INTO kpi_targets (city_id, kpi_code, component, target, band_edges, valid_from)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (city_id, kpi_code, component, valid_from) DO UPDATE SET target = EXCLUDED.target,
    band_edges = EXCLUDED.band_edges
"""
_UPSERT_DEVICE = """
INSERT INTO devices (city_id, device_id, kind, area_id, lat, lon, unit, installed_on, expected_interval_s,
                     metadata, registered_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, 'registry')
ON CONFLICT (city_id, device_id) DO UPDATE SET
    kind = COALESCE(EXCLUDED.kind, devices.kind),
    area_id = COALESCE(EXCLUDED.area_id, devices.area_id),
    lat = COALESCE(EXCLUDED.lat, devices.lat),
    lon = COALESCE(EXCLUDED.lon, devices.lon),
    unit = COALESCE(EXCLUDED.unit, devices.unit),
    installed_on = COALESCE(EXCLUDED.installed_on, devices.installed_on),
    expected_interval_s = COALESCE(EXCLUDED.expected_interval_s, devices.expected_interval_s),
    metadata = devices.metadata || EXCLUDED.metadata,
    registered_by = 'registry'
"""


async def _check_references(conn: asyncpg.Connection, data: RegistryData, source: str) -> None:
    errors: list[str] = []
    known_cities = {r[0] for r in await conn.fetch("SELECT city_id FROM cities")} | {
        c.city_id for c in data.cities
    }
    for section in ("areas", "facts", "targets", "devices"):
        for i, row in enumerate(getattr(data, section)):
            city_id = row.city_id
            if city_id not in known_cities:
                errors.append(
                    f"{section} #{i + 1}: city_id: unknown city {city_id!r}; add it under [[cities]] "
                    "or to the service configuration (cities)"
                )
    areas = {(a.city_id, a.area_id) for a in data.areas} | {
        (r[0], r[1]) for r in await conn.fetch("SELECT DISTINCT city_id, area_id FROM areas")
    }
    for i, d in enumerate(data.devices):
        if d.area_id is not None and (d.city_id, d.area_id) not in areas:
            errors.append(
                f"devices #{i + 1} (device_id={d.device_id!r}): area_id: unknown area {d.area_id!r} "
                f"of city {d.city_id!r}; add it under [[areas]]"
            )
    seen: dict[tuple[str, str], int] = {}
    for i, d in enumerate(data.devices):
        key = (d.city_id, d.device_id)
        if key in seen:
            errors.append(
                f"devices #{i + 1}: device_id: {d.device_id!r} listed twice (also #{seen[key] + 1})"
            )
        seen[key] = i
    if errors:
        raise RegistryImportError(source, errors)


async def import_registry(
    conn: asyncpg.Connection, data: RegistryData, source: str = "registry", dry_run: bool = False
) -> dict[str, int]:
    """Upsert validated reference data in one transaction; returns rows per section."""
    async with import_transaction(conn, dry_run):
        await _check_references(conn, data, source)
        await conn.executemany(
            _UPSERT_CITY, [(c.city_id, c.name, c.timezone, c.country) for c in data.cities]
        )
        await conn.executemany(
            _UPSERT_AREA,
            [(a.city_id, a.area_id, a.name, a.population, a.area_km2, a.valid_from) for a in data.areas],
        )
        await conn.executemany(
            _UPSERT_FACT, [(f.city_id, f.key, f.value, f.unit, f.source, f.valid_from) for f in data.facts]
        )
        await conn.executemany(
            _UPSERT_TARGET,
            [
                (t.city_id, t.kpi_code, t.component, t.target, t.band_edges, t.valid_from)
                for t in data.targets
            ],
        )
        await conn.executemany(
            _UPSERT_DEVICE,
            [
                (
                    d.city_id,
                    d.device_id,
                    d.kind,
                    d.area_id,
                    d.lat,
                    d.lon,
                    d.unit,
                    d.installed_on,
                    d.expected_interval_s,
                    d.metadata_json(),
                )
                for d in data.devices
            ],
        )
    return data.counts()


async def import_registry_file(
    dsn_or_conn: str | asyncpg.Connection,
    path: Path,
    *,
    default_city: str | None = None,
    dry_run: bool = False,
) -> dict[str, int]:
    """Parse, validate and import a registry file; raises RegistryImportError naming every problem."""
    data = parse_registry(path, default_city)
    if isinstance(dsn_or_conn, str):
        conn = await asyncpg.connect(dsn_or_conn)
        try:
            return await import_registry(conn, data, str(path), dry_run)
        finally:
            await conn.close()
    return await import_registry(dsn_or_conn, data, str(path), dry_run)


# --------------------------------------------------------------------------------------------------
# As-of snapshots used by the formulas
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AreaInfo:
    area_id: str
    name: str
    population: float | None
    area_km2: float | None


@dataclass(frozen=True, slots=True)
class TargetInfo:
    target: float
    band_edges: tuple[float, float, float] | None
    valid_from: date


@dataclass
class RegistrySnapshot:
    """A city's reference data as of one day: per key, the row with the latest valid_from <= as_of."""

    city_id: str
    as_of: date
    areas: dict[str, AreaInfo] = field(default_factory=dict)
    facts: dict[str, float] = field(default_factory=dict)
    targets: dict[tuple[str, str], TargetInfo] = field(default_factory=dict)

    def population(self) -> tuple[float | None, str]:
        """Population and where it came from: fact 'population', else the sum over areas."""
        if "population" in self.facts:
            return self.facts["population"], "city_facts.population"
        pops = [a.population for a in self.areas.values() if a.population is not None]
        if pops:
            return float(sum(pops)), "sum of areas.population"
        return None, "no population in the registry (city fact 'population' or areas)"

    def target(self, code: str, component: str) -> TargetInfo | None:
        return self.targets.get((normalize_code(code), component))


async def load_snapshot(conn: asyncpg.Connection, city_id: str, as_of: date) -> RegistrySnapshot:
    snap = RegistrySnapshot(city_id, as_of)
    for r in await conn.fetch(
        """SELECT DISTINCT ON (area_id) area_id, name, population, area_km2 FROM areas
           WHERE city_id = $1 AND valid_from <= $2 ORDER BY area_id, valid_from DESC""",
        city_id,
        as_of,
    ):
        snap.areas[r["area_id"]] = AreaInfo(r["area_id"], r["name"], r["population"], r["area_km2"])
    for r in await conn.fetch(
        """SELECT DISTINCT ON (key) key, value FROM city_facts
           WHERE city_id = $1 AND valid_from <= $2 ORDER BY key, valid_from DESC""",
        city_id,
        as_of,
    ):
        snap.facts[r["key"]] = float(r["value"])
    for r in await conn.fetch(
        """SELECT DISTINCT ON (kpi_code, component) kpi_code, component, target, band_edges, valid_from
           FROM kpi_targets WHERE city_id = $1 AND valid_from <= $2
           ORDER BY kpi_code, component, valid_from DESC""",
        city_id,
        as_of,
    ):
        raw = [float(x) for x in r["band_edges"] or []]
        edges = (raw[0], raw[1], raw[2]) if len(raw) == 3 else None
        snap.targets[(r["kpi_code"], r["component"])] = TargetInfo(float(r["target"]), edges, r["valid_from"])
    return snap
