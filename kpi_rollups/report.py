"""The U4SSC city profile: a self-contained HTML page (inline CSS and SVG, no script, no network)
and the same content as Markdown.

Layout: the SDG section (goal -> target -> the KPIs serving it: value, target, score band and the
annual values of every year in the database), then dimensions -> sub-dimension and category -> KPI
cards; each KPI lists its components with value, unit, target, score and band, data coverage,
validity, the U4SSC data-quality label and a small chart of its monthly values, months of the year
across, one line per year present. The Markdown carries a text sparkline of the year's months
(days when fewer than two months have values).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib.resources import files
from pathlib import Path

import asyncpg
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from kpi_rollups.catalog import KpiDefinition, SdgLink
from kpi_rollups.formulas import checked_catalog
from kpi_rollups.periods import Period, periods_in
from kpi_rollups.refresh import UnknownCityError, refresh_kpis
from kpi_rollups.values import band_index, fmt_value

BAND_COLOURS = {0: "#9aa3ad", 1: "#c8423b", 2: "#e08a2e", 3: "#c9a527", 4: "#2e8b57"}
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
YEAR_COLOURS = ("#2b6cb0", "#e08a2e", "#2e8b57", "#8e44ad", "#7f8c8d")  # newest year first
MONTH_INITIALS = tuple("JFMAMJJASOND")


@dataclass
class Row:
    component: str
    label: str
    area_id: str
    value: float | None
    unit: str
    target: float | None
    score: float | None
    band: str | None
    coverage: float | None
    valid: bool
    quality_label: str
    n_devices: int
    n_readings: int
    note: str
    series: list[tuple[str, float | None]] = field(default_factory=list)
    months_by_year: dict[int, list[float | None]] = field(default_factory=dict)
    annual: list[tuple[int, float | None]] = field(default_factory=list)


@dataclass
class SdgRow:
    """A KPI serving a SDG target, with its row of the year (None when nothing is stored)."""

    kpi: KpiDefinition
    link: SdgLink
    row: Row | None


@dataclass
class SdgTarget:
    target: str
    title: str
    rows: list[SdgRow]


@dataclass
class SdgGoal:
    goal: str
    title: str
    targets: list[SdgTarget]


@dataclass
class KpiBlock:
    kpi: KpiDefinition
    rows: list[Row]


@dataclass
class CityProfile:
    city_id: str
    name: str
    timezone: str
    year: int
    generated_at: datetime
    blocks: list[KpiBlock]
    sdg: list[SdgGoal] = field(default_factory=list)

    def by_dimension(self) -> dict[str, dict[str, list[KpiBlock]]]:
        """dimension -> "sub-dimension › category" -> KPIs, in catalog order, sub-dimensions together."""
        first_sub: dict[tuple[str, str], int] = {}
        for i, b in enumerate(self.blocks):
            first_sub.setdefault((b.kpi.dimension, b.kpi.sub_dimension), i)
        ordered = sorted(self.blocks, key=lambda b: first_sub[(b.kpi.dimension, b.kpi.sub_dimension)])
        out: dict[str, dict[str, list[KpiBlock]]] = {}
        for b in ordered:
            out.setdefault(b.kpi.dimension, {}).setdefault(
                f"{b.kpi.sub_dimension} › {b.kpi.category}", []
            ).append(b)
        return out

    @property
    def n_values(self) -> int:
        return sum(1 for b in self.blocks for r in b.rows if r.value is not None)

    @property
    def n_valid(self) -> int:
        return sum(1 for b in self.blocks for r in b.rows if r.valid)


async def build_profile(
    conn: asyncpg.Connection, city_id: str, year: int, *, refresh: bool = True, now: datetime | None = None
) -> CityProfile:
    """Read (after refreshing the year and its months so far, if asked) the city's KPI values."""
    now = now or datetime.now(UTC)
    city = await conn.fetchrow("SELECT name, timezone FROM cities WHERE city_id = $1", city_id)
    if city is None:
        raise UnknownCityError(f"unknown city {city_id!r}")
    tz = city["timezone"]
    if refresh:
        periods: list[Period] = [
            Period("year", date(year, 1, 1), tz),
            *periods_in(str(year), "month", tz, now),
        ]
        for p in periods:
            await refresh_kpis(conn, city_id, p.kind, p.start, now=now)
    rows = await conn.fetch(
        """SELECT * FROM kpi_values WHERE city_id = $1 AND period_start >= $2 AND period_start < $3
           ORDER BY period_start""",
        city_id,
        date(year, 1, 1),
        date(year + 1, 1, 1),
    )
    months_by_year, annual = await _history(conn, city_id, year)
    series: dict[tuple[str, str, str, str], list[tuple[str, float | None]]] = {}
    year_rows: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        key = (r["kpi_code"], r["component"], r["area_id"])
        if r["period_kind"] == "year":
            year_rows.setdefault(r["kpi_code"], []).append(r)
        else:
            label = (
                f"{r['period_start']:%Y-%m}" if r["period_kind"] == "month" else r["period_start"].isoformat()
            )
            series.setdefault((*key, r["period_kind"]), []).append((label, r["value"]))

    # common x axes: the months, and the days, from the first to the last with a value in the profile
    def axis(kind: str) -> list[str]:
        labels = sorted(
            {lab for (*_, k), pts in series.items() if k == kind for lab, v in pts if v is not None}
        )
        if not labels:
            return []
        if kind == "month":
            first_m, last_m = int(labels[0][5:7]), int(labels[-1][5:7])
            return [f"{year}-{m:02d}" for m in range(first_m, last_m + 1)]
        first, last = date.fromisoformat(labels[0]), date.fromisoformat(labels[-1])
        return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]

    month_axis, day_axis = axis("month"), axis("day")
    blocks: list[KpiBlock] = []
    for kpi in checked_catalog().kpi:
        order = {c.name: i for i, c in enumerate(kpi.components)}
        out_rows: list[Row] = []
        for r in sorted(
            year_rows.get(kpi.code, []), key=lambda r: (order.get(r["component"], 99), r["area_id"])
        ):
            comp = kpi.component(r["component"]) if kpi.has_component(r["component"]) else None
            key = (kpi.code, r["component"], r["area_id"])
            months = _on_axis(series.get((kpi.code, r["component"], r["area_id"], "month"), []), month_axis)
            days = _on_axis(series.get((kpi.code, r["component"], r["area_id"], "day"), []), day_axis)
            use_days = sum(v is not None for _, v in months) < 2 and sum(v is not None for _, v in days) >= 2
            details = r["details"] if isinstance(r["details"], dict) else {}
            if isinstance(r["details"], str):
                details = json.loads(r["details"])
            out_rows.append(
                Row(
                    component=r["component"],
                    label=(comp.label if comp else r["component"])
                    + (f" — {r['area_id']}" if r["area_id"] else ""),
                    area_id=r["area_id"],
                    value=r["value"],
                    unit=r["unit"],
                    target=r["target"],
                    score=r["score"],
                    band=r["band"],
                    coverage=r["coverage"],
                    valid=r["valid"],
                    quality_label=r["quality_label"] or "",
                    n_devices=r["n_devices"],
                    n_readings=r["n_readings"],
                    note=str(details.get("not_computable") or details.get("warning") or ""),
                    series=days if use_days else months,
                    months_by_year=months_by_year.get(key, {}),
                    annual=sorted(annual.get(key, {}).items()),
                )
            )
        if not out_rows:
            out_rows.append(
                Row(
                    "",
                    kpi.name,
                    "",
                    None,
                    kpi.unit,
                    None,
                    None,
                    None,
                    None,
                    False,
                    "Not computed",
                    0,
                    0,
                    "no value stored for this year",
                )
            )
        blocks.append(KpiBlock(kpi, out_rows))
    return CityProfile(city_id, city["name"], tz, year, now, blocks, _sdg_goals(blocks))


