"""Alert rules as data: a TOML file of `[[rules]]`, validated and imported (`citykpi alerts import`).

Each rule names a metric, a selector (city, area, device, device kind: unset matches all), a
statistic, a threshold, a hysteresis and a severity. Statistics:

- `reading`: each stored reading;
- `rolling_mean`: the mean over the last `window_min` minutes, from the rollups (flagged readings
  excluded), counted only when `min_coverage` of the window's buckets hold data;
- `exceedance`: a rolling mean over a WHO or EU limit's averaging period against that limit
  (`limit = "who2021_pm25_24h"`, see LIMITS); metric, window and threshold come from the limit;
- `no_data`: no reading for `window_min` minutes (value: the minutes of silence);
- `stuck`: readings the quality job flagged stuck (processors/quality.py).

An alert opens when the statistic exceeds the threshold (falls below it with direction = "below")
and closes once it is back past `threshold - hysteresis`. The import runs in one transaction; a file
with any error changes nothing; importing a file again is a no-op.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.identifiers import Identifier
from schemas.metrics import METRICS
from schemas.transactions import import_transaction

Statistic = Literal["reading", "rolling_mean", "exceedance", "no_data", "stuck"]
DEFAULT_RULES = Path(__file__).with_name("default_alert_rules.toml")


@dataclass(frozen=True, slots=True)
class Limit:
    metric: str
    window_min: int
    value: float  # in the metric's canonical unit
    source: str


# Short-term air-quality limits. WHO: global air quality guidelines (2021), AQG levels. EU:
# Directive 2008/50/EC Annex XI limit values and Annex XII thresholds; 2024/2881 Annex I (from 2030).
LIMITS: dict[str, Limit] = {
    "who2021_pm25_24h": Limit("pm25", 1440, 15.0, "WHO AQG 2021, PM2.5 24-hour mean"),
    "who2021_pm10_24h": Limit("pm10", 1440, 45.0, "WHO AQG 2021, PM10 24-hour mean"),
    "who2021_no2_24h": Limit("no2", 1440, 25.0, "WHO AQG 2021, NO2 24-hour mean"),
    "who2021_o3_8h": Limit("o3", 480, 100.0, "WHO AQG 2021, O3 8-hour mean"),
    "who2021_so2_24h": Limit("so2", 1440, 40.0, "WHO AQG 2021, SO2 24-hour mean"),
    "who2021_co_24h": Limit("co", 1440, 4.0, "WHO AQG 2021, CO 24-hour mean (mg/m3)"),
    "eu2008_pm10_24h": Limit("pm10", 1440, 50.0, "EU 2008/50/EC, PM10 daily limit value"),
    "eu2008_no2_1h": Limit("no2", 60, 200.0, "EU 2008/50/EC, NO2 hourly limit value"),
    "eu2008_no2_alert_1h": Limit("no2", 60, 400.0, "EU 2008/50/EC, NO2 alert threshold"),
    "eu2008_so2_1h": Limit("so2", 60, 350.0, "EU 2008/50/EC, SO2 hourly limit value"),
    "eu2008_o3_info_1h": Limit("o3", 60, 180.0, "EU 2008/50/EC, O3 information threshold"),
    "eu2008_o3_alert_1h": Limit("o3", 60, 240.0, "EU 2008/50/EC, O3 alert threshold"),
    "eu2024_pm25_24h": Limit("pm25", 1440, 25.0, "EU 2024/2881, PM2.5 daily limit value from 2030"),
}


class AlertRulesError(ValueError):
    """The rules file is invalid; `errors` lists each problem with its rule number and field."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.errors = errors
        super().__init__(f"{source}: {len(errors)} error(s):\n" + "\n".join(f"  {e}" for e in errors))


