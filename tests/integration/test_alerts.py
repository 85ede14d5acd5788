"""Threshold alerts end to end: rules imported from TOML, readings stored by the real writer, the
alert job evaluating them as the ingest login, events read back, published and isolated per city."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY

from core.config import AlertSettings, QualitySettings, Settings
from ingest.alert_notify import AlertNotifier
from ingest.service import Service
from ingest.simulator import SimMessage
from kpi_rollups.live import latest_summary
from processors.alert_rules import DEFAULT_RULES, import_rules
from processors.alerts import evaluate_alerts, notify_pending
from processors.quality import flag_quality
from processors.retention import apply_retention
from processors.writer import TimescaleWriter, WriteBatch
from tests.conftest import MQTT_PORT, PrivateMosquitto, as_login, deployment_of, make_login
from tests.integration.test_mqtt_ingest import publish, settings_for, wait_for_count

pytestmark = pytest.mark.integration

T0 = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
NOW = T0 + timedelta(minutes=150)

RULES = """
[[rules]]
rule_id = "pm25-high"
city_id = "demo"
metric = "pm25"
statistic = "reading"
threshold = 100.0
hysteresis = 10.0
severity = "critical"

[[rules]]
rule_id = "noise-loud"
metric = "laeq"
device_kind = "noise"
statistic = "rolling_mean"
window_min = 5
threshold = 70.0
hysteresis = 2.0
severity = "info"

[[rules]]
rule_id = "no2-eu"
statistic = "exceedance"
limit = "eu2008_no2_1h"
hysteresis = 10.0
severity = "critical"

[[rules]]
rule_id = "weather-silent"
metric = "temperature"
statistic = "no_data"
window_min = 3