async def _history(
    conn: asyncpg.Connection, city_id: str, year: int
) -> tuple[
    dict[tuple[str, str, str], dict[int, list[float | None]]],
    dict[tuple[str, str, str], dict[int, float | None]],
]:
    """Every stored year up to `year`: monthly values by year (12 slots) and annual values, per
    (KPI, component, area)."""
    rows = await conn.fetch(
        """SELECT kpi_code, component, area_id, period_kind, period_start, value FROM kpi_values
           WHERE city_id = $1 AND period_kind IN ('month', 'year') AND period_start < $2""",
        city_id,
        date(year + 1, 1, 1),
    )
    months: dict[tuple[str, str, str], dict[int, list[float | None]]] = {}
    annual: dict[tuple[str, str, str], dict[int, float | None]] = {}
    for r in rows:
        key, start = (r["kpi_code"], r["component"], r["area_id"]), r["period_start"]
        if r["period_kind"] == "year":
            annual.setdefault(key, {})[start.year] = r["value"]
        else:
            months.setdefault(key, {}).setdefault(start.year, [None] * 12)[start.month - 1] = r["value"]
    return months, annual


def _sdg_goals(blocks: list[KpiBlock]) -> list[SdgGoal]:
    """Goal -> target -> the KPIs linked to it (catalog `sdg`), each with its city-wide row."""
    catalog = checked_catalog()
    by_target: dict[str, list[SdgRow]] = {}
    for b in blocks:
        for link in b.kpi.sdg:
            row = next((r for r in b.rows if r.component == link.component and not r.area_id), None)
            by_target.setdefault(link.target, []).append(SdgRow(b.kpi, link, row))

    def number(code: str) -> tuple[int, ...]:
        return tuple(int(p) if p.isdigit() else 99 for p in code.split("."))

    goals: dict[str, list[SdgTarget]] = {}
    for target in sorted(by_target, key=number):
        goal = target.split(".")[0]
        goals.setdefault(goal, []).append(SdgTarget(target, catalog.sdg_targets[target], by_target[target]))
    return [SdgGoal(g, catalog.sdg_goals[g], targets) for g, targets in goals.items()]


