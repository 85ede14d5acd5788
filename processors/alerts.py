"""Threshold alerts: a supervised job evaluates the rules (processors/alert_rules.py) over what was
stored since its last run, and stores opened / updated / closed events in `alerts`.

A job, not the write transaction: three of the five statistics cannot be decided from one batch
(a rolling mean needs its whole window, no_data is the absence of rows, the stuck flag is set later
by the quality job), and keeping alerts out of the writer means a slow rule or a failing webhook can
never hold up ingestion. Each rule keeps a cursor: a run evaluates the data time (cursor, now -
settle_s], in one transaction with the events it raises, the alerts it leaves open and the cursor.

Idempotent: an alert's id is a UUID derived from its rule, series and opening time, and an event
is keyed by (alert id, event, data time); the kernels carry their state across runs (open, peak),
so evaluating the same data again, in any pieces, derives the same events, and storing them again
adds nothing. Alerts are for live data: a reading whose time is already behind its rule's cursor
when it arrives (more than settle_s late, or from a replayed archive) is stored but not evaluated.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from core import telemetry
from core.config import Settings
from processors.jobs import every
from processors.kernels import FLAG_STUCK
from processors.kernels.alerts import (
    ALERT_CLOSED,
    ALERT_OPENED,
    ALERT_UPDATED,
    rolling_bucket_means,
    silences,
    threshold_events,
)

log = logging.getLogger(__name__)

ALERT_NAMESPACE = uuid.UUID("6f0c1c7e-4d0e-5b8a-9a43-1a7e2c0f5d11")
EVENT_NAMES = {ALERT_OPENED: "opened", ALERT_UPDATED: "updated", ALERT_CLOSED: "closed"}
MINUTE_US = 60_000_000
ROLLUP_WIDTHS_US = (("rollup_1h", 60 * MINUTE_US), ("rollup_15m", 15 * MINUTE_US), ("rollup_1m", MINUTE_US))
Notify = Callable[[list[dict[str, Any]]], Awaitable[None]]

EPOCH_US = "(extract(epoch FROM {0}) * 1000000)::bigint"
SELECTED_DEVICES = """
SELECT device_key, city_id, device_id, area_id FROM devices
WHERE ($1::text IS NULL OR city_id = $1) AND ($2::text IS NULL OR area_id = $2)
  AND ($3::text IS NULL OR device_id = $3) AND ($4::text IS NULL OR kind = $4)
"""
READINGS_SINCE = f"""
SELECT device_key, {EPOCH_US.format("time")}, value, flags FROM readings
WHERE device_key = ANY($1::int[]) AND metric_id = $2 AND time > $3 AND time <= $4
"""
BUCKETS_SINCE = """
SELECT device_key, {epoch}, n, sum, energy FROM {table}
WHERE device_key = ANY($1::int[]) AND metric_id = $2 AND bucket >= $3
  AND bucket + $5 * interval '1 microsecond' <= $4
"""
LAST_READING_BEFORE = f"""
SELECT k.device_key, {EPOCH_US.format("x.time")} FROM unnest($1::int[]) AS k(device_key)
CROSS JOIN LATERAL (
  SELECT r.time FROM readings r WHERE r.device_key = k.device_key AND r.metric_id = $2 AND r.time <= $3
  ORDER BY r.time DESC LIMIT 1
) x
"""
INSERT_ALERTS = """
INSERT INTO alerts (alert_id, event, at, rule_id, city_id, area_id, device_id, metric, statistic,
                    severity, value, threshold, opened_at)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::text[], $11::float8[], $12::float8[],
                     $13::timestamptz[])
