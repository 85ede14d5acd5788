"""The `citykpi` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from core.config import ConfigError, Settings, load_settings, masked_dump, value_origins
from core.logs import setup_logging
from ingest.alerts_cli import alerts_app
from kpi_rollups.cli import kpi_app, registry_app, report

if TYPE_CHECKING:
    from ingest.deadletters import DeadLetterFilter
    from ingest.publishers import MqttPublisher
    from ingest.simulator import CitySimulator, SimMessage

app = typer.Typer(
    help="citykpi: smart-city telemetry to TimescaleDB KPI series and U4SSC indicators.", no_args_is_help=True
)
config_app = typer.Typer(help="Configuration.", no_args_is_help=True)
dl_app = typer.Typer(help="Dead letters: list, show and requeue rejected messages.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(dl_app, name="deadletters")
app.add_typer(registry_app, name="registry")
app.add_typer(kpi_app, name="kpi")
app.add_typer(alerts_app, name="alerts")
app.command("report")(report)
roles_app = typer.Typer(
    help="Database logins: the service's (ingest, KPI) and readers of one city or all.", no_args_is_help=True
)
app.add_typer(roles_app, name="roles")
console = Console(stderr=True)
log = logging.getLogger("citykpi")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML configuration file")]
LogOpt = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR")]


def _settings(config: Path | None, log_level: str | None = None) -> Settings:
    try:
        settings = load_settings(config)
    except ConfigError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    setup_logging(log_level or settings.log_level, console=console)
    return settings


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective configuration, secrets masked (JSON on stdout), and on stderr where each
    value that is not a default came from."""
    print(json.dumps(masked_dump(_settings(config, "WARNING")), indent=2, default=str))
    origins = value_origins(config)
    console.print("values not at their default, and where they came from:" if origins else "all defaults")
    for key, origin in origins.items():
        console.print(f"  {key}: {origin}", markup=False, highlight=False)


@app.command()
def migrate(config: ConfigOpt = None, log_level: LogOpt = "INFO") -> None:
    """Apply the schema migrations (idempotent, safe to run concurrently)."""
    from ingest.database import prepare_database

    settings = _settings(config, log_level)
    asyncio.run(prepare_database(settings))


async def _until_signal(main: asyncio.Future[Any] | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(stop.wait())]
    if main is not None:
        waiters.append(main)
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)


async def _simulate(settings: Settings, duration_s: float | None, backfill_h: float = 0.0) -> None:
    from ingest.publishers import KafkaPublisher, MqttPublisher
    from ingest.simulator import CitySimulator

    sim_settings = settings.simulator
    sim = CitySimulator(sim_settings)
    publisher: MqttPublisher | KafkaPublisher
    answering: asyncio.Task[None] | None = None
    if sim_settings.transport == "mqtt":
        publisher = MqttPublisher(settings.mqtt, client_id=f"citykpi-sim-{sim_settings.city}")
        if sim.command_topic is not None:
            answering = asyncio.create_task(
                _answer_commands(sim, publisher, publisher.subscribe(sim.command_topic))
            )
    else:
        publisher = KafkaPublisher(settings.kafka, {t.format: t.filter for t in settings.kafka.topics})
    await publisher.start()
    step = timedelta(seconds=sim_settings.interval_s)
    t = datetime.now(UTC) - timedelta(hours=backfill_h)
    t = t.replace(microsecond=0)
    started = time.monotonic()
    try:
        while duration_s is None or time.monotonic() - started < duration_s:
            now = datetime.now(UTC)
            if t <= now:
                await publisher.publish(sim.tick(t))
                t += step
                if t < now - step:  # catching up on a backfill: yield, but don't sleep
                    await asyncio.sleep(0)
                    continue
            await asyncio.sleep(
                max(
                    0.0,
                    min(
                        sim_settings.interval_s / sim_settings.speedup,
                        (t - datetime.now(UTC)).total_seconds(),
                    ),
                )
            )
    finally:
        if answering is not None:
            answering.cancel()
            await asyncio.gather(answering, return_exceptions=True)
        await publisher.stop()
        log.info(
            "simulator published %d messages; faults injected: %s; rebirth requests answered: %d",
            publisher.published,
            sim.faults,
            sim.rebirths,
        )


async def _answer_commands(
    sim: CitySimulator, publisher: MqttPublisher, commands: asyncio.Queue[SimMessage]
) -> None:
    """The simulated Sparkplug B edge nodes answer their host's commands as they arrive."""
    while True:
        command = await commands.get()
        if (answer := sim.answer_command(command)) is not None:
            await publisher.publish([answer])