def _on_axis(points: list[tuple[str, float | None]], axis: list[str]) -> list[tuple[str, float | None]]:
    values = dict(points)
    return [(label, values.get(label)) for label in axis]


# --------------------------------------------------------------------------------------------------
# Rendering: Jinja2 templates in kpi_rollups/templates (HTML autoescaped, so registry text is inert)
# --------------------------------------------------------------------------------------------------

_TEMPLATES = Environment(
    loader=PackageLoader("kpi_rollups", "templates"),
    autoescape=select_autoescape(["html.j2", "svg.j2"], default_for_string=True),
    undefined=StrictUndefined,
)


@dataclass(frozen=True)
class _ChartLine:
    label: str
    colour: str
    path: str
    points: list[tuple[float, float, str]]  # x, y, tooltip


@dataclass(frozen=True)
class _Chart:
    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    lines: list[_ChartLine]
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    target_y: float | None
    title: str


def _chart(
    lines: Sequence[tuple[str, Sequence[float | None]]],
    x_labels: Sequence[str],
    target: float | None,
    title: str,
    width: int,
    height: int,
) -> _Chart | None:
    """Geometry of a small line chart: x = the labels (months, years), one line per series
    (newest first gets the first colour), the y range spanning the values and the target."""
    values = [v for _, vs in lines for v in vs if v is not None and math.isfinite(v)]
    if not values:
        return None
    span = [*values, *([target] if target is not None and math.isfinite(target) else [])]
    lo, hi = min(span), max(span)
    if hi == lo:
        lo, hi = lo - (abs(lo) * 0.1 or 1.0), hi + (abs(hi) * 0.1 or 1.0)
    left, right, top, bottom = 34.0, width - 4.0, 13.0, height - 11.0
    n = max(1, len(x_labels))

    def x(i: int) -> float:
        return left + (right - left) * (i + 0.5) / n

    def y(v: float) -> float:
        return bottom - (v - lo) / (hi - lo) * (bottom - top)

    drawn = []
    for k, (label, vs) in enumerate(lines):
        parts, points, prev = [], [], None
        for i, v in enumerate(vs):
            if v is None or not math.isfinite(v):
                continue
            parts.append(f"{'L' if prev == i - 1 else 'M'}{x(i):.1f},{y(v):.1f}")
            points.append((x(i), y(v), f"{label} {x_labels[i]}: {fmt_value(v)}"))
            prev = i
        drawn.append(_ChartLine(label, YEAR_COLOURS[k % len(YEAR_COLOURS)], " ".join(parts), points))
    return _Chart(
        width,
        height,
        left,
        right,
        top,
        bottom,
        drawn,
        [(x(i), lab) for i, lab in enumerate(x_labels)],
        [(y(hi), _tick(hi)), (y(lo), _tick(lo))],
        y(target) if target is not None and math.isfinite(target) else None,
        title,
    )


