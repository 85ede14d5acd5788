"""The U4SSC city profile: a self-contained HTML page (inline CSS and SVG, no script, no network)
and the same content as Markdown.

Layout: dimensions -> sub-dimension and category -> KPI cards; each KPI lists its components with
value, unit, target, score and band, data coverage, validity, the U4SSC data-quality label and a
sparkline of its monthly series within the year (daily when fewer than two months have values).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg

from kpi_rollups.catalog import KpiDefinition, load_catalog
from kpi_rollups.periods import Period, periods_in
from kpi_rollups.refresh import UnknownCityError, refresh_kpis
from kpi_rollups.values import band_index, fmt_value

BAND_COLOURS = {0: "#9aa3ad", 1: "#c8423b", 2: "#e08a2e", 3: "#c9a527", 4: "#2e8b57"}
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"


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
    series_kind: str = "month"


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
    for kpi in load_catalog().kpi:
        order = {c.name: i for i, c in enumerate(kpi.components)}
        out_rows: list[Row] = []
        for r in sorted(
            year_rows.get(kpi.code, []), key=lambda r: (order.get(r["component"], 99), r["area_id"])
        ):
            comp = kpi.component(r["component"]) if kpi.has_component(r["component"]) else None
            months = _on_axis(series.get((kpi.code, r["component"], r["area_id"], "month"), []), month_axis)
            days = _on_axis(series.get((kpi.code, r["component"], r["area_id"], "day"), []), day_axis)
            use_days = sum(v is not None for _, v in months) < 2 and sum(v is not None for _, v in days) >= 2
            details = r["details"] if isinstance(r["details"], dict) else {}
            if isinstance(r["details"], str):
                import json

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
                    series_kind="day" if use_days else "month",
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
    return CityProfile(city_id, city["name"], tz, year, now, blocks)


def _on_axis(points: list[tuple[str, float | None]], axis: list[str]) -> list[tuple[str, float | None]]:
    values = dict(points)
    return [(label, values.get(label)) for label in axis]


# --------------------------------------------------------------------------------------------------
# Sparklines
# --------------------------------------------------------------------------------------------------


def sparkline_svg(
    points: Sequence[tuple[str, float | None]], title: str, width: int = 120, height: int = 30
) -> str:
    """Inline SVG line of the series (gaps where a value is missing), last point marked."""
    vals = [(i, v) for i, (_, v) in enumerate(points) if v is not None and math.isfinite(v)]
    esc = html.escape
    if not vals:
        return (
            f'<svg class="spark" width="{width}" height="{height}" role="img" aria-label="no series"></svg>'
        )
    lo = min(v for _, v in vals)
    hi = max(v for _, v in vals)
    pad = 4.0
    n = max(1, len(points) - 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = pad + (width - 2 * pad) * (i / n if len(points) > 1 else 0.5)
        y = height / 2 if hi == lo else height - pad - (v - lo) / (hi - lo) * (height - 2 * pad)
        return x, y

    path, prev = [], None
    for i, v in vals:
        x, y = xy(i, v)
        path.append(f"{'L' if prev == i - 1 else 'M'}{x:.1f},{y:.1f}")
        prev = i
    lx, ly = xy(*vals[-1])
    first, last = points[0][0], points[-1][0]
    tip = f"{title}: {first} – {last}, min {lo:.4g}, max {hi:.4g}"
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{esc(tip)}"><title>{esc(tip)}</title>'
        f'<path d="{" ".join(path)}" fill="none" stroke="#2b6cb0" stroke-width="1.6" '
        'stroke-linejoin="round"/>'
        f'<circle cx="{lx:.1f}" cy="{ly:.1f}" r="2.6" fill="#2b6cb0"/></svg>'
    )


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


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

CSS = """
:root { --ink:#1f2933; --muted:#5f6b7a; --line:#dde3ea; --bg:#f6f8fa; --accent:#2b6cb0; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--ink); background:var(--bg); }
header { background:#14365d; color:#fff; padding:22px 32px; }
header h1 { margin:0 0 4px; font-size:24px; font-weight:600; }
header .meta { color:#c9d6e6; font-size:13px; }
main { max-width:1180px; margin:0 auto; padding:18px 24px 40px; }
.summary { display:flex; gap:14px; flex-wrap:wrap; margin:6px 0 18px; }
.summary div { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 16px; }
.summary b { display:block; font-size:20px; }
.legend { font-size:12px; color:var(--muted); }
.legend .chip { margin-left:6px; }
.chip { display:inline-block; padding:1px 8px; border-radius:10px; color:#fff; font-size:12px;
        white-space:nowrap; }
h2 { margin:28px 0 8px; font-size:20px; border-bottom:2px solid var(--accent); padding-bottom:4px; }
h3 { margin:18px 0 8px; font-size:15px; color:var(--muted); font-weight:600; }
.kpi { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 16px; margin:0 0 12px; }
.kpi-head { display:flex; align-items:baseline; gap:10px; flex-wrap:wrap; }
.kpi-head h4 { margin:0; font-size:16px; }
.code { font-family:ui-monospace, Menlo, Consolas, monospace; font-size:12px; background:#eef2f7;
        border-radius:4px; padding:1px 6px; }
.pill { font-size:11px; border:1px solid var(--line); border-radius:10px; padding:0 7px; color:var(--muted); }
.pill.warn { border-color:#e0b04a; color:#8a6212; background:#fff8e6; }
.def { color:var(--muted); font-size:12.5px; margin:4px 0 8px; }
table { width:100%; border-collapse:collapse; font-size:13px; table-layout:fixed; }
th { text-align:left; font-weight:600; color:var(--muted); border-bottom:1px solid var(--line);
     padding:4px 6px; }
td { border-bottom:1px solid #eef1f4; padding:5px 6px; vertical-align:middle; }
td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.value { font-weight:600; }
.ok { color:#2e8b57; font-weight:600; } .no { color:#c8423b; font-weight:600; }
.note { color:var(--muted); font-size:12px; }
.method { color:var(--muted); font-size:12px; margin-top:6px; }
footer { color:var(--muted); font-size:12px; max-width:1180px; margin:0 auto; padding:0 24px 30px; }
svg.spark { display:block; }
.spark-kind { color:var(--muted); font-size:10.5px; }
"""


def _chip(band: str | None) -> str:
    colour = BAND_COLOURS[band_index(band)]
    return f'<span class="chip" style="background:{colour}">{html.escape(band or "no score")}</span>'


def render_html(profile: CityProfile) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(profile.name)} — U4SSC city profile {profile.year}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<header><h1>{e(profile.name)} — U4SSC city profile {profile.year}</h1>",
        f'<div class="meta">City id {e(profile.city_id)} · time zone {e(profile.timezone)} · generated '
        f"{profile.generated_at:%Y-%m-%d %H:%M} UTC by citykpi from sensor data and the city registry</div>"
        "</header><main>",
        '<section class="summary">',
        f"<div><b>{len(profile.blocks)}</b>KPIs in the catalog</div>",
        f"<div><b>{profile.n_values}</b>values computed</div>",
        f"<div><b>{profile.n_valid}</b>valid (coverage rule met)</div>",
        "</section>",
        '<div class="legend">Score = % of target (capped at 100): '
        + "".join(f"<span>{_chip(b)}</span>" for b in ("0-33%", "33-66%", "66-95%", ">95%"))
        + "</div>",
    ]
    for dimension, groups in profile.by_dimension().items():
        parts.append(f"<h2>{e(dimension)}</h2>")
        for group, blocks in groups.items():
            parts.append(f"<h3>{e(group)}</h3>")
            for b in blocks:
                k = b.kpi
                pills = f'<span class="pill">{"Core" if k.level == "core" else "Advanced"}</span>'
                if not k.confirmed:
                    pills += f' <span class="pill warn" title="{e(k.confirmation_note)}">unconfirmed</span>'
                parts.append(
                    f'<article class="kpi" id="{e(k.slug)}"><div class="kpi-head"><h4>{e(k.name)}</h4>'
                    f'<span class="code">{e(k.display_code)}</span>{pills}</div>'
                    f'<div class="def">{e(k.definition)}</div>'
                    "<table><colgroup><col style=width:23%><col style=width:13%><col style=width:11%>"
                    "<col style=width:12%><col style=width:8%><col style=width:5%><col style=width:16%>"
                    "<col style=width:12%></colgroup><thead><tr><th>Indicator</th><th>Value</th>"
                    "<th>Target</th><th>Score</th>"
                    "<th>Coverage</th><th>Valid</th><th>Data quality</th><th>Series</th></tr></thead><tbody>"
                )
                for r in b.rows:
                    cov = f"{r.coverage * 100:.1f} %" if r.coverage is not None else "n/a (registry)"
                    score = f"{r.score:.0f} % {_chip(r.band)}" if r.score is not None else _chip(None)
                    note = f'<div class="note">{e(r.note)}</div>' if r.note else ""
                    target = e(fmt_value(r.target, r.unit)) if r.target is not None else "–"
                    series_kind = "daily" if r.series_kind == "day" else "monthly"
                    spark_title = f"{k.name} {r.label} ({series_kind})"
                    n_points = sum(v is not None for _, v in r.series)
                    kind = f'<div class="spark-kind">{series_kind}, {n_points} pts</div>' if n_points else ""
                    parts.append(
                        f"<tr><td>{e(r.label)}{note}</td>"
                        f'<td class="num value">{e(fmt_value(r.value, r.unit))}</td>'
                        f'<td class="num">{target}</td>'
                        f'<td class="num">{score}</td><td class="num">{cov}</td>'
                        f"<td>{'<span class=ok>yes</span>' if r.valid else '<span class=no>no</span>'}</td>"
                        f"<td>{e(r.quality_label)}<div class=note>{r.n_devices} devices, "
                        f"{r.n_readings:,} readings</div></td>"
                        f"<td>{sparkline_svg(r.series, spark_title)}{kind}</td></tr>"
                    )
                parts.append("</tbody></table>")
                notes = " ".join(x for x in (k.method_note, k.target_note) if x)
                if notes:
                    parts.append(f'<div class="method">{e(notes)}</div>')
                parts.append("</article>")
    parts.append(
        "</main><footer>Codes follow the U4SSC KPI collection methodology (ITU); entries marked "
        "“unconfirmed” have a code or definition still to be verified. Values are stored and shown even "
        "when their data coverage is below the validity threshold (75 % of the expected readings of the "
        "period by default); such values are marked not valid.</footer></body></html>"
    )
    return "\n".join(parts)


def render_markdown(profile: CityProfile) -> str:
    lines = [
        f"# {profile.name} — U4SSC city profile {profile.year}",
        "",
        f"City id `{profile.city_id}`, time zone {profile.timezone}; generated "
        f"{profile.generated_at:%Y-%m-%d %H:%M} UTC by citykpi. {profile.n_values} values computed, "
        f"{profile.n_valid} valid. Score = % of target (capped at 100), bands 0-33 / 33-66 / 66-95 / >95 %.",
    ]
    for dimension, groups in profile.by_dimension().items():
        lines += ["", f"## {dimension}"]
        for group, blocks in groups.items():
            lines += ["", f"### {group}"]
            for b in blocks:
                k = b.kpi
                flags = "Core" if k.level == "core" else "Advanced"
                if not k.confirmed:
                    flags += f"; unconfirmed: {k.confirmation_note}"
                lines += ["", f"#### {k.name} (`{k.display_code}`, {flags})", "", k.definition, ""]
                lines.append(
                    "| Indicator | Value | Target | Score | Band | Coverage | Valid | Data quality | Series |"
                )
                lines.append("|---|---:|---:|---:|---|---:|---|---|---|")
                for r in b.rows:
                    cov = f"{r.coverage * 100:.1f} %" if r.coverage is not None else "n/a (registry)"
                    label = r.label + (f" ({r.note})" if r.note else "")
                    lines.append(
                        "| "
                        + " | ".join(
                            x.replace("|", "\\|")
                            for x in (
                                label,
                                fmt_value(r.value, r.unit),
                                fmt_value(r.target, r.unit) if r.target is not None else "–",
                                f"{r.score:.0f} %" if r.score is not None else "–",
                                r.band or "–",
                                cov,
                                "yes" if r.valid else "no",
                                r.quality_label,
                                sparkline_text(r.series),
                            )
                        )
                        + " |"
                    )
                notes = " ".join(x for x in (k.method_note, k.target_note) if x)
                if notes:
                    lines += ["", f"_{notes}_"]
    lines.append("")
    return "\n".join(lines)


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
