"""Command line of the KPI rollups; `ingest/cli.py` mounts these:

app.add_typer(registry_app, name="registry")   # citykpi registry import FILE | show
app.add_typer(kpi_app, name="kpi")             # citykpi kpi refresh | show | catalog | export
app.command("report")(report)                  # citykpi report --city X --year Y --out DIR
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from core.config import ConfigError, Settings, load_settings, mask_url
from core.logs import setup_logging

registry_app = typer.Typer(
    help="Reference data for the KPIs: areas and population, asset counts, targets, device attributes.",
    no_args_is_help=True,
)
kpi_app = typer.Typer(help="U4SSC KPIs: refresh, show, catalog, export.", no_args_is_help=True)
err = Console(stderr=True)


class _Out:
    """stdout console, resolved at print time: terminal width on a terminal, wide when piped."""

    def print(self, *objects: object) -> None:
        console = Console() if sys.stdout.isatty() else Console(width=200)
        console.print(*objects)


out = _Out()
log = logging.getLogger("citykpi.kpi")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML configuration file")]
CityOpt = Annotated[str, typer.Option("--city", help="city id")]


def _settings(config: Path | None, level: str = "WARNING") -> Settings:
    try:
        settings = load_settings(config)
    except ConfigError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    setup_logging(level)
    return settings


def _dsn(settings: Settings) -> str:
    return settings.database.url.get_secret_value()


@registry_app.command("import")
def registry_import(
    file: Annotated[Path, typer.Argument(help="registry file: .toml or .csv", show_default=False)],
    city: Annotated[str | None, typer.Option("--city", help="city_id for rows that give none")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate and roll back")] = False,
    config: ConfigOpt = None,
) -> None:
    """Validate and import areas, city facts, KPI targets and device attributes (idempotent)."""
    from kpi_rollups.registry import RegistryImportError, import_registry_file

    settings = _settings(config)
    try:
        counts = asyncio.run(import_registry_file(_dsn(settings), file, default_city=city, dry_run=dry_run))
    except RegistryImportError as e:
        err.print(f"[red]{file}: {len(e.errors)} error(s), nothing imported:[/red]")
        for line in e.errors:
            err.print(f"  {line}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    what = ", ".join(f"{n} {section}" for section, n in counts.items() if n)
    out.print(f"{'validated (dry run, nothing written)' if dry_run else 'imported'}: {what or 'nothing'}")


@registry_app.command("show")
def registry_show(
    city: CityOpt,
    as_of: Annotated[str | None, typer.Option("--as-of", help="YYYY-MM-DD (default: today)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Print a city's reference data as of a day."""
    from kpi_rollups.registry import load_snapshot

    settings = _settings(config)
    day = date.fromisoformat(as_of) if as_of else date.today()

    async def main() -> None:
        import asyncpg

        conn = await asyncpg.connect(_dsn(settings))
        try:
            snap = await load_snapshot(conn, city, day)
            n_dev = await conn.fetchval("SELECT count(*) FROM devices WHERE city_id = $1", city)
        finally:
            await conn.close()
        t = Table(title=f"{city}: areas as of {day}")
        for col in ("area", "name", "population", "km²"):
            t.add_column(col)
        for a in snap.areas.values():
            t.add_row(a.area_id, a.name, f"{a.population or 0:,.0f}", f"{a.area_km2 or 0:g}")
        out.print(t)
        t = Table(title="facts")
        t.add_column("key")
        t.add_column("value", justify="right")
        for k, v in sorted(snap.facts.items()):
            t.add_row(k, f"{v:,.6g}")
        out.print(t)
        t = Table(title="targets (override the catalog)")
        for col in ("KPI", "component", "target"):
            t.add_column(col)
        for (code, comp), tgt in sorted(snap.targets.items()):
            t.add_row(code, comp or "—", f"{tgt.target:g}")
        out.print(t)
        out.print(f"{n_dev} devices registered")

    asyncio.run(main())


@kpi_app.command("catalog")
def kpi_catalog() -> None:
    """List the KPI catalog: code, name, unit, formula, confirmed."""
    from kpi_rollups.formulas import checked_catalog

    t = Table(title="U4SSC KPI catalog")
    for col in ("code", "name", "C/A", "unit", "formula", "confirmed"):
        t.add_column(col)
    for k in checked_catalog().kpi:
        t.add_row(
            k.display_code,
            k.name,
            k.level[0].upper(),
            k.unit,
            k.formula,
            "yes" if k.confirmed else f"no: {k.confirmation_note}",
        )
    out.print(t)