class AlertRule(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    rule_id: Identifier
    metric: str = ""
    statistic: Statistic
    city_id: Identifier | None = None
    area_id: Identifier | None = None
    device_id: str | None = Field(None, min_length=1, max_length=256)
    device_kind: str | None = Field(None, min_length=1, max_length=64)
    window_min: int | None = Field(None, gt=0, le=7 * 1440)
    limit: str | None = None
    threshold: float | None = Field(None, allow_inf_nan=False)
    direction: Literal["above", "below"] = "above"
    hysteresis: float = Field(0.0, ge=0, allow_inf_nan=False)
    min_coverage: float = Field(0.75, ge=0, le=1)
    severity: Literal["info", "warning", "critical"] = "warning"
    description: str = Field("", max_length=500)
    enabled: bool = True

    @model_validator(mode="after")
    def _complete(self) -> AlertRule:
        """Fill what the statistic implies; refuse what contradicts it."""
        s = self.statistic
        if s == "exceedance":
            if self.limit not in LIMITS:
                raise ValueError(f"exceedance needs limit = one of {sorted(LIMITS)}")
            lim = LIMITS[self.limit]
            for name, given, implied in (
                ("metric", self.metric or lim.metric, lim.metric),
                ("window_min", self.window_min or lim.window_min, lim.window_min),
                ("threshold", self.threshold if self.threshold is not None else lim.value, lim.value),
            ):
                if given != implied:
                    raise ValueError(f"{name} {given!r} contradicts limit {self.limit} ({implied!r})")
            return self.model_copy(
                update={"metric": lim.metric, "window_min": lim.window_min, "threshold": lim.value}
            )
        if self.limit is not None:
            raise ValueError("limit applies to statistic = 'exceedance' only")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}")
        if s in ("rolling_mean", "no_data") and self.window_min is None:
            raise ValueError(f"{s} needs window_min")
        if s in ("reading", "stuck") and self.window_min is not None:
            raise ValueError(f"{s} takes no window_min")
        if s == "no_data":
            if self.threshold is not None or self.direction != "above":
                raise ValueError("no_data takes no threshold or direction: window_min is its limit")
            return self.model_copy(update={"threshold": float(self.window_min or 0)})
        if s == "stuck":
            if self.threshold is not None or self.direction != "above":
                raise ValueError("stuck takes no threshold or direction")
            return self.model_copy(update={"threshold": 0.5})
        if self.threshold is None:
            raise ValueError(f"{s} needs a threshold")
        return self

    def record(self) -> tuple[object, ...]:
        return (
            self.rule_id,
            self.city_id,
            self.area_id,
            self.device_id,
            self.device_kind,
            self.metric,
            self.statistic,
            self.window_min,
            self.limit,
            self.threshold,
            self.direction,
            self.hysteresis,
            self.min_coverage,
            self.severity,
            self.description,
            self.enabled,
        )


RULE_COLUMNS = (
    "rule_id, city_id, area_id, device_id, device_kind, metric, statistic, window_min, limit_name, "
    "threshold, direction, hysteresis, min_coverage, severity, description, enabled"
)
UPSERT_RULE = (
    f"INSERT INTO alert_rules ({RULE_COLUMNS}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) "
    "ON CONFLICT (rule_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in RULE_COLUMNS.split(", ")[1:])
    + f" WHERE ({', '.join('alert_rules.' + c for c in RULE_COLUMNS.split(', '))}) IS DISTINCT FROM "
    f"({', '.join('EXCLUDED.' + c for c in RULE_COLUMNS.split(', '))})"
)


def parse_rules(text: str, source: str = "<rules>") -> list[AlertRule]:
    """The rules of a TOML document, every error collected (rule number 1-based, field, message)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AlertRulesError(source, [f"not TOML: {e}"]) from None
    unknown = set(doc) - {"rules"}
    errors = [f"unknown top-level key {k!r} (rules go in [[rules]])" for k in sorted(unknown)]
    raw = doc.get("rules", [])
    if not isinstance(raw, list):
        raise AlertRulesError(source, ["rules must be an array of tables ([[rules]])"])
    rules: list[AlertRule] = []
    seen: set[str] = set()
    for n, item in enumerate(raw, 1):
        try:
            rule = AlertRule.model_validate(item)
        except ValidationError as e:
            for err in e.errors():
                where = ".".join(str(p) for p in err["loc"]) or "rule"
                errors.append(f"rule {n} ({item.get('rule_id', '?')}): {where}: {err['msg']}")
            continue
        if rule.rule_id in seen:
            errors.append(f"rule {n}: rule_id {rule.rule_id!r} appears twice")
        seen.add(rule.rule_id)
        rules.append(rule)
    if errors:
        raise AlertRulesError(source, errors)
    return rules


async def import_rules(dsn: str, path: Path, dry_run: bool = False) -> tuple[int, int]:
    """Validate the file and upsert its rules in one transaction; (rules in file, rows changed)."""
    rules = parse_rules(path.read_text(encoding="utf-8"), str(path))
    conn = await asyncpg.connect(dsn)
    try:
        async with import_transaction(conn, dry_run):
            cities = {r[0] for r in await conn.fetch("SELECT city_id FROM cities")}
            missing = [
                f"{r.rule_id}: unknown city {r.city_id!r}"
                for r in rules
                if r.city_id and r.city_id not in cities
            ]
            if missing:
                raise AlertRulesError(str(path), missing)
            changed = 0
            for r in rules:
                changed += int((await conn.execute(UPSERT_RULE, *r.record())).split()[-1])
    finally:
        await conn.close()
    return len(rules), changed