def _chart_svg(chart: _Chart | None, width: int, height: int) -> Markup:
    return Markup(_TEMPLATES.get_template("chart.svg.j2").render(chart=chart, width=width, height=height))


def monthly_chart_svg(row: Row, title: str, width: int = 236, height: int = 74) -> Markup:
    """The row's monthly values, months of the year across, one line per year present (newest
    first in the legend); the target dashed."""
    years = sorted(row.months_by_year, reverse=True)
    lines = [(str(y), row.months_by_year[y]) for y in years]
    return _chart_svg(_chart(lines, MONTH_INITIALS, row.target, title, width, height), width, height)


def annual_chart_svg(row: Row, title: str, width: int = 176, height: int = 60) -> Markup:
    """The row's annual values over the years present in the database."""
    lines = [("annual", [v for _, v in row.annual])]
    labels = [str(y) for y, _ in row.annual]
    return _chart_svg(_chart(lines, labels, row.target, title, width, height), width, height)


def sparkline_text(points: Sequence[tuple[str, float | None]]) -> str:
    vals = [v for _, v in points if v is not None and math.isfinite(v)]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    out = []
    for _, v in points:
        if v is None or not math.isfinite(v):
            out.append(" ")
        else:
            k = 0 if hi == lo else round((v - lo) / (hi - lo) * (len(SPARK_BLOCKS) - 1))
            out.append(SPARK_BLOCKS[k])
    return "".join(out)


def _quantity(value: float | None, unit: str) -> tuple[str, Markup]:
    """(number, unit as shown) of a KPI value, so a long unit can go on its own line, and break
    after its slashes rather than inside a word (kWh/inhabitant/year)."""
    text = fmt_value(value, unit)
    if unit and text.endswith(f" {unit}"):
        return text[: -len(unit) - 1], Markup("/<wbr>").join(unit.split("/"))
    return text, Markup("")


def _tick(v: float) -> str:
    """A compact axis label: 3 significant digits, k and M for thousands and millions."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


def _markdown_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


_TEMPLATES.filters.update(
    fmt=fmt_value,
    band_colour=lambda band: BAND_COLOURS[band_index(band)],
    cell=_markdown_cell,
    quantity=_quantity,
    join_year=lambda year_value: f"{year_value[0]}: {fmt_value(year_value[1])}",
    spark_text=sparkline_text,
)
_TEMPLATES.globals.update(monthly_chart=monthly_chart_svg, annual_chart=annual_chart_svg)


def render_html(profile: CityProfile) -> str:
    css = files("kpi_rollups").joinpath("templates/report.css").read_text(encoding="utf-8")
    return _TEMPLATES.get_template("report.html.j2").render(p=profile, css=Markup(css))


def render_markdown(profile: CityProfile) -> str:
    return _TEMPLATES.get_template("report.md.j2").render(p=profile)


async def write_report(
    dsn_or_conn: str | asyncpg.Connection,
    city_id: str,
    year: int,
    out_dir: Path,
    *,
    refresh: bool = True,
    now: datetime | None = None,
) -> tuple[Path, Path]:
    """Write `<city>-<year>-u4ssc.html` and `.md` into out_dir; returns their paths."""
    if isinstance(dsn_or_conn, str):
        conn = await asyncpg.connect(dsn_or_conn)
        try:
            profile = await build_profile(conn, city_id, year, refresh=refresh, now=now)
        finally:
            await conn.close()
    else:
        profile = await build_profile(dsn_or_conn, city_id, year, refresh=refresh, now=now)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / f"{city_id}-{year}-u4ssc.html"
    md_path = out_dir / f"{city_id}-{year}-u4ssc.md"
    html_path.write_text(render_html(profile), encoding="utf-8")
    md_path.write_text(render_markdown(profile), encoding="utf-8")
    return html_path, md_path
