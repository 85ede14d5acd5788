"""Coverage KPIs ("% monitored by ICT"): shares of installed or reporting devices."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import Field

from kpi_rollups.city_rollups import DeviceInfo
from kpi_rollups.formulas._base import FormulaContext, _Params, formula
from kpi_rollups.values import KpiResult


class ShareParams(_Params):
    metrics: list[str] = Field(default_factory=list)
    total_fact: str
    roles: list[str] = Field(default_factory=list)
    exclude_roles: list[str] = Field(default_factory=list)
    device_kinds: list[str] = Field(default_factory=list)
    weight_key: str | None = None
    segment_key: str | None = None
    # "installed": also the registry's devices of `installed_kinds` installed by the period's end
    # (U4SSC counts smart meters installed, not those that happened to report)
    count: Literal["reporting", "installed"] = "reporting"
    installed_kinds: list[str] = Field(default_factory=list)


def _installed(d: DeviceInfo, kinds: list[str], last_day: date) -> bool:
    return (
        d.registered_by == "registry"
        and d.kind in kinds
        and (d.installed_on is None or d.installed_on <= last_day)
    )


@formula("ict_share")
async def ict_share(ctx: FormulaContext) -> list[KpiResult]:
    """Reporting (or installed) devices, or the km they cover, / registry total x 100.

    A device counts when it has readings of one of `metrics` (any metric if empty) in the period,
    or with `count = "installed"` when the registry lists it as installed, and it passes the
    role/kind filters; with `weight_key` it contributes that metadata number (km), with
    `segment_key` devices sharing a segment count once (the largest weight).
    """
    p: ShareParams = ctx.params(ShareParams)
    devices = await ctx.data.devices()
    reporting = await ctx.data.reporting(p.metrics)
    candidates = dict.fromkeys(reporting)
    if p.count == "installed":
        last_day = ctx.period.days()[-1]
        candidates |= dict.fromkeys(
            dk for dk, d in devices.items() if _installed(d, p.installed_kinds, last_day)
        )
    chosen: list[DeviceInfo] = []
    for dk in candidates:
        d = devices.get(dk)
        if d is None:
            continue
        if p.roles and d.role not in p.roles:
            continue
        if d.role in p.exclude_roles:
            continue
        if p.device_kinds and d.kind not in p.device_kinds:
            continue
        chosen.append(d)
    segments: dict[str, float] = {}
    unweighted: list[str] = []
    for d in chosen:
        seg = str(d.metadata.get(p.segment_key, d.device_id)) if p.segment_key else d.device_id
        seg = seg or d.device_id
        if p.weight_key:
            w = d.number(p.weight_key)
            if w is None:
                unweighted.append(d.device_id)
                continue
        else:
            w = 1.0
        segments[seg] = max(segments.get(seg, 0.0), w)
    numerator = float(sum(segments.values()))
    total = ctx.registry.facts.get(p.total_fact)
    details: dict[str, Any] = {
        "numerator": numerator,
        "numerator_unit": p.weight_key or "devices",
        "registry_total": total,
        "registry_total_fact": p.total_fact,
        "counted": p.count,
        "reporting_devices": sorted(d.device_id for d in chosen if d.device_key in reporting)[:500],
        "segments": len(segments),
    }
    if unweighted:
        details["devices_without_" + (p.weight_key or "weight")] = sorted(unweighted)[:500]
    n_readings = sum(reporting.get(d.device_key, 0) for d in chosen)
    if not total:
        return [
            KpiResult(
                n_devices=len(chosen),
                n_readings=n_readings,
                details=details,
                basis="registry",
                not_computable=f"registry fact {p.total_fact!r} missing or zero",
            )
        ]
    value = numerator / total * 100.0
    valid = None
    if value > 100.0 + 1e-9:
        details["warning"] = f"more reporting than the registry total ({p.total_fact}): registry out of date?"
        valid = False
    return [
        KpiResult(
            value=value,
            n_devices=len(chosen),
            n_readings=n_readings,
            details=details,
            basis="registry",
            valid=valid,
        )
    ]


# Travel time index