ON CONFLICT DO NOTHING
RETURNING event, severity
"""


def _time(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def alert_id(rule_id: str, device_key: int, metric_id: int, opened_us: int) -> uuid.UUID:
    """The same episode of the same rule on the same series always gets the same id."""
    return uuid.uuid5(ALERT_NAMESPACE, f"{rule_id}/{device_key}/{metric_id}/{opened_us}")


def _rollup_for(window_min: int) -> tuple[str, int]:
    """The coarsest rollup that tiles the window at least four times."""
    window_us = window_min * MINUTE_US
    for table, width in ROLLUP_WIDTHS_US:
        if window_us % width == 0 and window_us // width >= 4:
            return table, width
    return "rollup_1m", MINUTE_US


class _RuleRun:
    """One rule evaluated over (cursor, horizon]: the events it raises and the state it leaves."""

    def __init__(
        self, rule: asyncpg.Record, metric_id: int, devices: dict[int, asyncpg.Record], open_rows: list[Any]
    ) -> None:
        self.rule = rule
        self.metric_id = metric_id
        self.devices = devices
        self.open: dict[int, tuple[uuid.UUID, int, float]] = {
            r["device_key"]: (r["alert_id"], _us(r["opened_at"]), r["peak"]) for r in open_rows
        }
        self.events: list[
            tuple[int, int, int, float, int]
        ] = []  # (device_key, event, at_us, value, opened_us)

    def emit(self, device_key: int, event: int, at_us: int, value: float, opened_us: int) -> None:
        if device_key in self.devices:
            self.events.append((device_key, event, at_us, value, opened_us))

    def crossings(
        self, device_key: npt.NDArray[np.int64], ts_us: npt.NDArray[np.int64], value: npt.NDArray[np.float64]
    ) -> None:
        """Threshold episodes of the statistic's samples, continuing from the open alerts."""
        rule = self.rule
        sign = -1.0 if rule["direction"] == "below" else 1.0
        keys = np.unique(np.concatenate([device_key, np.fromiter(self.open, np.int64, len(self.open))]))
        series = np.searchsorted(keys, device_key)
        is_open = np.array([k in self.open for k in keys.tolist()], dtype=np.uint8)
        peak = np.array([self.open[k][2] if k in self.open else -np.inf for k in keys.tolist()])
        out = threshold_events(
            series,
            ts_us,
            sign * value,
            sign * rule["threshold"],
            rule["hysteresis"],
            keys.size,
            is_open,
            peak,
        )
        rows = np.flatnonzero(out.event)
        rows = rows[np.lexsort((ts_us[rows], series[rows]))]
        for i in rows.tolist():
            k, t, ev = int(device_key[i]), int(ts_us[i]), int(out.event[i])
            if ev == ALERT_OPENED:
                self.open[k] = (
                    alert_id(rule["rule_id"], k, self.metric_id, t),
                    t,
                    float(out.peak[series[i]]),
                )
            opened = self.open[k][1]
            self.emit(k, ev, t, float(value[i]), opened)
            if ev == ALERT_CLOSED:
                del self.open[k]
        for s, k in enumerate(keys.tolist()):
            if k in self.open:
                a, o, _ = self.open[k]
                self.open[k] = (a, o, float(out.peak[s]))

    def silence(
        self, device_key: npt.NDArray[np.int64], ts_us: npt.NDArray[np.int64], cursor_us: int, horizon_us: int
    ) -> None:
        """no_data episodes: opened window_min after a reading, closed by the next reading. An
        alert left open by an earlier run closes at the series' first reading after the cursor."""
        gap_us = self.rule["window_min"] * MINUTE_US
        after = ts_us > cursor_us
        first_after: dict[int, int] = {}
        for k, t in zip(device_key[after].tolist(), ts_us[after].tolist(), strict=True):
            first_after[k] = min(t, first_after.get(k, t))
        for k, (_, opened, _) in list(self.open.items()):
            if k in first_after:
                closed = first_after[k]
                self.emit(k, ALERT_CLOSED, closed, (closed - opened + gap_us) / MINUTE_US, opened)
                del self.open[k]
        found = silences(device_key, ts_us, gap_us, horizon_us)
        for k, opened, closed, last in zip(
            found.series.tolist(),
            found.opened_us.tolist(),
            found.closed_us.tolist(),
            found.last_us.tolist(),
            strict=True,
        ):
            if opened <= cursor_us or k in self.open:
                continue
            self.emit(k, ALERT_OPENED, opened, gap_us / MINUTE_US, opened)
            if closed < 0:
                self.open[k] = (alert_id(self.rule["rule_id"], k, self.metric_id, opened), opened, 0.0)
            else:
                self.emit(k, ALERT_CLOSED, closed, (closed - last) / MINUTE_US, opened)

    def event_columns(self) -> list[list[Any]]:
        rule = self.rule
        cols: list[list[Any]] = [[] for _ in range(13)]
        for k, ev, at, value, opened in self.events:
            d = self.devices[k]
            row = (
                alert_id(rule["rule_id"], k, self.metric_id, opened),
                EVENT_NAMES[ev],
                _time(at),
                rule["rule_id"],
                d["city_id"],
                d["area_id"],
                d["device_id"],
                rule["metric"],
                rule["statistic"],
                rule["severity"],
                value,
                rule["threshold"],
                _time(opened),
            )
            for col, v in zip(cols, row, strict=True):
                col.append(v)
        return cols


