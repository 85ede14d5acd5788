"""`citykpi alerts`: import the rules, evaluate them once, list a city's alert events."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.config import ConfigError, Settings, load_settings

alerts_app = typer.Typer(help="Threshold alerts: rules as data, their events.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML configuration file")]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None


@alerts_app.command("import")
def alerts_import(
    file: Annotated[Path, typer.Argument(help="rules file (.toml)", show_default=False)],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate and roll back")] = False,
    config: ConfigOpt = None,
) -> None:
    """Validate and import alert rules (idempotent; a file with an error changes nothing)."""
    from processors.alert_rules import AlertRulesError, import_rules

    dsn = _settings(config).database.url.get_secret_value()
    try:
        n, changed = asyncio.run(import_rules(dsn, file, dry_run=dry_run))
    except AlertRulesError as e:
        err.print(f"[red]{file}: {len(e.errors)} error(s), nothing imported:[/red]")
        for line in e.errors:
            err.print(f"  {line}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    verb = "validated (dry run, nothing written)" if dry_run else "imported"
    out.print(f"{verb}: {n} rules, {changed} new or changed")


@alerts_app.command("evaluate")
def alerts_evaluate(config: ConfigOpt = None) -> None:
    """Evaluate every rule once now (the service does this every alerts.interval_s)."""
    import asyncpg

    from processors.alerts import evaluate_alerts

    settings = _settings(config)

    async def main() -> int:
        conn = await asyncpg.connect(settings.database.url.get_secret_value())
        try:
            return await evaluate_alerts(conn, settings)
        finally:
            await conn.close()

    out.print(f"{asyncio.run(main())} new alert events")


@alerts_app.command("list")
def alerts_list(
    city: Annotated[str, typer.Option("--city", help="city_id")],
    limit: Annotated[int, typer.Option("--limit", help="latest N events")] = 50,
    config: ConfigOpt = None,
) -> None:
    """A city's latest alert events."""
    import asyncpg

    settings = _settings(config)

    async def main() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(settings.database.url.get_secret_value())
        try:
            return await conn.fetch(
                "SELECT at, event, severity, rule_id, device_id, metric, statistic, value, threshold "
                "FROM alerts WHERE city_id = $1 ORDER BY at DESC, event LIMIT $2",
                city,
                limit,
            )
        finally:
            await conn.close()

    t = Table(title=f"{city}: latest alert events")
    for col in (
        "at (UTC)",
        "event",
        "severity",
        "rule",
        "device",
        "metric",
        "statistic",
        "value",
        "threshold",
    ):
        t.add_column(col)
    for r in asyncio.run(main()):
        t.add_row(
            r["at"].strftime("%Y-%m-%d %H:%M:%S"),
            r["event"],
            r["severity"],
            r["rule_id"],
            r["device_id"],
            r["metric"],
            r["statistic"],
            f"{r['value']:.4g}" if r["value"] is not None else "",
            f"{r['threshold']:g}",
        )
    out.print(t)
