"""Water and electricity from cumulative meters: consumption per inhabitant and supply loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from pydantic import Field

from kpi_rollups.city_rollups import DeviceInfo
from kpi_rollups.formulas._base import FormulaContext, _coverage, _Params, formula
from kpi_rollups.values import KpiResult


class MeterParams(_Params):
    metric: str
    total_fact: str | None = None
    exclude_roles: list[str] = Field(default_factory=list)
    litres_per_unit: float = 1.0
    per: str = "day"


@dataclass
class MeteredRate:
    per_day: float  # city-wide rate (canonical unit per day), scaled to the registry total
    metered_per_day: float
    n_meters: int
    n_readings: int
    factor: float
    coverage: float
    coverage_so_far: float
    details: dict[str, Any]
    note: str | None = None


async def _metered_rate(
    ctx: FormulaContext,
    metric: str,
    total_fact: str | None,
    keep: Callable[[DeviceInfo | None], bool],
) -> MeteredRate | str:
    """Summed daily rates of the kept meters; steps rejected as implausible lower the coverage by
    the share of metered time they exclude, and the label says so."""
    data = ctx.data
    devices = await data.devices()
    usage = await data.meter_usage(metric)
    usage = {dk: u for dk, u in usage.items() if keep(devices.get(dk))}
    rates = {dk: u.per_day for dk, u in usage.items() if u.per_day is not None}
    if not rates:
        return f"no meter with two or more {metric} readings in the period"
    counts = await data.series_counts([metric])
    cov, cov_so_far = _coverage(data, [counts[(dk, metric)] for dk in rates if (dk, metric) in counts])
    covered = sum(u.covered_s for u in usage.values())
    excluded = sum(u.excluded_s for u in usage.values())
    rejected = sum(u.rejected for u in usage.values())
    kept_share = covered / (covered + excluded) if covered + excluded > 0 else 1.0
    cov, cov_so_far = cov * kept_share, cov_so_far * kept_share
    metered = float(sum(r for r in rates.values() if r is not None))
    total = ctx.registry.facts.get(total_fact) if total_fact else None
    n = len(rates)
    details: dict[str, Any] = {
        "meters_reporting": n,
        "metered_per_day": metered,
        "resets_handled": sum(u.resets for u in usage.values()),
        "rollovers_handled": sum(u.rollovers for u in usage.values()),
        "noise_steps": sum(u.noise for u in usage.values()),
        "rejected_steps": rejected,
        "excluded_hours": excluded / 3600.0,
        "excluded_share": 1.0 - kept_share,
    }
    notes = []
    if rejected:
        notes.append(
            f"{rejected} implausible meter step{'s' if rejected > 1 else ''} excluded"
            f" ({(1.0 - kept_share) * 100:.1f} % of metered time)"
        )
    factor, share = 1.0, 1.0
    if total_fact:
        details["registry_total"] = total
        details["registry_total_fact"] = total_fact
        if total is None:
            details["extrapolation"] = f"none: registry fact {total_fact!r} missing"
        elif total < n:
            details["warning"] = (
                f"{n} meters reported but the registry lists {total:g}: registry out of date?"
            )
        else:
            factor, share = total / n, n / total
            details["extrapolation"] = f"x {factor:.4g} (reporting meters scaled to the registry total)"
            if factor > 1:
                notes.append(f"extrapolated from {n} of {total:g} meters")
    details["meters_share"] = share
    return MeteredRate(
        metered * factor,
        metered,
        n,
        sum(usage[dk].n for dk in rates),
        factor,
        cov,
        cov_so_far,
        details,
        "; ".join(notes) or None,
    )


def _population(ctx: FormulaContext, details: dict[str, Any]) -> float | None:
    pop, source = ctx.registry.population()
    details["population"], details["population_source"] = pop, source
    return pop if pop else None


def _days_in_year(year: int) -> int:
    return (date(year + 1, 1, 1) - date(year, 1, 1)).days


async def _per_inhabitant(ctx: FormulaContext) -> list[KpiResult]:
    p: MeterParams = ctx.params(MeterParams)
    rate = await _metered_rate(
        ctx,
        p.metric,
        p.total_fact,
        lambda d: d is None or d.role not in p.exclude_roles,
    )
    if isinstance(rate, str):
        return [KpiResult(not_computable=rate)]
    details = dict(rate.details)
    pop = _population(ctx, details)
    details["coverage_so_far"] = rate.coverage_so_far
    details["period_elapsed"] = ctx.period.elapsed_fraction(ctx.data.now)
    if pop is None:
        return [
            KpiResult(
                n_readings=rate.n_readings,
                n_devices=rate.n_meters,
                coverage=rate.coverage,
                details=details,
                not_computable="no population in the registry",
            )
        ]
    if p.per == "year":
        days = _days_in_year(ctx.period.start.year)
        value = rate.per_day * days * p.litres_per_unit / pop
        details["annualised"] = f"daily rate x {days} days"
    else:
        value = rate.per_day * p.litres_per_unit / pop
    details["city_per_day"] = rate.per_day
    return [
        KpiResult(
            value=value,
            n_readings=rate.n_readings,
            n_devices=rate.n_meters,
            coverage=rate.coverage,
            details=details,
            label_note=rate.note,
        )
    ]


@formula("water_consumption")
async def water_consumption(ctx: FormulaContext) -> list[KpiResult]:
    """Litres per inhabitant per day from cumulative water meters."""
    return await _per_inhabitant(ctx)


@formula("electricity_consumption")
async def electricity_consumption(ctx: FormulaContext) -> list[KpiResult]:
    """kWh per inhabitant per year (annualised rate) from cumulative electricity meters."""
    return await _per_inhabitant(ctx)


class LossParams(_Params):
    metric: str = "water_volume_total"
    total_fact: str | None = None
    inflow_role: str = "district_inflow"


@formula("water_supply_loss")
async def water_supply_loss(ctx: FormulaContext) -> list[KpiResult]:
    """(district inflow - customer consumption) / inflow x 100, from daily rates."""
    p: LossParams = ctx.params(LossParams)
    devices = await ctx.data.devices()
    if not any(d.role == p.inflow_role for d in devices.values()):
        return [
            KpiResult(
                not_computable=f"no district inflow meters (devices.metadata.role = {p.inflow_role!r})",
                details={"inflow_role": p.inflow_role},
            )
        ]
    inflow = await _metered_rate(ctx, p.metric, None, lambda d: d is not None and d.role == p.inflow_role)
    customers = await _metered_rate(
        ctx, p.metric, p.total_fact, lambda d: d is None or d.role != p.inflow_role
    )
    if isinstance(inflow, str):
        return [KpiResult(not_computable=f"district inflow meters: {inflow}")]
    if isinstance(customers, str):
        return [KpiResult(not_computable=f"customer meters: {customers}")]
    if inflow.per_day <= 0:
        return [KpiResult(not_computable="district inflow is zero in the period")]
    details = {
        "inflow_per_day": inflow.per_day,
        "consumption_per_day": customers.per_day,
        "inflow_meters": inflow.n_meters,
        "customer": customers.details,
        "coverage_so_far": min(inflow.coverage_so_far, customers.coverage_so_far),
    }
    loss = (inflow.per_day - customers.per_day) / inflow.per_day * 100.0
    return [
        KpiResult(
            value=loss,
            n_readings=inflow.n_readings + customers.n_readings,
            n_devices=inflow.n_meters + customers.n_meters,
            coverage=min(inflow.coverage, customers.coverage),
            details=details,
            valid=False if loss < 0 else None,
            label_note=customers.note,
        )
    ]


# Coverage ("% monitored by ICT") KPIs
