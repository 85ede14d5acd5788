"""Compute a city's KPIs for a period and upsert them into kpi_values; the periodic refresh loop.

`refresh_kpis` is idempotent: the rows of a (city, period) are replaced in one transaction (an
advisory lock serialises concurrent refreshes of the same city and period), rows no longer
produced (e.g. an area removed from the registry) are deleted, and `computed_at` is updated. A
formula that fails is logged and skipped; its previous rows stay.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

import asyncpg

from kpi_rollups.catalog import KpiDefinition
from kpi_rollups.city_rollups import CityData
from kpi_rollups.eu_aqi import EuAqiHours, store_eu_aqi_hours
from kpi_rollups.formulas import FORMULAS, FormulaContext, checked_catalog
from kpi_rollups.periods import Period, PeriodKind, period_start
from kpi_rollups.registry import load_snapshot
from kpi_rollups.values import (
    LABEL_ACCURATE,
    LABEL_IN_PROGRESS,
    LABEL_NOT_COMPUTABLE,
    LABEL_PARTIAL,
    LABEL_REGISTRY,
    KpiOptions,
    KpiResult,
    KpiValue,
    band_label,
    clean_json,
    score,
)

if TYPE_CHECKING:
    from core.config import Settings

log = logging.getLogger(__name__)


class UnknownCityError(LookupError):
    pass


class KpiRefreshError(RuntimeError):
    """Raised by refresh_kpis(strict=True) when a formula failed; the other KPIs were still stored."""


@asynccontextmanager
async def _connection(
    conn_or_dsn: asyncpg.Connection | asyncpg.Pool | str,
) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(conn_or_dsn, str):
        conn = await asyncpg.connect(conn_or_dsn, timeout=10)
        try:
            yield conn
        finally:
            await conn.close()
    elif isinstance(conn_or_dsn, asyncpg.Pool):
        async with conn_or_dsn.acquire() as conn:
            yield conn
    else:
        yield conn_or_dsn


def _finish(
    kpi: KpiDefinition,
    r: KpiResult,
    city_id: str,
    period: Period,
    now: datetime,
    threshold: float,
    targets: dict[tuple[str, str], tuple[float, tuple[float, float, float] | None]],
    computed_at: datetime,
) -> KpiValue:
    comp = kpi.component(r.component)
    direction = comp.direction or kpi.direction
    target, edges = None, kpi.band_edges
    if comp.scored:
        city_target = targets.get((kpi.code, r.component))
        if city_target is not None:
            target, edges = city_target[0], city_target[1] or kpi.band_edges
        else:
            target = comp.target
    value = r.value if r.not_computable is None else None
    details = dict(r.details)
    if r.not_computable is not None:
        details["not_computable"] = r.not_computable
        valid, label = False, LABEL_NOT_COMPUTABLE
    elif r.basis == "registry":
        valid, label = True, LABEL_REGISTRY
    else:
        cov = r.coverage or 0.0
        valid = cov >= threshold
        if valid:
            label = LABEL_ACCURATE
        elif not period.complete(now):
            label = LABEL_IN_PROGRESS
        else:
            label = LABEL_PARTIAL
        details["validity_rule"] = f"coverage of the {period.kind} >= {threshold:g}"
    if r.valid is False:
        valid = False
    if r.label_note and r.not_computable is None:
        label = f"{label}; {r.label_note}"
    sc = score(value, target, direction)
    details["direction"] = f"{direction} is better"
    return KpiValue(
        city_id=city_id,
        kpi_code=kpi.code,
        component=r.component,
        area_id=r.area_id,
        period_kind=period.kind,
        period_start=period.start,
        value=value,
        unit=comp.unit,
        n_readings=r.n_readings,
        n_devices=r.n_devices,
        coverage=None if r.coverage is None else min(1.0, max(0.0, r.coverage)),
        valid=valid,
        quality_label=label,
        target=target,
        score=sc,
        band=band_label(sc, edges),
        details=clean_json(details),
        computed_at=computed_at,
    )


_CHANGED = (
    "(kpi_values.value, kpi_values.valid, kpi_values.quality_label) "
    "IS DISTINCT FROM (EXCLUDED.value, EXCLUDED.valid, EXCLUDED.quality_label)"
)
_UPSERT = f"""
INSERT INTO kpi_values (city_id, kpi_code, component, area_id, period_kind, period_start, value, unit,
                        n_readings, n_devices, coverage, valid, quality_label, target, score, band, details,
                        computed_at, trigger)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17::jsonb, $18, $19)
