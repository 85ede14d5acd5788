"""Migrations on the real servers: TimescaleDB (Apache edition) and plain PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from schemas.migrations import migrate, migration_files

pytestmark = pytest.mark.integration

TABLES = {
    "cities",
    "devices",
    "metrics",
    "readings",
    "rollup_1m",
    "rollup_15m",
    "rollup_1h",
    "rollup_1d",
    "kpi_values",
    "dead_letters",
    "ingest_batches",
    "schema_migrations",
}


async def test_migrate_creates_schema_and_reports_features(empty_db: str, server_url: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        report = await migrate(conn)
        tables = {
            r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert tables >= TABLES
        assert report.applied == [v for v, _ in migration_files()]
        assert report.features is not None
        n_metrics = await conn.fetchval("SELECT count(*) FROM metrics")
        assert n_metrics >= 20
        if "15433" in server_url:
            assert report.features.hypertables
            assert report.features.license == "apache"
            assert not report.features.community_features
            hyper = {
                r[0]
                for r in await conn.fetch("SELECT hypertable_name FROM timescaledb_information.hypertables")
            }
            assert hyper == {"readings", "rollup_1m", "rollup_15m", "rollup_1h", "rollup_1d"}
            assert "drop_chunks" in report.features.describe()
        else:
            assert not report.features.hypertables
            assert "without TimescaleDB" in report.features.describe()
    finally:
        await conn.close()


async def test_migrate_twice_is_a_no_op(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        await migrate(conn)
        second = await migrate(conn)
        assert second.applied == []
        assert second.already == [v for v, _ in migration_files()]
    finally:
        await conn.close()


async def test_two_processes_migrating_at_once_serialise_on_the_advisory_lock(empty_db: str) -> None:
    conns = [await asyncpg.connect(empty_db) for _ in range(2)]
    try:
        reports = await asyncio.gather(*(migrate(c) for c in conns))
        applied = sorted(len(r.applied) for r in reports)
        assert applied == [0, len(migration_files())]
        n = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert n == len(migration_files())
    finally:
        for c in conns:
            await c.close()