async def _evaluate_rule(
    conn: asyncpg.Connection, rule: asyncpg.Record, now: datetime, settings: Settings
) -> list[tuple[str, str]]:
    """Evaluate one rule up to its horizon, in one transaction; the (event, severity) stored."""
    a = settings.alerts
    horizon = now - timedelta(seconds=a.settle_s)
    if rule["statistic"] == "stuck":  # the quality job may still flag readings of its lookback window
        horizon -= timedelta(seconds=settings.quality.lookback_s)
    rid = rule["rule_id"]
    async with conn.transaction():
        cursor = await conn.fetchval(
            "SELECT evaluated_until FROM alert_cursors WHERE rule_id = $1 FOR UPDATE", rid
        )
        cursor = cursor or horizon - timedelta(seconds=a.first_lookback_s)
        if cursor >= horizon:
            return []
        metric = await conn.fetchrow(
            "SELECT metric_id, aggregation FROM metrics WHERE name = $1", rule["metric"]
        )
        devices = {
            r["device_key"]: r
            for r in await conn.fetch(
                SELECTED_DEVICES, rule["city_id"], rule["area_id"], rule["device_id"], rule["device_kind"]
            )
        }
        open_rows = await conn.fetch(
            "SELECT device_key, alert_id, opened_at, peak FROM alert_open "
            "WHERE rule_id = $1 AND metric_id = $2",
            rid,
            metric["metric_id"],
        )
        run = _RuleRun(rule, metric["metric_id"], devices, open_rows)
        keys = list(devices)
        cursor_us, horizon_us = _us(cursor), _us(horizon)
        stat = rule["statistic"]
        if stat in ("reading", "stuck"):
            rows = await conn.fetch(READINGS_SINCE, keys, metric["metric_id"], cursor, horizon)
            dk, ts, value, flags = _columns(rows, 4)
            if stat == "stuck":
                value = ((flags.astype(np.int64) & FLAG_STUCK) != 0).astype(np.float64)
            run.crossings(dk.astype(np.int64), ts.astype(np.int64), value)
        elif stat in ("rolling_mean", "exceedance"):
            table, width = _rollup_for(rule["window_min"])
            window_us = rule["window_min"] * MINUTE_US
            sql = BUCKETS_SINCE.format(table=table, epoch=EPOCH_US.format("bucket"))
            rows = await conn.fetch(
                sql, keys, metric["metric_id"], _time(cursor_us - window_us), horizon, width
            )
            dk, bucket, n, total, energy = _columns(rows, 5)
            decibel = metric["aggregation"] == "decibel"
            mean = rolling_bucket_means(
                dk.astype(np.int64),
                bucket.astype(np.int64),
                n,
                energy if decibel else total,
                width,
                window_us,
                rule["min_coverage"],
            )
            if decibel:
                with np.errstate(divide="ignore"):
                    mean = 10.0 * np.log10(mean)
            end = bucket.astype(np.int64) + width
            new = end > cursor_us
            run.crossings(dk.astype(np.int64)[new], end[new], mean[new])
        else:  # no_data
            lo = _time(cursor_us - rule["window_min"] * MINUTE_US)
            before = await conn.fetch(LAST_READING_BEFORE, keys, metric["metric_id"], lo)
            since = await conn.fetch(READINGS_SINCE, keys, metric["metric_id"], lo, horizon)
            dk, ts = _columns([*before, *since], 2)
            run.silence(dk.astype(np.int64), ts.astype(np.int64), cursor_us, horizon_us)
        stored = await conn.fetch(INSERT_ALERTS, *run.event_columns()) if run.events else []
        await conn.execute("DELETE FROM alert_open WHERE rule_id = $1", rid)
        if run.open:
            await conn.executemany(
                "INSERT INTO alert_open (rule_id, device_key, metric_id, alert_id, opened_at, peak) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                [(rid, k, metric["metric_id"], a_id, _time(o), p) for k, (a_id, o, p) in run.open.items()],
            )
        await conn.execute(
            "INSERT INTO alert_cursors (rule_id, evaluated_until) VALUES ($1, $2) "
            "ON CONFLICT (rule_id) DO UPDATE SET evaluated_until = EXCLUDED.evaluated_until",
            rid,
            horizon,
        )
    return [(r["event"], r["severity"]) for r in stored]