ON CONFLICT (city_id, kpi_code, component, area_id, period_kind, period_start) DO UPDATE SET
    value = EXCLUDED.value, unit = EXCLUDED.unit, n_readings = EXCLUDED.n_readings,
    n_devices = EXCLUDED.n_devices, coverage = EXCLUDED.coverage, valid = EXCLUDED.valid,
    quality_label = EXCLUDED.quality_label, target = EXCLUDED.target, score = EXCLUDED.score,
    band = EXCLUDED.band, details = EXCLUDED.details, computed_at = EXCLUDED.computed_at,
    revision = kpi_values.revision + CASE WHEN {_CHANGED} THEN 1 ELSE 0 END,
    trigger = CASE WHEN {_CHANGED} THEN EXCLUDED.trigger ELSE kpi_values.trigger END
"""
# every (row, revision) once: a changed value or a new row adds one, an unchanged refresh nothing
_LOG_REVISIONS = """
INSERT INTO kpi_value_revisions (city_id, kpi_code, component, area_id, period_kind, period_start,
                                 revision, value, valid, quality_label, coverage, n_readings, computed_at,
                                 trigger)
SELECT city_id, kpi_code, component, area_id, period_kind, period_start, revision, value, valid,
       quality_label, coverage, n_readings, computed_at, trigger
FROM kpi_values
WHERE city_id = $1 AND period_kind = $2 AND period_start = $3 AND kpi_code = ANY($4::text[])
ON CONFLICT DO NOTHING
"""
_DELETE_STALE = """
DELETE FROM kpi_values k
WHERE k.city_id = $1 AND k.period_kind = $2 AND k.period_start = $3 AND k.kpi_code = ANY($4::text[])
  AND (k.kpi_code, k.component, k.area_id) NOT IN (
      SELECT * FROM unnest($5::text[], $6::text[], $7::text[]))