@app.command()
def simulate(
    config: ConfigOpt = None,
    transport: Annotated[str | None, typer.Option(help="mqtt or kafka")] = None,
    duration: Annotated[float | None, typer.Option(help="seconds to run (default: until Ctrl-C)")] = None,
    backfill_hours: Annotated[float, typer.Option(help="publish this many past hours first")] = 0.0,
    log_level: LogOpt = "INFO",
) -> None:
    """Publish realistic city telemetry (with faults) to MQTT or Kafka."""
    settings = _settings(config, log_level)
    if transport:
        settings.simulator.transport = transport  # type: ignore[assignment]

    async def main() -> None:
        task = asyncio.ensure_future(_simulate(settings, duration, backfill_hours))
        await _until_signal(task)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def _progress_table(service: object, started: float, latest: list[tuple[str, str, float, str]]) -> Table:
    from ingest.service import Service

    assert isinstance(service, Service)
    s = service.pipeline.stats
    elapsed = max(1e-9, time.monotonic() - started)
    t = Table(title="citykpi — live", show_header=True)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("messages received", f"{s.messages:,}")
    t.add_row("readings stored", f"{s.stored:,}")
    t.add_row("readings/s (avg)", f"{s.stored / elapsed:,.0f}")
    t.add_row("duplicates ignored", f"{s.duplicates:,}")
    t.add_row("dead letters", f"{s.dead_letters:,}")
    t.add_row("write batches", f"{s.batches:,}")
    t.add_row(
        "sources",
        ", ".join(f"{x.name}{'' if getattr(x, 'connected', False) else ' (down)'}" for x in service.sources),
    )
    for name, unit, value, when in latest:
        t.add_row(name, f"{value:,.2f} {unit}  [dim]{when}[/dim]")
    return t


@app.command()
def run(
    config: ConfigOpt = None,
    with_simulator: Annotated[
        bool, typer.Option("--with-simulator", help="also run the city simulator")
    ] = False,
    progress: Annotated[bool, typer.Option(help="live progress table on the terminal")] = True,
    log_level: LogOpt = "INFO",
) -> None:
    """Run the ingestion service until SIGTERM/Ctrl-C, then drain cleanly; exit 1 if it failed."""
    from ingest.service import Service
    from kpi_rollups.live import latest_summary

    settings = _settings(config, log_level)

    async def main() -> bool:
        service = Service(settings)
        await service.start()
        failed = asyncio.ensure_future(service.supervisor.failed.wait())
        tasks = []
        if with_simulator:
            tasks.append(asyncio.ensure_future(_simulate(settings, None, backfill_h=0.0)))
        started = time.monotonic()
        if progress and sys.stderr.isatty():
            latest: list[tuple[str, str, float, str]] = []
            with Live(
                _progress_table(service, started, latest), console=console, refresh_per_second=2
            ) as live:
                waiter = asyncio.ensure_future(_until_signal(failed))
                while not waiter.done():
                    await asyncio.wait([waiter], timeout=2)
                    try:
                        latest = await latest_summary(settings)
                    except Exception as e:  # the table is a convenience; never stop the service for it
                        log.debug("latest values unavailable: %s", e)
                    live.update(_progress_table(service, started, latest))
        else:
            await _until_signal(failed)
        failed.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await service.stop()
        return service.failure is not None

    if asyncio.run(main()):
        raise typer.Exit(1)


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="archive file to backfill")],
    config: ConfigOpt = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="sensor-community-csv, openaq-csv or jsonl:<decoder>; guessed for CSV"),
    ] = None,
    city: Annotated[
        str | None, typer.Option(help="city of the readings (default: the first configured)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="device id for payloads that carry none")] = None,
    log_level: LogOpt = "WARNING",
) -> None:
    """Backfill an archive file with the same validation and idempotency as the live path."""
    from rich.progress import Progress

    from ingest.replay import replay_file

    settings = _settings(config, log_level)
    with Progress(console=console) as bar:
        task = bar.add_task(f"replaying {file.name}", total=None)
        try:
            result = asyncio.run(
                replay_file(
                    settings,
                    file,
                    fmt,
                    city or settings.cities[0].city_id,
                    device,
                    lambda n: bar.advance(task, n),
                )
            )
        except ValueError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(2) from None
    Console().print(
        f"{file.name}: {result.readings:,} readings, {result.stored:,} stored, "
        f"{result.duplicates:,} already stored, {result.dead_letters:,} dead letters"
    )


ReasonOpt = Annotated[list[str] | None, typer.Option("--reason", help="only this reason (repeatable)")]
CityOpt = Annotated[str | None, typer.Option("--city", help="only this city")]
TopicOpt = Annotated[str | None, typer.Option("--topic", help="only topics matching this MQTT filter (+, #)")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="received at or after (ISO 8601; naive = UTC)")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="received before (ISO 8601; naive = UTC)")]
IdsOpt = Annotated[list[int] | None, typer.Option("--id", help="only these ids (repeatable)")]