[[rules]]
rule_id = "air3-stuck"
metric = "pm25"
device_id = "air-3"
statistic = "stuck"
"""


def _db(x: float) -> float:
    return 10.0 * math.log10(x)


# (rule, device, event, minutes after T0, value): derived by hand in the docstring of the test below
EXPECTED = [
    ("air3-stuck", "air-3", "opened", 0, 1.0),
    ("air3-stuck", "air-3", "closed", 10, 0.0),
    ("no2-eu", "air-2", "opened", 105, 225.0),
    ("no2-eu", "air-2", "updated", 120, 250.0),
    ("noise-loud", "noise-1", "opened", 21, _db((4e6 + 1e8) / 5)),
    ("noise-loud", "noise-1", "updated", 22, _db((3e6 + 2e8) / 5)),
    ("noise-loud", "noise-1", "updated", 24, _db((1e6 + 4e8) / 5)),
    ("pm25-high", "air-1", "opened", 10, 150.0),
    ("pm25-high", "air-1", "updated", 11, 180.0),
    ("pm25-high", "air-1", "closed", 13, 50.0),
    ("weather-silent", "weather-1", "opened", 12, 3.0),
    ("weather-silent", "weather-1", "closed", 20, 11.0),
    ("weather-silent", "weather-1", "opened", 32, 3.0),
]


def readings() -> WriteBatch:
    b = WriteBatch(source="test")
    at = lambda m: T0 + timedelta(minutes=m)  # noqa: E731
    air1 = {10: 150.0, 11: 180.0, 12: 95.0, 13: 50.0}
    for m in range(30):
        b.add("demo", "air-1", "pm25", at(m), air1.get(m, 20.0 + m % 3))
        b.add("other", "air-1", "pm25", at(m), 500.0 if m == 5 else 20.0 + m % 3)  # no rule for it
        b.add("demo", "noise-1", "laeq", at(m), 60.0 if m < 20 else 80.0)
        b.add("demo", "air-3", "pm25", at(m), 12.0 if m < 10 else 12.0 + m % 4)
        if m < 10 or m >= 20:
            b.add("demo", "weather-1", "temperature", at(m), 10.0 + m % 5)
    for m in range(120):
        b.add("demo", "air-2", "no2", at(m), 150.0 if m < 60 else 250.0)
    return b


def settings(**alerts: Any) -> Settings:
    return Settings(alerts=AlertSettings(first_lookback_s=4 * 3600, **alerts))  # type: ignore[call-arg]


async def stored_events(dsn: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT * FROM alerts ORDER BY rule_id, at, event")
    finally:
        await conn.close()
    return [
        (r["rule_id"], r["device_id"], r["event"], (r["at"] - T0) / timedelta(minutes=1), r["value"])
        for r in rows
    ]


def assert_expected(events: list[tuple[Any, ...]]) -> None:
    assert [e[:4] for e in events] == [e[:4] for e in EXPECTED]
    for got, want in zip(events, EXPECTED, strict=True):
        assert got[4] == pytest.approx(want[4], rel=1e-9), got


async def evaluate_as(dsn: str, now: datetime, s: Settings | None = None) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await evaluate_alerts(conn, s or settings(), now)
    finally:
        await conn.close()


@pytest.fixture
async def stored(tsdb: str, tmp_path: Path) -> tuple[str, str]:
    """The rules imported, the readings written, the quality job run: (owner DSN, ingest DSN)."""
    return await store(tsdb, tmp_path)


@pytest.fixture
async def stored_on_both(any_db: str, tmp_path: Path) -> tuple[str, str]:
    """`stored`, on TimescaleDB and on plain PostgreSQL."""
    return await store(any_db, tmp_path)


async def store(tsdb: str, tmp_path: Path) -> tuple[str, str]:
    owner = await asyncpg.connect(tsdb)
    try:
        await owner.execute(
            "INSERT INTO cities (city_id, name) VALUES ('other', 'Other') ON CONFLICT DO NOTHING"
        )
    finally:
        await owner.close()
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    assert await import_rules(tsdb, rules) == (5, 5)
    async with TimescaleWriter(tsdb) as w:
        await w.write(readings())
    owner = await asyncpg.connect(tsdb)
    try:
        q = QualitySettings(stuck_min_run=5, exclude_flagged_from_kpis=False)
        await flag_quality(owner, T0, T0 + timedelta(hours=3), q)
    finally:
        await owner.close()
    return tsdb, await make_login(tsdb, deployment_of(tsdb).ingest)


async def test_every_statistic_opens_updates_and_closes_alerts_as_derived_by_hand(
    stored: tuple[str, str],
) -> None:
    """One reading per minute from T0 (the hour), evaluated at T0 + 150 min by the ingest login.

    - pm25-high (reading > 100, hysteresis 10, city demo): air-1 reads 150 at minute 10 (opens),
      180 at 11 (a new peak at least 10 higher: updated), 95 at 12 (stays open: not below 90),
      50 at 13 (closes). The other city's 500 at minute 5 is outside the rule's selector.
    - noise-loud (5-minute rolling mean > 70 dB, hysteresis 2): LAeq 60 dB until minute 19, then
      80 dB. Decibels average as energy: the window ending at minute 21 holds four buckets of 60 and
      one of 80 dB, 10·log10((4·10⁶ + 10⁸)/5) = 73.18 dB, opens; minute 22: 3 + 2 buckets, 76.07
      (2 above: updated); 23: 77.81 (not 2 above 76.07); 24: 79.04 (updated); 25 on: 80.
    - no2-eu (EU 2008/50/EC hourly limit 200 µg/m³, from the 15-minute rollups): 150 for an hour,
      then 250. Windows ending at 75 min: (45·150 + 15·250)/60 = 175; 90: 200 (not above);
      105: 225 (opens); 120: 250 (updated, hysteresis 10).
    - weather-silent (no data for 3 minutes): readings 0-9 and 20-29: opens at 9 + 3 = 12 with
      value 3, closes at 20 after 11 minutes; opens again at 29 + 3 = 32 and stays open.
    - air3-stuck: ten identical readings (0-9) flagged stuck by the quality job (run of >= 5):
      opens at 0, closes at the first unflagged reading, minute 10.
    """
    owner, ingest = stored
    opened_critical = {"event": "opened", "severity": "critical"}
    before = REGISTRY.get_sample_value("citykpi_alert_events_total", opened_critical) or 0.0
    n = await evaluate_as(ingest, NOW)
    events = await stored_events(owner)
    assert n == len(EXPECTED)
    assert REGISTRY.get_sample_value("citykpi_alert_events_total", opened_critical) == before + 2
    assert REGISTRY.get_sample_value("citykpi_alerts_open", {"severity": "critical"}) == 1  # no2-eu
    assert_expected(events)
    conn = await asyncpg.connect(owner)
    try:
        still_open = await conn.fetch("SELECT rule_id FROM alert_open ORDER BY 1")
        assert [r[0] for r in still_open] == ["no2-eu", "noise-loud", "weather-silent"]
        ids = await conn.fetch("SELECT rule_id, count(DISTINCT alert_id) FROM alerts GROUP BY 1 ORDER BY 1")
        assert [tuple(r) for r in ids] == [
            ("air3-stuck", 1),
            ("no2-eu", 1),
            ("noise-loud", 1),
            ("pm25-high", 1),
            ("weather-silent", 2),
        ]
    finally:
        await conn.close()


async def test_replaying_or_reevaluating_never_raises_an_alert_twice(stored: tuple[str, str]) -> None:
    """Evaluated in four runs, the events equal one run's; running again, replaying the readings
    through the writer, and losing the evaluator's whole state (cursors, open alerts) then
    evaluating everything again store nothing new: an alert's id comes from rule, series and
    opening time, and (id, event, time) is the key."""
    owner, ingest = stored
    for minutes in (15, 40, 100, 150):
        await evaluate_as(ingest, T0 + timedelta(minutes=minutes))
    assert_expected(await stored_events(owner))
    assert await evaluate_as(ingest, NOW) == 0
    async with TimescaleWriter(owner) as w:
        result = await w.write(readings())
    assert result.stored == 0 and result.duplicates == len(readings())
    assert await evaluate_as(ingest, NOW + timedelta(minutes=1)) == 0
    conn = await asyncpg.connect(owner)
    try:
        await conn.execute("DELETE FROM alert_cursors; DELETE FROM alert_open")
    finally:
        await conn.close()
    assert await evaluate_as(ingest, NOW) == 0
    assert_expected(await stored_events(owner))


async def test_retention_deletes_old_alert_events_but_never_an_open_alerts_opening_or_an_unpublished_one(
    stored_on_both: tuple[str, str],
) -> None:
    """The events of the by-hand test, those up to minute 100 aged by 500 days (past the default
    400), every one published except air3-stuck's; the retention job as the ingest login deletes
    the old published events of closed alerts and the old updates of open ones, and keeps the
    opening events of the open alerts (noise-loud at 21, weather-silent at 32), air3-stuck's
    unpublished events and no2-eu's recent ones. With no channel configured nothing waits to be
    published: air3-stuck's go too. The ingest login itself cannot delete an alert event."""
    owner, ingest = stored_on_both
    await evaluate_as(ingest, NOW)
    conn = await asyncpg.connect(owner)
    try:
        await conn.execute(
            "UPDATE alerts SET at = at - interval '500 days' WHERE at <= $1", T0 + timedelta(minutes=100)
        )
        await conn.execute("UPDATE alerts SET notified_at = now() WHERE rule_id <> 'air3-stuck'")
    finally:
        await conn.close()

    async def remaining() -> list[tuple[str, str, float]]:
        conn = await asyncpg.connect(owner)
        try:
            rows = await conn.fetch("SELECT rule_id, event, opened_at FROM alerts ORDER BY 1, 3, 2")
        finally:
            await conn.close()
        return [(r[0], r[1], (r[2] - T0) / timedelta(minutes=1)) for r in rows]

    kept = [
        ("air3-stuck", "closed", 0),
        ("air3-stuck", "opened", 0),
        ("no2-eu", "opened", 105),
        ("no2-eu", "updated", 105),
        ("noise-loud", "opened", 21),
        ("weather-silent", "opened", 32),
    ]
    conn = await asyncpg.connect(ingest)
    try:
        removed = await apply_retention(conn, settings(mqtt_topic="citykpi/alerts"))
        assert removed["alerts"] == len(EXPECTED) - len(kept)
        assert await remaining() == kept
        assert (await apply_retention(conn, settings(mqtt_topic="citykpi/alerts")))["alerts"] == 0
        assert (await apply_retention(conn, settings()))["alerts"] == 2  # nothing publishes: air3-stuck
        assert await remaining() == kept[2:]
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM alerts")
        with pytest.raises(asyncpg.InvalidParameterValueError):
            await conn.fetchval("SELECT public.citykpi_expire_alerts(0, true)")
    finally:
        await conn.close()
    assert Settings().alerts.retention_days == 400


