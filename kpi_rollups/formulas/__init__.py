"""KPI formulas, registered by name: a catalog entry's `formula` picks one, its `params` configure it.

A formula gets a `FormulaContext` (the KPI definition, the city's data for the period, the
registry snapshot as of the period's last day, options) and returns `KpiResult`s: value,
readings and devices behind it, data coverage of the whole period, details. Refresh adds targets,
scores, bands, validity and labels. To add a KPI: add a `[[kpi]]` entry to catalog.toml and, if no
existing formula fits, one function in its family's module decorated with `@formula("name")`.

One module per KPI family (`air`, `noise`, `meters`, `coverage`, `traffic`); `_base` holds the
context, the registry and the shared helpers. A new family is a module here and its import below.
"""

from kpi_rollups.formulas import air, coverage, meters, noise, traffic
from kpi_rollups.formulas._base import FORMULAS, Formula, FormulaContext, formula

__all__ = [
    "FORMULAS",
    "Formula",
    "FormulaContext",
    "air",
    "coverage",
    "formula",
    "meters",
    "noise",
    "traffic",
]