def _columns(rows: list[Any], n: int) -> list[npt.NDArray[np.float64]]:
    """The first `n` columns of numeric rows as float64 arrays (epoch µs fit: below 2**53)."""
    if not rows:
        return [np.zeros(0) for _ in range(n)]
    arr = np.array([tuple(r)[:n] for r in rows], dtype=np.float64).reshape(len(rows), n)
    return [arr[:, j] for j in range(n)]


async def evaluate_alerts(conn: asyncpg.Connection, settings: Settings, now: datetime | None = None) -> int:
    """Evaluate every enabled rule once; returns the events newly stored (and counts them)."""
    now = now or datetime.now(UTC)
    stored = 0
    for rule in await conn.fetch("SELECT * FROM alert_rules WHERE enabled ORDER BY rule_id"):
        for event, severity in await _evaluate_rule(conn, rule, now, settings):
            telemetry.ALERT_EVENTS.labels(event, severity).inc()
            stored += 1
    for r in await conn.fetch(
        "SELECT r.severity, count(o.rule_id) AS n "
        "FROM (VALUES ('info'), ('warning'), ('critical')) r(severity) "
        "LEFT JOIN alert_rules ar ON ar.severity = r.severity "
        "LEFT JOIN alert_open o ON o.rule_id = ar.rule_id GROUP BY 1"
    ):
        telemetry.ALERTS_OPEN.labels(r["severity"]).set(r["n"])
    return stored


PENDING_ALERTS = """
SELECT alert_id, event, at, rule_id, city_id, area_id, device_id, metric, statistic, severity, value,
       threshold, opened_at
FROM alerts WHERE notified_at IS NULL ORDER BY recorded_at, at LIMIT $1
"""


def event_json(r: asyncpg.Record) -> dict[str, Any]:
    """An alert event as published: every column, times in ISO 8601."""
    out = dict(r)
    out["alert_id"] = str(out["alert_id"])
    for k in ("at", "opened_at"):
        out[k] = out[k].isoformat()
    return out


async def notify_pending(conn: asyncpg.Connection, notify: Notify, limit: int = 500) -> int:
    """Hand the events not yet published to `notify`; mark them once it returns. A failing channel
    leaves them pending: they go out with the next run (at least once; dedupe on id, event, at)."""
    rows = await conn.fetch(PENDING_ALERTS, limit)
    if not rows:
        return 0
    await notify([event_json(r) for r in rows])
    await conn.execute(
        "UPDATE alerts SET notified_at = now() WHERE (alert_id, event, at) IN "
        "(SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]))",
        [r["alert_id"] for r in rows],
        [r["event"] for r in rows],
        [r["at"] for r in rows],
    )
    return len(rows)


async def _run_once(settings: Settings, notify: Notify | None) -> int:
    conn = await asyncpg.connect(settings.database.url.get_secret_value(), timeout=10)
    try:
        stored = await evaluate_alerts(conn, settings)
        if notify is not None:
            try:
                await notify_pending(conn, notify)
            except Exception as e:  # a channel is down: the events stay pending for the next run
                log.warning("publishing alert events failed (%s); they stay queued", e)
        return stored
    finally:
        await conn.close()


async def alerts_loop(settings: Settings, notify: Notify | None = None) -> None:
    """Every `alerts.interval_s`, evaluate the rules and publish new events (processors/jobs.py)."""
    await every(
        settings.alerts.interval_s,
        lambda: _run_once(settings, notify),
        log,
        done="alerts: %d new events",
        failed="alert evaluation",
    )