"""


async def store_values(
    conn: asyncpg.Connection,
    city_id: str,
    period: Period,
    codes: Iterable[str],
    values: list[KpiValue],
    trigger: str = "refresh",
    eu_aqi: EuAqiHours | None = None,
) -> None:
    """Replace the rows of `codes` for (city, period) with `values`, in one transaction; a row whose
    value, validity or label changed gets the next revision, logged with `trigger`. With them, the
    station-hour European AQI the air formula computed (`eu_aqi`)."""
    codes = list(codes)
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))", f"kpi:{city_id}:{period.kind}:{period.start}"
        )
        await conn.execute(
            _DELETE_STALE,
            city_id,
            period.kind,
            period.start,
            codes,
            [v.kpi_code for v in values],
            [v.component for v in values],
            [v.area_id for v in values],
        )
        rows = sorted(values, key=lambda v: (v.kpi_code, v.component, v.area_id))
        await conn.executemany(
            _UPSERT,
            [
                (
                    v.city_id,
                    v.kpi_code,
                    v.component,
                    v.area_id,
                    v.period_kind,
                    v.period_start,
                    v.value,
                    v.unit,
                    v.n_readings,
                    v.n_devices,
                    v.coverage,
                    v.valid,
                    v.quality_label,
                    v.target,
                    v.score,
                    v.band,
                    json.dumps(v.details),
                    v.computed_at,
                    trigger,
                )
                for v in rows
            ],
        )
        await conn.execute(_LOG_REVISIONS, city_id, period.kind, period.start, codes)
        if eu_aqi is not None:
            await store_eu_aqi_hours(conn, city_id, eu_aqi)


async def refresh_kpis(
    conn_or_dsn: asyncpg.Connection | asyncpg.Pool | str,
    city_id: str,
    period_kind: PeriodKind,
    period_start_day: date,
    *,
    codes: Iterable[str] | None = None,
    now: datetime | None = None,
    options: KpiOptions | None = None,
    strict: bool = False,
    trigger: str = "refresh",
) -> list[KpiValue]:
    """Compute every catalog KPI (or `codes`) of `city_id` for the period containing
    `period_start_day` (local dates in the city's time zone), store them and return them.

    `now` (default: the current time) decides how much of an ongoing period has elapsed.
    With `strict`, a failing formula raises KpiRefreshError after the others were stored.
    `trigger` says why (scheduled, late data, period ended, cli), kept with each new revision.
    """
    now = now or datetime.now(UTC)
    options = options or KpiOptions()
    catalog = checked_catalog()
    kpis = [catalog.get(c) for c in codes] if codes is not None else list(catalog.kpi)
    async with _connection(conn_or_dsn) as conn:
        tz = await conn.fetchval("SELECT timezone FROM cities WHERE city_id = $1", city_id)
        if tz is None:
            raise UnknownCityError(f"unknown city {city_id!r}")
        period = Period(period_kind, period_start(period_kind, period_start_day), tz)
        registry = await load_snapshot(conn, city_id, period.last_day)
        targets = {k: (t.target, t.band_edges) for k, t in registry.targets.items()}
        data = CityData(conn, city_id, period, now)
        computed_at = datetime.now(UTC)
        values: list[KpiValue] = []
        eu_aqi: EuAqiHours | None = None
        done: list[str] = []
        failed: list[str] = []
        for kpi in kpis:
            ctx = FormulaContext(kpi, data, registry, options)
            t0 = time.perf_counter()
            try:
                results = await FORMULAS[kpi.formula](ctx)
                values.extend(
                    _finish(kpi, r, city_id, period, now, ctx.threshold, targets, computed_at)
                    for r in results
                )
                eu_aqi = next((r.eu_aqi for r in results if r.eu_aqi is not None), eu_aqi)
                done.append(kpi.code)
            except Exception:
                log.exception(
                    "KPI %s for city %s, %s %s failed", kpi.code, city_id, period.kind, period.label
                )
                failed.append(kpi.code)
            log.debug("KPI %s %s %s: %.3f s", city_id, kpi.code, period.label, time.perf_counter() - t0)
        await store_values(conn, city_id, period, done, values, trigger, eu_aqi)
    if failed and strict:
        raise KpiRefreshError(f"KPIs failed for {city_id} {period.label}: {failed} (see the log)")
    return values


KINDS: tuple[PeriodKind, ...] = ("day", "month", "year")


def current_periods(tz: str, now: datetime) -> list[Period]:
    from zoneinfo import ZoneInfo

    today = now.astimezone(ZoneInfo(tz)).date()
    return [Period.containing(k, today, tz) for k in ("day", "month", "year")]


async def refresh_city_now(
    pool: asyncpg.Pool | str,
    city_id: str,
    tz: str,
    now: datetime,
    last_day: date | None = None,
    kinds: tuple[PeriodKind, ...] = KINDS,
    late_days: bool = True,
) -> date:
    """Refresh the current periods of `kinds` (day, month and year) of a city; after a local midnight
    also the periods that just ended (once), so they are stored complete; then, with `late_days`,
    the past periods late readings reached (`refresh_late_days`). Returns the current local day."""
    current = current_periods(tz, now)
    today = current[0].start
    periods = [(p, "scheduled") for p in current if p.kind in kinds]
    if last_day is not None and last_day != today:
        for k in KINDS:
            ended = Period.containing(k, last_day, tz)
            if ended.start != period_start(k, today):
                periods.append((ended, "period ended"))
    for p, trigger in periods:
        try:
            await refresh_kpis(pool, city_id, p.kind, p.start, now=now, trigger=trigger)
        except Exception:
            log.exception(
                "KPI refresh of %s for %s %s failed; will retry next round", city_id, p.kind, p.label
            )
    if late_days:
        await refresh_late_days(pool, city_id, tz, now, {(p.kind, p.start) for p, _ in periods})
    return today


async def refresh_late_days(
    pool: asyncpg.Pool | str, city_id: str, tz: str, now: datetime, done: set[tuple[str, date]]
) -> int:
    """Recompute each day the writer marked (kpi_pending_days: late readings), and its month and
    year, once each (skipping `done`, refreshed this round already), with trigger "late data";
    clear the marks served, unless a reading re-marked them meanwhile. Returns periods refreshed."""
    async with _connection(pool) as conn:
        marks = await conn.fetch("SELECT day, marked_at FROM kpi_pending_days WHERE city_id = $1", city_id)
    todo: dict[tuple[str, date], Period] = {}
    for m in marks:
        for k in KINDS:
            p = Period.containing(k, m["day"], tz)
            if (p.kind, p.start) not in done:
                todo.setdefault((p.kind, p.start), p)
    failed = False
    for p in todo.values():
        try:
            await refresh_kpis(pool, city_id, p.kind, p.start, now=now, trigger="late data")
        except Exception:
            failed = True
            log.exception("KPI refresh of %s for late data in %s %s failed", city_id, p.kind, p.label)
    if marks and not failed:
        async with _connection(pool) as conn:
            await conn.execute(
                """DELETE FROM kpi_pending_days k USING unnest($2::date[], $3::timestamptz[]) AS u(day, m)
                   WHERE k.city_id = $1 AND k.day = u.day AND k.marked_at <= u.m""",
                city_id,
                [m["day"] for m in marks],
                [m["marked_at"] for m in marks],
            )
    return len(todo)


async def kpi_refresh_loop(settings: Settings) -> None:
    """Refresh every configured city's KPIs on two schedules side by side: the current day every
    `settings.kpi_refresh_interval_s` (with the periods that ended at a local midnight and those late
    readings reached), the current month and year every `settings.kpi_refresh_month_year_s` (a
    year's refresh reads the year's rollups: minutes for a large city), each on connections of its
    own, so a slow month or year never holds up the day. Cities run concurrently (each a tenant);
    failures are logged and the rounds go on. Runs until cancelled."""
    await asyncio.gather(
        _refresh_rounds(settings, ("day",), settings.kpi_refresh_interval_s, ended_and_late=True),
        _refresh_rounds(
            settings,
            ("month", "year"),
            max(settings.kpi_refresh_month_year_s, settings.kpi_refresh_interval_s),
            ended_and_late=False,
        ),
    )


async def _refresh_rounds(
    settings: Settings, kinds: tuple[PeriodKind, ...], interval: float, *, ended_and_late: bool
) -> None:
    """One schedule of `kpi_refresh_loop`: a round of `kinds` for every city every `interval` s (the
    next starts when the last has ended if it took longer); with `ended_and_late`, also the periods
    that ended at a local midnight and the days late readings reached."""
    dsn = settings.database.kpi_dsn()
    last_day: dict[str, date] = {}
    pool: asyncpg.Pool | None = None
    try:
        while True:
            started = time.monotonic()
            try:
                if pool is None:
                    pool = await asyncpg.create_pool(
                        dsn,
                        min_size=1,
                        max_size=max(1, min(4, len(settings.cities))),
                        timeout=settings.database.connect_timeout_s,
                    )
                now = datetime.now(UTC)
                days = await asyncio.gather(
                    *(
                        refresh_city_now(
                            pool,
                            c.city_id,
                            c.timezone,
                            now,
                            last_day.get(c.city_id) if ended_and_late else None,
                            kinds,
                            late_days=ended_and_late,
                        )
                        for c in settings.cities
                    ),
                    return_exceptions=True,
                )
                for c, d in zip(settings.cities, days, strict=True):
                    if isinstance(d, date):
                        last_day[c.city_id] = d
                    else:
                        log.error("KPI refresh of city %s failed: %s", c.city_id, d)
                log.info(
                    "KPIs refreshed (%s) for %d cities in %.2f s",
                    ", ".join(kinds),
                    len(settings.cities),
                    time.monotonic() - started,
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error(
                    "KPI refresh round (%s) failed: %s; retrying in %.0f s", ", ".join(kinds), e, interval
                )
                if pool is not None:
                    pool.terminate()
                    pool = None
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    finally:
        if pool is not None:
            await pool.close()


async def kpi_refresh_process(settings: Settings) -> None:
    """Run `kpi_refresh_loop` in a process of its own (spawned: its own interpreter, event loop and
    GIL), so a refresh's queries and Python work never hold up ingestion (bench/refresh.py measures
    the ingest latency while it runs). Raises when the process exits (the supervisor restarts it);
    stops it when cancelled."""
    proc = multiprocessing.get_context("spawn").Process(
        target=_run_refresh_process, args=(settings, os.getpid()), name="citykpi-kpi-refresh", daemon=True
    )
    proc.start()
    try:
        while proc.is_alive():
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the KPI refresh process exited with code {proc.exitcode}")
    finally:
        if proc.is_alive():
            proc.terminate()
            await asyncio.to_thread(proc.join, 10)
        if proc.is_alive():
            proc.kill()
            await asyncio.to_thread(proc.join)


def _run_refresh_process(settings: Settings, parent_pid: int) -> None:
    from core.logs import setup_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the service stops us
    setup_logging(settings.log_level)

    async def main() -> None:
        loop = asyncio.create_task(kpi_refresh_loop(settings))
        while os.getppid() == parent_pid and not loop.done():  # no orphan if the service is killed
            await asyncio.sleep(1.0)
        if loop.done():
            loop.result()  # its error ends the process with a traceback; the service restarts it
        loop.cancel()

    asyncio.run(main())
