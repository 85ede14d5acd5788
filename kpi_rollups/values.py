"""KPI values: what a formula returns, scoring against targets, validity and data-quality labels.

Scoring (per KPI direction, see catalog.toml):
- "higher is better" (coverage KPIs): score = value / target x 100, capped at 100;
- "lower is better" (pollution, consumption, loss, noise, travel time index):
  score = target / value x 100, capped at 100 (value <= 0 scores 100).
The band is the score's interval in the band edges (default 33/66/95 % of target): "0-33%",
"33-66%", "66-95%", ">95%"; an edge belongs to the band below it.

Validity: a measurement value is valid when its data coverage of the WHOLE period is at least the
threshold (default 0.75 for year, month and day; per-KPI `min_coverage` in the catalog or
`KpiOptions` override it), so an ongoing period is marked invalid until enough of it is covered.
The value is stored either way. Registry-based (coverage) KPIs are valid when the registry has the
totals they need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from kpi_rollups.catalog import DEFAULT_BAND_EDGES, Direction

if TYPE_CHECKING:
    from kpi_rollups.eu_aqi import EuAqiHours

Basis = Literal["measurement", "registry"]

LABEL_ACCURATE = "Based on accurate measurements"
LABEL_PARTIAL = "Partial measurements"
LABEL_IN_PROGRESS = "Partial measurements (period in progress)"
LABEL_REGISTRY = "Based on registry data and reporting devices"
LABEL_NOT_COMPUTABLE = "Not computable"


@dataclass(frozen=True)
class KpiOptions:
    """Knobs of a refresh: validity thresholds by period kind (fraction of expected readings)."""

    min_coverage: dict[str, float] = field(default_factory=lambda: {"year": 0.75, "month": 0.75, "day": 0.75})

    def threshold(self, period_kind: str, kpi_override: float | None = None) -> float:
        if kpi_override is not None:
            return kpi_override
        return self.min_coverage.get(period_kind, 0.75)


@dataclass
class KpiResult:
    """One value computed by a formula; refresh adds target, score, band, validity and label."""

    component: str = ""
    area_id: str = ""
    value: float | None = None
    n_readings: int = 0
    n_devices: int = 0
    coverage: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    basis: Basis = "measurement"
    not_computable: str | None = None
    valid: bool | None = None  # a formula may force validity off (e.g. registry inconsistent)
    label_note: str | None = (
        None  # appended to the data-quality label, e.g. "extrapolated from 40 of 50 meters"
    )
    eu_aqi: EuAqiHours | None = None  # the station-hours behind an `aqi_eu` value, stored with it


class KpiValue(BaseModel):
    """One row of kpi_values."""

    city_id: str
    kpi_code: str
    component: str = ""
    area_id: str = ""
    period_kind: str
    period_start: date
    value: float | None
    unit: str
    n_readings: int = 0
    n_devices: int = 0
    coverage: float | None = None
    valid: bool = False
    quality_label: str | None = None
    target: float | None = None
    score: float | None = None
    band: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    computed_at: datetime


def score(value: float | None, target: float | None, direction: Direction) -> float | None:
    """% of target achieved, capped at 100 (see module docstring)."""
    if value is None or target is None or not math.isfinite(value):
        return None
    if direction == "higher":
        if target <= 0:
            return 100.0
        return max(0.0, min(100.0, value / target * 100.0))
    if value <= 0:
        return 100.0
    return max(0.0, min(100.0, target / value * 100.0))


def band_label(score_pct: float | None, edges: tuple[float, float, float] = DEFAULT_BAND_EDGES) -> str | None:
    if score_pct is None:
        return None
    lo = 0.0
    for edge in edges:
        if score_pct <= edge:
            return f"{lo:g}-{edge:g}%"
        lo = edge
    return f">{edges[-1]:g}%"


def band_index(band: str | None) -> int:
    """0 (no band), 1 (lowest) .. 4 (> top edge), for colouring."""
    if not band:
        return 0
    if band.startswith(">"):
        return 4
    lo = float(band.split("-")[0])
    return 1 if lo == 0 else 2 if lo < 50 else 3


def clean_json(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python, dates -> ISO strings."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v) for v in obj]
    if isinstance(obj, date | datetime):
        return obj.isoformat()
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def fmt_value(value: float | None, unit: str = "") -> str:
    """A KPI value for people: 3 significant digits for small numbers, thousands separators."""
    if value is None or not math.isfinite(value):
        return "–"
    a = abs(value)
    if unit in ("AQI", "band") or a >= 1000:
        text = f"{value:,.0f}"
    elif a >= 100:
        text = f"{value:,.1f}"
    elif a >= 1 or a == 0:
        text = f"{value:,.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip() if unit not in ("", "ratio", "band", "AQI") else text
