"""The U4SSC KPI catalog: `catalog.toml` loaded into validated pydantic models.

One `[[kpi]]` entry per KPI. Its `formula` names a function registered in `kpi_rollups.formulas`
with `@formula("name")`; `params` are that function's parameters (each formula validates them).
The formulas read the catalog, never the reverse: `kpi_rollups.formulas.checked_catalog()` passes
their registered names and the catalog checks every entry names one. That is how everything above
the formulas loads it (ruff bans `load_catalog` there); the registry, below them, uses `load_catalog`.
Targets in the catalog are defaults; per-city targets come from the `kpi_targets` table.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kpi_rollups.periods import PeriodKind
from schemas.metrics import METRICS

Direction = Literal["higher", "lower"]
_CODE_RE = re.compile(r"^(EC|EN|SC):([A-Z]+):([A-Z]+):(\d+)([CA])$")
DIMENSIONS = {"EC": "Economy", "EN": "Environment", "SC": "Society and Culture"}
DEFAULT_BAND_EDGES: tuple[float, float, float] = (33.0, 66.0, 95.0)


def normalize_code(code: str) -> str:
    """'EN: EN: AQ: 1C' -> 'EN:EN:AQ:1C' (the form stored in kpi_values.kpi_code)."""
    return re.sub(r"\s+", "", code).upper()


def display_code(code: str) -> str:
    """'EN:EN:AQ:1C' -> 'EN: EN: AQ: 1C' (the U4SSC spelling)."""
    return ": ".join(code.split(":"))


class ComponentDef(BaseModel):
    """One value a KPI reports: '' is the headline value; others are pollutants, Lden per area…"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    label: str
    unit: str
    target: float | None = Field(None, description="default target; per-city targets override it")
    direction: Direction | None = Field(None, description="default: the KPI's direction")
    scored: bool = Field(True, description="False for supplementary values (AQI, details)")
    per_area: bool = Field(False, description="one row per area (kpi_values.area_id)")


class SdgLink(BaseModel):
    """A SDG target the KPI serves (U4SSC "SDG reference(s)"); `component` is the value that tracks it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(pattern=r"^\d{1,2}\.[0-9a-z]{1,2}$")
    indicator: str | None = Field(None, pattern=r"^\d{1,2}\.[0-9a-z]{1,2}\.\d{1,2}$")
    component: str = ""
    confirmed: bool
    source: str = Field(min_length=1, description="where the link is stated, or why it is unconfirmed")

    @property
    def goal(self) -> str:
        return self.target.split(".")[0]


class KpiDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    slug: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str
    dimension: str
    sub_dimension: str
    category: str
    level: Literal["core", "advanced"]
    definition: str
    unit: str
    formula: str
    source_metrics: list[str] = Field(default_factory=list)
    default_period: PeriodKind = "year"
    reference_data: list[str] = Field(default_factory=list)
    direction: Direction
    band_edges: tuple[float, float, float] = DEFAULT_BAND_EDGES
    min_coverage: float | None = Field(None, gt=0, le=1, description="override of the validity threshold")
    confirmed: bool
    confirmation_note: str = ""
    method_note: str = ""
    target_note: str = ""
    components: list[ComponentDef]
    params: dict[str, Any] = Field(default_factory=dict)
    sdg: list[SdgLink] = Field(default_factory=list)

    @field_validator("code")
    @classmethod
    def _code_format(cls, v: str) -> str:
        v = normalize_code(v)
        if not _CODE_RE.match(v):
            raise ValueError(f"U4SSC code {v!r} must look like 'EN:EN:AQ:1C'")
        return v

    @field_validator("source_metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; see schemas/metrics.py")
        return v

    @field_validator("band_edges")
    @classmethod
    def _increasing(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not 0 < v[0] < v[1] < v[2]:
            raise ValueError("band_edges must be increasing and > 0, e.g. [33, 66, 95]")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> KpiDefinition:
        m = _CODE_RE.match(self.code)
        assert m is not None
        if DIMENSIONS[m.group(1)] != self.dimension:
            raise ValueError(
                f"code {self.code} is in dimension {DIMENSIONS[m.group(1)]!r}, not {self.dimension!r}"
            )
        if (m.group(5) == "C") != (self.level == "core"):
            raise ValueError(f"code {self.code} ends in {m.group(5)} but level is {self.level!r}")
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate component names in {names}")
        if not names:
            raise ValueError("a KPI needs at least one component ('' for its headline value)")
        unknown = [link.component for link in self.sdg if link.component not in names]
        if unknown:
            raise ValueError(f"SDG links name components {unknown} that the KPI does not have")
        return self

    def component(self, name: str) -> ComponentDef:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(
            f"KPI {self.code} has no component {name!r}; known: {[c.name for c in self.components]}"
        )

    def has_component(self, name: str) -> bool:
        return any(c.name == name for c in self.components)

    @property
    def display_code(self) -> str:
        return display_code(self.code)


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kpi: list[KpiDefinition]
    sdg_goals: dict[str, str] = Field(default_factory=dict, description="SDG goal number -> title")
    sdg_targets: dict[str, str] = Field(default_factory=dict, description="SDG target -> title")

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        for attr in ("code", "slug"):
            values = [getattr(k, attr) for k in self.kpi]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"duplicate KPI {attr}s: {dupes}")
        links = [link for k in self.kpi for link in k.sdg]
        untitled = sorted({x.target for x in links if x.target not in self.sdg_targets})
        untitled += sorted({x.goal for x in links if x.goal not in self.sdg_goals})
        if untitled:
            raise ValueError(f"SDG goals/targets without a title in sdg_goals/sdg_targets: {untitled}")
        return self

    def get(self, code: str) -> KpiDefinition:
        code = normalize_code(code)
        for k in self.kpi:
            if k.code == code or k.slug == code.lower():
                return k
        raise KeyError(f"unknown KPI {code!r}; known: {', '.join(k.code for k in self.kpi)}")

    @property
    def codes(self) -> list[str]:
        return [k.code for k in self.kpi]


class CatalogError(ValueError):
    pass


def parse_catalog(
    text: str, source: str = "catalog.toml", formulas: Collection[str] | None = None
) -> Catalog:
    """Parse and validate catalog TOML; with `formulas` (the registered names), every KPI's formula
    must be one of them."""
    try:
        catalog = Catalog.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as e:
        raise CatalogError(f"{source}: {e}") from None
    except ValidationError as e:
        lines = [f"{source}: invalid KPI catalog:"]
        for err in e.errors():
            lines.append(f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
        raise CatalogError("\n".join(lines)) from None
    missing = [
        f"{k.code} -> {k.formula!r}"
        for k in catalog.kpi
        if formulas is not None and k.formula not in formulas
    ]
    if missing:
        raise CatalogError(f"{source}: formulas not registered in kpi_rollups.formulas: {missing}")
    return catalog


@lru_cache(maxsize=1)
def load_catalog(path: str | None = None, formulas: frozenset[str] | None = None) -> Catalog:
    """The bundled catalog (or the TOML at `path`), parsed once (per set of `formulas` checked)."""
    if path is not None:
        return parse_catalog(Path(path).read_text(encoding="utf-8"), path, formulas)
    text = (resources.files("kpi_rollups") / "catalog.toml").read_text(encoding="utf-8")
    return parse_catalog(text, formulas=formulas)