async def test_the_live_table_lists_the_citys_open_alerts_per_rule_as_the_kpi_login(
    stored: tuple[str, str],
) -> None:
    """After the by-hand evaluation three alerts of demo stay open (no2-eu opened at minute 105,
    noise-loud at 21, weather-silent's second at 32; the rest closed): the live table of
    `citykpi run` lists one row each, read as the KPI login."""
    owner, ingest = stored
    await evaluate_as(ingest, NOW)
    s = settings()
    s.database.url = type(s.database.url)(owner)
    s.database.kpi_url = type(s.database.url)(await make_login(owner, deployment_of(owner).kpi))
    rows = [r for r in await latest_summary(s) if r[0].startswith("alert ")]
    at = lambda m: (T0 + timedelta(minutes=m)).strftime("%H:%M")  # noqa: E731
    assert rows == [
        ("alert no2-eu", "open (critical)", 1.0, at(105)),
        ("alert noise-loud", "open (info)", 1.0, at(21)),
        ("alert weather-silent", "open (warning)", 1.0, at(32)),
    ]


async def test_importing_rules_validates_everything_and_is_idempotent(tsdb: str, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(RULES)
    assert await import_rules(tsdb, good) == (5, 5)
    assert await import_rules(tsdb, good) == (5, 0)
    assert await import_rules(tsdb, DEFAULT_RULES) == (12, 12)  # weather-silent redefined, 11 new
    bad = tmp_path / "bad.toml"
    bad.write_text(RULES.replace('"pm25-high"\ncity_id = "demo"', '"pm25-high"\ncity_id = "nowhere"'))
    with pytest.raises(ValueError, match="unknown city"):
        await import_rules(tsdb, bad)
    conn = await asyncpg.connect(tsdb)
    try:
        assert await conn.fetchval("SELECT city_id FROM alert_rules WHERE rule_id = 'pm25-high'") == "demo"
        assert await conn.fetchval("SELECT count(*) FROM alert_rules") == 16
        assert await conn.fetchval("SELECT window_min FROM alert_rules WHERE rule_id = 'weather-silent'") == 2
    finally:
        await conn.close()


async def test_a_city_reader_sees_only_its_citys_alerts_and_nothing_of_the_rules_or_state(
    stored_on_both: tuple[str, str],
) -> None:
    """Both cities raise alerts (a rule for every city); demo's reader reads demo's events through
    reader.alerts only: no base table, no evaluator state, no write, no leak through a function."""
    owner, ingest = stored_on_both
    conn = await asyncpg.connect(owner)
    try:
        await conn.execute(
            "INSERT INTO alert_rules (rule_id, metric, statistic, threshold, severity) "
            "VALUES ('pm25-any-city', 'pm25', 'reading', 100, 'warning')"
        )
        role = f"reader_demo_{uuid.uuid4().hex[:6]}"
        await conn.execute("SELECT citykpi_grant_reader($1, 'demo', 'pw')", role)
    finally:
        await conn.close()
    await evaluate_as(ingest, NOW)
    conn = await asyncpg.connect(owner)
    try:
        cities = {r[0] for r in await conn.fetch("SELECT DISTINCT city_id FROM alerts")}
        other_values = {r[0] for r in await conn.fetch("SELECT value FROM alerts WHERE city_id = 'other'")}
    finally:
        await conn.close()
    assert cities == {"demo", "other"} and 500.0 in other_values
    reader = await asyncpg.connect(as_login(owner, role))
    notices: list[str] = []
    reader.add_log_listener(lambda _c, msg: notices.append(str(msg.message)))
    try:
        assert {r[0] for r in await reader.fetch("SELECT city_id FROM alerts")} == {"demo"}
        assert await reader.fetchval("SELECT count(*) FROM reader.alerts WHERE value = 500") == 0
        for statement in (
            "SELECT count(*) FROM public.alerts",
            "SELECT count(*) FROM public.alert_rules",
            "SELECT count(*) FROM public.alert_open",
            "SELECT count(*) FROM public.alert_cursors",
            "SELECT count(*) FROM reader.alert_rules",
        ):
            with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedTableError)):
                await reader.fetchval(statement)
        await reader.execute("SET default_transaction_read_only = off")
        for statement in (
            "DELETE FROM reader.alerts",
            "UPDATE reader.alerts SET value = 0",
            "INSERT INTO reader.alerts (alert_id, event, at, rule_id, city_id, device_id, metric, statistic, "
            "severity, threshold, opened_at) VALUES (gen_random_uuid(), 'opened', now(), 'x', 'other', 'x', "
            "'pm25', 'reading', 'info', 1, now())",
        ):  # a view over the reader function is not updatable at all
            with pytest.raises(
                (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectNotInPrerequisiteStateError)
            ):
                await reader.execute(statement)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # no TEMPORARY: no leaky function
            await reader.execute(
                "CREATE FUNCTION pg_temp.leak(v float8) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 "
                "AS $$ BEGIN RAISE NOTICE 'saw %', v; RETURN true; END $$"
            )
        plan = "\n".join(r[0] for r in await reader.fetch("EXPLAIN SELECT * FROM reader.alerts"))
        assert "other" not in plan
    finally:
        await reader.close()
    conn = await asyncpg.connect(owner)
    try:
        assert await conn.fetchval("SELECT count(*) FROM alerts WHERE city_id = 'other'") >= 2
    finally:
        await conn.close()


