"""KPI formulas, registered by name: a catalog entry's `formula` picks one, its `params` configure it.

A formula gets a `FormulaContext` (the KPI definition, the city's data for the period, the
registry snapshot as of the period's last day, options) and returns `KpiResult`s: value,
readings and devices behind it, data coverage of the whole period, details. Refresh adds targets,
scores, bands, validity and labels. To add a KPI: add a `[[kpi]]` entry to catalog.toml and, if no
existing formula fits, one function in its family's module decorated with `@formula("name")`.

One module per KPI family (`air`, `noise`, `meters`, `coverage`, `traffic`); `_base` holds the
context, the registry and the shared helpers. A new family is a module here and its import below.
"""

from kpi_rollups.catalog import Catalog, load_catalog  # noqa: TID251 (the one checked loader)
from kpi_rollups.formulas import air, coverage, meters, noise, traffic
from kpi_rollups.formulas._base import FORMULAS, Formula, FormulaContext, formula


def checked_catalog(path: str | None = None) -> Catalog:
    """The KPI catalog (bundled, or the TOML at `path`) with every entry's formula checked against
    the registered ones: how everything above the formulas loads it (ruff bans the unchecked
    `load_catalog` elsewhere; the registry, below the formulas, only needs codes and components)."""
    return load_catalog(path, formulas=frozenset(FORMULAS))


__all__ = [
    "FORMULAS",
    "Formula",
    "FormulaContext",
    "air",
    "checked_catalog",
    "coverage",
    "formula",
    "meters",
    "noise",
    "traffic",
]