def _instant(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        console.print(f"[red]{option}: {text!r} is not an ISO 8601 time[/red]")
        raise typer.Exit(2) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _dead_letter_filter(
    reason: list[str] | None,
    city: str | None,
    topic: str | None,
    since: str | None,
    until: str | None,
    ids: list[int] | None,
) -> DeadLetterFilter:
    from ingest.deadletters import DeadLetterFilter

    return DeadLetterFilter(
        tuple(reason or ()),
        city,
        topic,
        _instant(since, "--since"),
        _instant(until, "--until"),
        tuple(ids or ()),
    )


def _fit(text: str | None, width: int) -> str:
    """Cut from the left: the end of a topic (the device) says most."""
    text = text or ""
    return text if len(text) <= width else "…" + text[-(width - 1) :]


@dl_app.command("list")
def deadletters_list(
    config: ConfigOpt = None,
    reason: ReasonOpt = None,
    city: CityOpt = None,
    topic: TopicOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    ids: IdsOpt = None,
    limit: Annotated[int, typer.Option(help="rows to show")] = 20,
) -> None:
    """Counts by reason, then the newest dead letters (80 columns; `show ID` for everything)."""
    from ingest.deadletters import list_dead_letters

    settings = _settings(config, "WARNING")
    where = _dead_letter_filter(reason, city, topic, since, until, ids)
    counts, rows = asyncio.run(list_dead_letters(settings, where, limit))
    out = Console(width=80)
    t = Table(box=box.SIMPLE)
    t.add_column("reason (waiting)")
    t.add_column("count", justify="right")
    for r, n in counts:
        t.add_row(r, f"{n:,}")
    out.print(t)
    t = Table(title=f"newest {len(rows)}; `deadletters show ID` for detail and payload", box=box.SIMPLE)
    for col, width in (("id", 7), ("received (UTC)", 14), ("city", 8), ("reason", 17), ("topic", 22)):
        t.add_column(col, no_wrap=True, max_width=width, overflow="ellipsis")
    for r in rows:
        t.add_row(
            str(r["id"]),
            r["received_at"].astimezone(UTC).strftime("%m-%d %H:%M:%S"),
            _fit(r["city_id"], 8),
            _fit(r["reason"], 17),
            _fit(r["topic"], 22),
        )
    out.print(t)


@dl_app.command("show")
def deadletters_show(
    dead_letter_id: Annotated[int, typer.Argument(metavar="ID", help="dead letter id (from `list`)")],
    config: ConfigOpt = None,
) -> None:
    """Everything about one dead letter, and its message's payload."""
    from ingest.deadletters import show_dead_letter

    settings = _settings(config, "WARNING")
    view = asyncio.run(show_dead_letter(settings, dead_letter_id))
    if view is None:
        console.print(f"[red]no dead letter {dead_letter_id}[/red]")
        raise typer.Exit(1)
    r = view.row
    for name in ("id", "received_at", "source", "topic", "partition", "offset", "city_id", "device_id"):
        if r[name] is not None:
            print(f"{name}: {r[name]}")
    print(f"reason: {r['reason']}\ndetail: {r['detail']}")
    if r["headers"]:
        print(f"headers: {r['headers']}")
    print(f"message: {r['message_id'] or '-'} ({view.siblings} other dead letters of the same message)")
    if r["requeued_at"] is not None:
        print(f"requeued_at: {r['requeued_at']}")
    if view.payload is None:
        print(f"payload: not kept ({r['payload_size']} bytes)")
        return
    cut = f", cut: kept {len(view.payload)} of {r['payload_size']} bytes" if view.cut else ""
    print(f"payload ({r['payload_size']} bytes{cut}):")
    sys.stdout.flush()
    try:
        print(view.payload.decode("utf-8"))
    except UnicodeDecodeError:
        print(view.payload.hex(" ", 16))


@dl_app.command("requeue")
def deadletters_requeue(
    config: ConfigOpt = None,
    reason: ReasonOpt = None,
    city: CityOpt = None,
    topic: TopicOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    ids: IdsOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="every waiting dead letter (no filter)")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="say what would be requeued; change nothing")
    ] = False,
) -> None:
    """Decode the messages behind dead letters again, after fixing a route, city or registry.

    Each message keeps its original receive time: what is already stored is not stored again.
    """
    from ingest.deadletters import requeue_dead_letters

    settings = _settings(config, "WARNING")
    where = _dead_letter_filter(reason, city, topic, since, until, ids)
    if where.is_empty() and not all_:
        console.print(
            "[red]name what to requeue (--reason, --city, --topic, --since, --until, --id) or --all[/red]"
        )
        raise typer.Exit(2)
    result = asyncio.run(requeue_dead_letters(settings, where, dry_run))
    skipped = ", ".join(f"{n} {why}" for why, n in result.skipped.items()) or "none"
    reasons = ", ".join(f"{why} {n}" for why, n in result.reasons.most_common()) or "-"
    if dry_run:
        print(
            f"would requeue {result.messages} messages ({result.dead_letters} dead letters: {reasons}); "
            f"skipped: {skipped}"
        )
        return
    print(
        f"requeued {result.messages} messages ({result.dead_letters} dead letters: {reasons}): "
        f"{result.stored} readings stored, {result.already_stored} already stored, "
        f"{result.still_rejected} rejected again; skipped: {skipped}"
    )