class Recorder(BaseHTTPRequestHandler):
    """Records every request; answers the statuses queued in `server.statuses` (then 200)."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server: Any = self.server
        server.requests.append((self.path, dict(self.headers), json.loads(body)))
        if server.delay_s:
            time.sleep(server.delay_s)
        status = server.statuses.pop(0) if server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.requests, server.statuses, server.delay_s = [], [], 0.0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_events_go_to_the_webhook_with_retries_and_to_mqtt_once_each(
    stored: tuple[str, str], webhook: Any
) -> None:
    """The webhook answers 503, then 500, then 200: the notifier retries (tenacity, jitter) and the
    third request carries every event; each event is also one QoS 1 message on the broker under
    <topic>/<city>; all are marked published, so the next run sends nothing."""
    _, ingest = stored
    topic = f"test-alerts-{uuid.uuid4().hex[:8]}"
    got: list[dict[str, Any]] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{topic}")
    sub.on_message = lambda _c, _u, m: got.append({"topic": m.topic, **json.loads(m.payload)})
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect("127.0.0.1", MQTT_PORT)
    sub.loop_start()
    sub.subscribe(f"{topic}/#", qos=1)
    assert subscribed.wait(10)
    try:
        await evaluate_as(ingest, NOW)
        webhook.statuses = [503, 500]
        s = settings(webhook_url=f"http://127.0.0.1:{webhook.server_port}/hook", mqtt_topic=topic)
        notifier = AlertNotifier(s.alerts, s.mqtt.model_copy(update={"port": MQTT_PORT}))
        conn = await asyncpg.connect(ingest)
        try:
            assert await notify_pending(conn, notifier) == len(EXPECTED)
            assert await notify_pending(conn, notifier) == 0
        finally:
            await conn.close()
        deadline = time.monotonic() + 10
        while len(got) < len(EXPECTED) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert len(webhook.requests) == 3
    path, headers, body = webhook.requests[-1]
    assert path == "/hook" and headers["Content-Type"] == "application/json"
    assert sorted((e["rule_id"], e["event"], e["at"]) for e in body["events"]) == sorted(
        (e["rule_id"], e["event"], e["at"]) for e in got
    )
    assert {e["topic"] for e in got} == {f"{topic}/demo"}
    assert len(got) == len(EXPECTED)
    opened = next(e for e in body["events"] if e["rule_id"] == "pm25-high" and e["event"] == "opened")
    assert opened["value"] == 150.0 and opened["threshold"] == 100.0 and opened["device_id"] == "air-1"


async def test_a_failing_webhook_keeps_events_queued_and_costs_ingestion_nothing(
    stored: tuple[str, str], webhook: Any
) -> None:
    """Always 500: the notifier gives up after its attempts, the events stay pending (sent by a later
    run), and the writer commits a batch meanwhile as fast as ever (the job runs beside it)."""
    owner, ingest = stored
    await evaluate_as(ingest, NOW)
    webhook.statuses = [500] * 100
    webhook.delay_s = 0.2
    s = settings(webhook_url=f"http://127.0.0.1:{webhook.server_port}/hook", webhook_attempts=3)
    notifier = AlertNotifier(s.alerts, s.mqtt)
    conn = await asyncpg.connect(ingest)

    async def notify_and_fail() -> None:
        with pytest.raises(RuntimeError, match="webhook: HTTP 500") as e:
            await notify_pending(conn, notifier)
        assert "/hook" not in str(e.value)  # webhook URLs carry tokens: never in a log line

    try:
        failing = asyncio.create_task(notify_and_fail())
        batch = WriteBatch(source="test")
        for m in range(200):
            batch.add("demo", "air-9", "pm25", NOW + timedelta(seconds=m), 10.0)
        started = time.monotonic()
        async with TimescaleWriter(owner) as w:
            result = await w.write(batch)
        assert result.stored == 200
        assert not failing.done(), "the webhook gave up before the write even finished: no overlap shown"
        await failing
        assert time.monotonic() - started < 30
        assert len(webhook.requests) == 3
        assert await conn.fetchval("SELECT count(*) FROM alerts WHERE notified_at IS NULL") == len(EXPECTED)
        webhook.statuses, webhook.delay_s = [], 0.0
        assert await notify_pending(conn, notifier) == len(EXPECTED)
    finally:
        await conn.close()


async def test_the_service_raises_alerts_from_mqtt_readings_while_its_webhook_fails(
    tsdb: str, mosquitto: PrivateMosquitto, webhook: Any, tmp_path: Path
) -> None:
    """The whole service: readings over MQTT are stored and acknowledged, the supervised alert job
    raises the rule's alerts from them, and the webhook answering 500 to everything (slowly) costs
    ingestion nothing: every reading lands, the service stays healthy, the events wait unsent."""
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rules]]\nrule_id = "pm25-high"\nmetric = "pm25"\nstatistic = "reading"\nthreshold = 100.0\n'
    )
    await import_rules(tsdb, rules)
    webhook.statuses, webhook.delay_s = [500] * 1000, 0.5
    s = settings_for(tsdb, mosquitto.port)
    s.alerts = AlertSettings(
        interval_s=0.2,
        settle_s=0,
        webhook_url=f"http://127.0.0.1:{webhook.server_port}/hook",
        webhook_attempts=2,
    )
    service = Service(s)
    await service.start()
    start = time.time() + 1  # live data: stamped after the job's first run (its cursor)
    messages = [
        SimMessage(
            f"city/demo/senml/air-{i % 5}",
            json.dumps(
                [{"bn": f"air-{i % 5}:", "bt": round(start + i / 100, 3), "n": "pm25", "u": "ug/m3", "v": v}]
            ).encode(),
        )
        for i, v in enumerate([20.0] * 100 + [150.0] * 10 + [20.0] * 100)
    ]
    try:
        await publish(mosquitto.port, messages)
        assert await wait_for_count(tsdb, len(messages)) == len(messages)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(webhook.requests) < 2:
            await asyncio.sleep(0.2)
        assert service.healthy() and service.ready()
        pack = [{"bn": "air-9:", "bt": round(time.time(), 3), "n": "pm25", "u": "ug/m3", "v": 21.0}]
        more = [SimMessage("city/demo/senml/air-9", json.dumps(pack).encode())]
        await publish(mosquitto.port, more)  # ingestion goes on while the notifier is retrying
        assert await wait_for_count(tsdb, len(messages) + 1) == len(messages) + 1
    finally:
        await service.stop()
    conn = await asyncpg.connect(tsdb)
    try:
        rows = await conn.fetch("SELECT device_id, event, value, notified_at FROM alerts ORDER BY at, event")
    finally:
        await conn.close()
    assert [(r["device_id"], r["event"], r["value"]) for r in rows] == [
        (f"air-{i % 5}", "opened", 150.0) for i in range(100, 105)
    ] + [(f"air-{i % 5}", "closed", 20.0) for i in range(110, 115)]
    assert all(r["notified_at"] is None for r in rows)
    assert len(webhook.requests[-1][2]["events"]) == 10  # every run offers all the pending events again
