"""The service under least privilege, on both servers: `citykpi run` as an ingest login (no
migration, no owner), the KPI refresh as the KPI login, and every job doing its work."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from ingest.service import Service
from ingest.simulator import SimMessage
from kpi_rollups.live import latest_summary
from processors.writer import TimescaleWriter, WriteBatch
from tests.conftest import PrivateMosquitto
from tests.integration.test_mqtt_ingest import publish, senml_messages, settings_for

pytestmark = pytest.mark.integration


async def _wait_for(dsn: str, query: str, at_least: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        conn = await asyncpg.connect(dsn)
        try:
            n = int(await conn.fetchval(query))
        finally:
            await conn.close()
        if n >= at_least:
            return n
        await asyncio.sleep(0.3)
    return n


async def test_service_runs_as_the_ingest_login_and_refreshes_kpis_as_the_kpi_login(
    any_db: str,
    service_logins: tuple[str, str],
    mosquitto: PrivateMosquitto,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Readings, auto-registered devices, dead letters (COPY), retention (the owner's hardened
    function), quality flags and KPI values all written without the owner, and no job logs a
    failure."""
    ingest_dsn, kpi_dsn = service_logins
    old = datetime.now(UTC) - timedelta(days=30)
    batch = WriteBatch(source="test")
    batch.add("demo", "old-1", "pm25", old, 5.0)
    async with TimescaleWriter(any_db) as w:  # the owner writes a month-old reading
        await w.write(batch)

    settings = settings_for(ingest_dsn, mosquitto.port)
    settings.database.kpi_url = type(settings.database.url)(kpi_dsn)
    settings.database.raw_retention_days = 3
    settings.database.retention_interval_s = 0.5
    settings.quality.interval_s, settings.quality.lookback_s = 0.5, 1.0
    settings.kpi_refresh_interval_s = 0.5
    assert not settings.database.migrate_on_start
    caplog.set_level(logging.INFO)
    service = Service(settings)
    await service.start()
    try:
        await publish(
            mosquitto.port, [*senml_messages(50), SimMessage("city/demo/senml/air-00", b"{not json")]
        )
        assert (
            await _wait_for(
                any_db, "SELECT count(*) FROM readings WHERE time > now() - interval '2 days'", 50
            )
            == 50
        )
        assert await _wait_for(any_db, "SELECT count(*) FROM dead_letters", 1) >= 1
        assert await _wait_for(any_db, "SELECT count(*) FROM kpi_values WHERE city_id = 'demo'", 1) >= 1
        assert (
            await _wait_for(any_db, "SELECT 1 - count(*) FROM readings WHERE value = 5.0", 1) == 1
        )  # retention
        assert await latest_summary(settings)  # the live table of `citykpi run`, as the KPI login
    finally:
        await service.stop()
    owner = await asyncpg.connect(any_db)
    try:
        assert await owner.fetchval("SELECT count(*) FROM devices WHERE registered_by = 'auto'") >= 20
    finally:
        await owner.close()
    trouble = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and ("fail" in r.getMessage() or "permission" in r.getMessage())
    ]
    assert not trouble


async def test_the_ingest_login_cannot_migrate_and_run_does_not_try(
    any_db: str, service_logins: tuple[str, str]
) -> None:
    """`migrate_on_start` is off by default; asked to migrate, the ingest login is refused."""
    from ingest.database import prepare_database

    ingest_dsn, _ = service_logins
    settings = settings_for(ingest_dsn, 1)
    await prepare_database(settings, settings.database.migrate_on_start)  # upserts the cities: allowed
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await prepare_database(settings, run_migrations=True)


async def test_a_non_superuser_owner_migrates_and_makes_the_logins(
    server_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The schema owner needs CREATEROLE and its database, not SUPERUSER (on TimescaleDB a DBA creates
    the extension first): it migrates, makes a reader and an ingest login, and the model holds; its
    migrate says what it could not revoke (the built-in side channels only a superuser revokes)."""
    from bench.stack import drop_database, with_db
    from core.config import Settings
    from ingest.database import prepare_database
    from schemas.migrations import HYPERTABLES
    from tests.conftest import as_login

    owner, db = f"own_{uuid.uuid4().hex[:8]}", f"t_{uuid.uuid4().hex[:12]}"
    su = await asyncpg.connect(server_url)
    try:
        await su.execute(f"CREATE ROLE {owner} LOGIN PASSWORD 'pw' CREATEROLE")
        await su.execute(f"CREATE DATABASE {db} OWNER {owner}")
    finally:
        await su.close()
    try:
        if "15433" in server_url:
            dba = await asyncpg.connect(with_db(server_url, db))
            try:
                await dba.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            finally:
                await dba.close()
        owner_dsn = as_login(with_db(server_url, db), owner)
        with caplog.at_level("WARNING", logger="schemas.access"):
            await prepare_database(Settings(database={"url": owner_dsn}))  # type: ignore[arg-type]
        assert "the schema owner is not a superuser" in caplog.text
        conn = await asyncpg.connect(owner_dsn)
        try:
            await conn.execute("INSERT INTO cities (city_id, name) VALUES ('other', 'Other')")
            await conn.fetch("SELECT citykpi_grant_reader($1, 'demo', 'pw')", f"{owner}_r")
            await conn.fetch("SELECT citykpi_grant_service($1, 'ingest', 'pw')", f"{owner}_i")
            hypertables = await conn.fetchval(
                "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
            ) and await conn.fetchval("SELECT count(*) FROM timescaledb_information.hypertables")
        finally:
            await conn.close()
        assert hypertables == (len(HYPERTABLES) if "15433" in server_url else 0)
        batch = WriteBatch(source="test")
        for city in ("demo", "other"):
            batch.add(city, "air-1", "pm25", datetime.now(UTC) - timedelta(minutes=5), 7.0)
        async with TimescaleWriter(as_login(owner_dsn, f"{owner}_i")) as w:
            assert (await w.write(batch)).stored == 2
        reader = await asyncpg.connect(as_login(owner_dsn, f"{owner}_r"))
        try:
            assert (
                await reader.fetchval("SELECT count(*) FROM readings(now() - interval '1 hour', now())") == 1
            )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.fetchval("SELECT count(*) FROM public.readings")
        finally:
            await reader.close()
    finally:
        await drop_database(server_url, with_db(server_url, db))
        su = await asyncpg.connect(server_url)
        try:
            await su.execute(f"DROP ROLE IF EXISTS {owner}_r, {owner}_i, {owner}")
        finally:
            await su.close()