async def _run_access_function(settings: Settings, call: str, *args: str | None) -> list[str]:
    """Call one of the owner's access functions (schemas/sql/0008) and return its report lines."""
    import asyncpg

    conn = await asyncpg.connect(settings.database.url.get_secret_value())
    try:
        return [r[0] for r in await conn.fetch(call, *args)]
    finally:
        await conn.close()


PasswordFileOpt = Annotated[
    Path | None, typer.Option(help="file holding the role's password (a new role needs one)", exists=True)
]


def _report_access_change(settings: Settings, call: str, role: str, *args: str | None) -> None:
    import asyncpg

    try:
        lines = asyncio.run(_run_access_function(settings, call, role, *args))
    except asyncpg.PostgresError as e:
        console.print(f"[red]could not change {role}: {e}[/red]")
        raise typer.Exit(1) from None
    out = Console()
    for line in lines:
        out.print(f"{role}: {line}")


@roles_app.command("grant-reader")
def roles_grant_reader(
    role: Annotated[str, typer.Argument(help="login role to create or extend")],
    city: Annotated[str | None, typer.Option(help="the city this role may read")] = None,
    all_cities: Annotated[bool, typer.Option("--all-cities", help="read every city (platform)")] = False,
    password_file: PasswordFileOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create or extend a login that reads one city (or every city) through the reader functions;
    prints each change and what else the role still holds."""
    if (city is None) != all_cities:
        console.print("[red]give exactly one of --city CITY and --all-cities[/red]")
        raise typer.Exit(2)
    settings = _settings(config, "WARNING")
    password = password_file.read_text().strip() if password_file else None
    _report_access_change(settings, "SELECT citykpi_grant_reader($1, $2, $3)", role, city, password)


@roles_app.command("grant-service")
def roles_grant_service(
    role: Annotated[str, typer.Argument(help="login role to create or extend")],
    service: Annotated[str, typer.Option(help="ingest (citykpi run) or kpi (the KPI refresh)")],
    password_file: PasswordFileOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create or extend the service's login for ingestion or the KPI refresh (run as the owner);
    prints each change and what else the role still holds."""
    settings = _settings(config, "WARNING")
    password = password_file.read_text().strip() if password_file else None
    _report_access_change(settings, "SELECT citykpi_grant_service($1, $2, $3)", role, service, password)


@roles_app.command("revoke-reader")
def roles_revoke_reader(
    role: Annotated[str, typer.Argument(help="reader login role")],
    city: Annotated[str | None, typer.Option(help="take back only this city (default: everything)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Take a city (default: every grant) back from a reader login; prints what changed."""
    settings = _settings(config, "WARNING")
    _report_access_change(settings, "SELECT citykpi_revoke_reader($1, $2)", role, city)