@kpi_app.command("refresh")
def kpi_refresh(
    city: Annotated[
        list[str] | None, typer.Option("--city", help="city id (repeatable; default: all configured)")
    ] = None,
    period: Annotated[
        str | None, typer.Option(help="YYYY, YYYY-MM or YYYY-MM-DD (default: this year)")
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            help="year, month or day: e.g. --period 2026 --kind month refreshes every month of 2026 so far"
        ),
    ] = None,
    config: ConfigOpt = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "WARNING",
) -> None:
    """Compute and store KPIs for a period (idempotent), then print them."""
    from kpi_rollups.periods import PERIOD_KINDS, periods_in
    from kpi_rollups.refresh import UnknownCityError, refresh_kpis

    settings = _settings(config, log_level)
    if kind is not None and kind not in PERIOD_KINDS:
        err.print(f"[red]--kind must be one of {', '.join(PERIOD_KINDS)}[/red]")
        raise typer.Exit(2)
    cities = city or [c.city_id for c in settings.cities]
    text = period or str(datetime.now(UTC).year)

    async def main() -> int:
        import asyncpg

        conn = await asyncpg.connect(settings.database.kpi_dsn())
        failures = 0
        try:
            for cid in cities:
                tz = await conn.fetchval("SELECT timezone FROM cities WHERE city_id = $1", cid)
                if tz is None:
                    err.print(
                        f"[red]unknown city {cid!r}: configure it (cities) or import it "
                        "(citykpi registry import)[/red]"
                    )
                    failures += 1
                    continue
                try:
                    periods = periods_in(text, kind, tz)  # type: ignore[arg-type]
                except ValueError as e:
                    err.print(f"[red]{e}[/red]")
                    raise typer.Exit(2) from None
                last = None
                for p in periods:
                    try:
                        values = await refresh_kpis(conn, cid, p.kind, p.start, strict=True, trigger="cli")
                    except (UnknownCityError, RuntimeError) as e:
                        err.print(f"[red]{cid} {p.label}: {e}[/red]")
                        failures += 1
                        continue
                    err.print(f"{cid} {p.kind} {p.label}: {len(values)} KPI values stored")
                    last = (p, values)
                if last is not None:
                    out.print(_table(cid, last[0].kind, last[0].label, [v.model_dump() for v in last[1]]))
        finally:
            await conn.close()
        return failures

    if asyncio.run(main()):
        raise typer.Exit(1)


def _history_table(city: str, kind: str, label: str, rows: list[dict[str, Any]]) -> Table:
    """Every revision: value, validity, label, when it was computed and what triggered it."""
    from kpi_rollups.values import fmt_value

    t = Table(title=f"{city} — KPI revisions, {kind} {label}")
    for col in ("KPI", "component", "area", "rev", "value", "valid", "label", "computed at", "trigger"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["kpi_code"],
            r["component"] or "—",
            r["area_id"] or "—",
            str(r["revision"]),
            fmt_value(r["value"]),
            "yes" if r["valid"] else "no",
            r["quality_label"] or "",
            r["computed_at"].isoformat(timespec="seconds"),
            r["trigger"],
        )
    return t


def _table(city: str, kind: str, label: str, rows: list[dict[str, object]]) -> Table:
    from kpi_rollups.formulas import checked_catalog
    from kpi_rollups.values import fmt_value

    names = {k.code: k.name for k in checked_catalog().kpi}
    t = Table(title=f"{city} — KPIs, {kind} {label}", show_lines=False)
    for col, justify in (
        ("code", "left"),
        ("KPI", "left"),
        ("component", "left"),
        ("value", "right"),
        ("target", "right"),
        ("score", "right"),
        ("band", "left"),
        ("coverage", "right"),
        ("valid", "center"),
        ("devices", "right"),
        ("data quality", "left"),
    ):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        comp = str(r["component"] or "")
        if r["area_id"]:
            comp = f"{comp} @ {r['area_id']}"
        cov = r["coverage"]
        unit = str(r["unit"])
        t.add_row(
            str(r["kpi_code"]),
            names.get(str(r["kpi_code"]), ""),
            comp,
            fmt_value(r["value"], unit),  # type: ignore[arg-type]
            fmt_value(r["target"], unit) if r["target"] is not None else "",  # type: ignore[arg-type]
            f"{r['score']:.0f} %" if r["score"] is not None else "",
            str(r["band"] or ""),
            f"{cov * 100:.1f} %" if isinstance(cov, float) else "n/a",
            "[green]yes[/green]" if r["valid"] else "[red]no[/red]",
            str(r["n_devices"]),
            str(r["quality_label"] or ""),
        )
    return t


