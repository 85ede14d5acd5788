"""What every KPI formula shares: the context a formula gets, the registry, parameter models and
the coverage and local-time helpers."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from kpi_rollups.catalog import KpiDefinition
from kpi_rollups.city_rollups import CityData, SeriesCount, local_times
from kpi_rollups.periods import Period, local_midnight_utc
from kpi_rollups.registry import RegistrySnapshot
from kpi_rollups.values import KpiOptions, KpiResult

P = TypeVar("P", bound=BaseModel)


@dataclass
class FormulaContext:
    kpi: KpiDefinition
    data: CityData
    registry: RegistrySnapshot
    options: KpiOptions

    @property
    def period(self) -> Period:
        return self.data.period

    @property
    def threshold(self) -> float:
        return self.options.threshold(self.period.kind, self.kpi.min_coverage)

    def params(self, model: type[P]) -> P:
        return model.model_validate(self.kpi.params)


Formula = Callable[[FormulaContext], Awaitable[list[KpiResult]]]


FORMULAS: dict[str, Formula] = {}


def formula(name: str) -> Callable[[Formula], Formula]:
    """Register a formula under `name` (the catalog's `formula` field)."""

    def register(fn: Formula) -> Formula:
        if name in FORMULAS:
            raise ValueError(f"formula {name!r} is already registered ({FORMULAS[name].__qualname__})")
        FORMULAS[name] = fn
        return fn

    return register


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _mean(xs: list[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def _coverage(data: CityData, counts: list[SeriesCount]) -> tuple[float, float]:
    """Mean (whole period, elapsed part) coverage over the series; (0, 0) if none."""
    if not counts:
        return 0.0, 0.0
    caps = [data.capture(c) for c in counts]
    return sum(c[0] for c in caps) / len(caps), sum(c[1] for c in caps) / len(caps)


def _local_days(bucket_us: npt.NDArray[np.int64], period: Period) -> npt.NDArray[np.int64]:
    """Index of each instant's local day in the period (-1 outside)."""
    day = local_times(bucket_us, period.tz)[0] - period.start.toordinal()
    return np.where((day >= 0) & (day < period.n_days), day, -1)


def _elapsed_hours_per_day(period: Period, now: datetime) -> npt.NDArray[np.float64]:
    out = np.zeros(period.n_days)
    for i, d in enumerate(period.days()):
        a = local_midnight_utc(d, period.tz)
        b = min(local_midnight_utc(d + timedelta(days=1), period.tz), now)
        out[i] = max(0.0, (b - a).total_seconds() / 3600.0)
    return out


# Air pollution