@kpi_app.command("show")
def kpi_show(
    city: CityOpt,
    period: Annotated[
        str | None, typer.Option(help="YYYY, YYYY-MM or YYYY-MM-DD (default: latest stored)")
    ] = None,
    kind: Annotated[str, typer.Option(help="year, month or day (when --period is not given)")] = "year",
    history: Annotated[
        bool, typer.Option("--history", help="every revision of each value: when and why it changed")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Print the stored KPI values of a city for a period (with --history, their revisions)."""
    from kpi_rollups.formulas import checked_catalog
    from kpi_rollups.periods import parse_period

    settings = _settings(config)
    order = {code: i for i, code in enumerate(checked_catalog().codes)}

    async def main() -> None:
        import asyncpg

        conn = await asyncpg.connect(_dsn(settings))
        try:
            pkind: str
            if period:
                try:
                    pkind, start = parse_period(period)
                except ValueError as e:
                    err.print(f"[red]{e}[/red]")
                    raise typer.Exit(2) from None
            else:
                pkind = kind
                start = await conn.fetchval(
                    "SELECT max(period_start) FROM kpi_values WHERE city_id = $1 AND period_kind = $2",
                    city,
                    kind,
                )
            rows = await conn.fetch(
                "SELECT * FROM kpi_values WHERE city_id = $1 AND period_kind = $2 AND period_start = $3",
                city,
                pkind,
                start,
            )
            revisions = await conn.fetch(
                """SELECT * FROM kpi_value_revisions
                   WHERE city_id = $1 AND period_kind = $2 AND period_start = $3
                   ORDER BY kpi_code, component, area_id, revision""",
                city,
                pkind,
                start,
            )
        finally:
            await conn.close()
        if not rows:
            err.print(
                f"no KPI values stored for {city} ({pkind} {start or 'any'}); "
                f"run: citykpi kpi refresh --city {city}"
            )
            raise typer.Exit(1)
        data = sorted(
            (dict(r) for r in rows),
            key=lambda r: (order.get(r["kpi_code"], 99), r["component"], r["area_id"]),
        )
        label = (
            start.isoformat() if pkind == "day" else f"{start:%Y-%m}" if pkind == "month" else f"{start:%Y}"
        )
        out.print(_table(city, pkind, label, data))
        newest = max(r["computed_at"] for r in data)
        out.print(f"computed at {newest.isoformat(timespec='seconds')}")
        if history:
            out.print(_history_table(city, pkind, label, [dict(r) for r in revisions]))

    asyncio.run(main())


@kpi_app.command("export")
def kpi_export(
    city: CityOpt,
    period: Annotated[str, typer.Option(help="YYYY, YYYY-MM or YYYY-MM-DD: the stored period to export")],
    fmt: Annotated[str, typer.Option("--format", help="ngsi-ld")] = "ngsi-ld",
    key_values: Annotated[
        bool, typer.Option("--key-values", help="simplified key-values form (default: normalized)")
    ] = False,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="write the JSON array here (default: stdout)")
    ] = None,
    broker: Annotated[
        str | None, typer.Option("--broker", help="also upsert into this NGSI-LD context broker")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Write a city's KPI values as NGSI-LD KeyPerformanceIndicator entities (FIWARE Smart Data
    Models); with --broker (or ngsi_ld.broker_url), upsert them into a context broker."""
    import httpx

    from kpi_rollups.formulas import checked_catalog
    from kpi_rollups.ngsi_ld import BrokerError, kpi_entities, upsert
    from kpi_rollups.periods import parse_period

    if fmt != "ngsi-ld":
        err.print(f"[red]--format must be ngsi-ld, not {fmt!r}[/red]")
        raise typer.Exit(2)
    settings = _settings(config)
    try:
        kind, start = parse_period(period)
    except ValueError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None

    async def main() -> list[dict[str, Any]]:
        import asyncpg

        conn = await asyncpg.connect(_dsn(settings))
        try:
            return await kpi_entities(conn, city, kind, start, checked_catalog(), key_values=key_values)
        finally:
            await conn.close()

    try:
        entities = asyncio.run(main())
    except LookupError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    if not entities:
        err.print(f"no KPI values stored for {city} {period}; run: citykpi kpi refresh --city {city}")
        raise typer.Exit(1)
    text = json.dumps(entities, ensure_ascii=False, indent=2) + "\n"
    if out_file is None:
        sys.stdout.write(text)
    else:
        out_file.write_text(text, encoding="utf-8")
        err.print(f"wrote {len(entities)} entities to {out_file}")
    if url := broker or settings.ngsi_ld.broker_url:
        try:
            n = asyncio.run(upsert(entities, settings.ngsi_ld, broker))
        except (BrokerError, httpx.HTTPError) as e:
            # httpx's own messages quote the URL, and its user info may hold a password
            reason = (
                f"HTTP {e.response.status_code}"
                if isinstance(e, httpx.HTTPStatusError)
                else str(e)
                if isinstance(e, BrokerError)
                else type(e).__name__
            )
            err.print(f"NGSI-LD upsert failed: {reason}", style="red", markup=False, highlight=False)
            raise typer.Exit(1) from None
        err.print(f"upserted {n} entities into {mask_url(url)}", markup=False, highlight=False)


def report(
    city: CityOpt,
    year: Annotated[int, typer.Option(help="reporting year")],
    out_dir: Annotated[Path, typer.Option("--out", help="directory for the HTML and Markdown files")] = Path(
        "reports"
    ),
    refresh: Annotated[bool, typer.Option(help="recompute the year and its months first")] = True,
    config: ConfigOpt = None,
) -> None:
    """Write the U4SSC city profile (self-contained HTML and Markdown) for a year."""
    from kpi_rollups.refresh import UnknownCityError
    from kpi_rollups.report import write_report

    settings = _settings(config)
    try:
        html, md = asyncio.run(write_report(_dsn(settings), city, year, out_dir, refresh=refresh))
    except UnknownCityError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    out.print(f"wrote {html} and {md}")
