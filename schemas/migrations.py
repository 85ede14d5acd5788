"""Versioned, idempotent schema migrations, plus the TimescaleDB features the server allows.

`migrate()` takes a session-level advisory lock, so two processes migrating at once serialise;
each `schemas/sql/NNNN_*.sql` file runs once, in its own transaction, and is recorded in
`schema_migrations`. Then `apply_server_features()` turns tables into hypertables (TimescaleDB),
adds compression and retention policies (Community edition only), and reports what is off.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from importlib import resources

import asyncpg

from schemas.access import DeploymentRoles, apply_access

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x43_49_54_59_4B_50_49  # "CITYKPI"

# table -> (time column, chunk interval); every rollup is written by the processors themselves.
# `readings` gets no time index on TimescaleDB: its queries go by device, and chunks do the rest.
HYPERTABLES: dict[str, tuple[str, str]] = {
    "readings": ("time", "1 day"),
    "rollup_1m": ("bucket", "7 days"),
    "rollup_15m": ("bucket", "14 days"),
    "rollup_1h": ("bucket", "30 days"),
    "rollup_1d": ("bucket", "365 days"),
}
COMPRESS_AFTER: dict[str, str] = {"readings": "7 days", "rollup_1m": "30 days"}


@dataclass(frozen=True)
class ServerFeatures:
    """What the connected server can do; decides hypertables, policies and the retention job."""

    server_version: str
    timescaledb_version: str | None
    license: str | None

    @property
    def hypertables(self) -> bool:
        return self.timescaledb_version is not None

    @property
    def community_features(self) -> bool:
        """Compression, continuous aggregates and job policies: Timescale-License builds only."""
        return self.hypertables and self.license == "timescale"

    def describe(self) -> str:
        if not self.hypertables:
            return (
                f"PostgreSQL {self.server_version} without TimescaleDB: hypertables, compression and "
                "retention policies are off; plain tables, retention by DELETE in the service"
            )
        if not self.community_features:
            return (
                f"TimescaleDB {self.timescaledb_version} ({self.license} edition) on PostgreSQL "
                f"{self.server_version}: hypertables on; compression and retention policies off "
                "(not in this edition); retention by drop_chunks in the service"
            )
        return (
            f"TimescaleDB {self.timescaledb_version} (Community edition) on PostgreSQL "
            f"{self.server_version}: hypertables, compression and retention policies on"
        )


@dataclass
class MigrationReport:
    applied: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    features: ServerFeatures | None = None
    roles: DeploymentRoles | None = None


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every bundled migration, in order."""
    sql_dir = resources.files("schemas") / "sql"
    names = sorted(p.name for p in sql_dir.iterdir() if p.name.endswith(".sql"))
    return [(n.removesuffix(".sql"), (sql_dir / n).read_text(encoding="utf-8")) for n in names]


async def detect_features(conn: asyncpg.Connection) -> ServerFeatures:
    server_version = await conn.fetchval("SHOW server_version")
    available = await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    ts_version = None
    if available:
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            ts_version = await conn.fetchval(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
            )
        except asyncpg.PostgresError as e:  # e.g. not in shared_preload_libraries
            log.warning("timescaledb is installed but cannot be loaded: %s", e)
    license_ = None
    if ts_version:
        license_ = await conn.fetchval("SELECT current_setting('timescaledb.license', true)")
    return ServerFeatures(str(server_version).split()[0], ts_version, license_)


async def migrate(conn: asyncpg.Connection, role_prefix: str | None = None) -> MigrationReport:
    """Apply pending migrations, server features and the access model (schemas/access.py); safe
    to run twice and concurrently."""
    report = MigrationReport()
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        report.features = await detect_features(conn)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version text PRIMARY KEY, checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"]: r["checksum"] for r in await conn.fetch("SELECT * FROM schema_migrations")}
        for version, sql in migration_files():
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if version in done:
                if done[version] != checksum:
                    log.warning("migration %s changed since it was applied; not re-running it", version)
                report.already.append(version)
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)", version, checksum
                )
            report.applied.append(version)
            log.info("applied migration %s", version)
        await apply_server_features(conn, report.features)
        await sync_catalog(conn)
        report.roles = await apply_access(conn, role_prefix)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    log.info("database: %s", report.features.describe())
    return report


async def apply_server_features(conn: asyncpg.Connection, features: ServerFeatures) -> None:
    if not features.hypertables:
        return
    for table, (column, interval) in HYPERTABLES.items():
        await conn.execute(
            f"SELECT create_hypertable('{table}', by_range('{column}', INTERVAL '{interval}'), "
            f"create_default_indexes => {'false' if table == 'readings' else 'true'}, "
            "if_not_exists => true, migrate_data => true)"
        )
    # chunks are time ranges already; a time index on readings would only slow the inserts down
    # (plain PostgreSQL keeps it: retention deletes by time there)
    await conn.execute("DROP INDEX IF EXISTS readings_time_idx")
    if not features.community_features:
        return
    # TimescaleDB refuses compression on a table with row-level security; the hypertables have
    # none (readers go through views, schemas/access.py), so the Community edition compresses them
    for table, after in COMPRESS_AFTER.items():
        await conn.execute(
            f"ALTER TABLE {table} SET (timescaledb.compress, "
            "timescaledb.compress_segmentby = 'device_key, metric_id')"
        )
        await conn.execute(
            f"SELECT add_compression_policy('{table}', INTERVAL '{after}', if_not_exists => true)"
        )


async def sync_catalog(conn: asyncpg.Connection) -> None:
    """Upsert the metric catalog (schemas.metrics) so the database knows every canonical metric."""
    from schemas.metrics import METRICS

    await conn.executemany(
        """INSERT INTO metrics (name, canonical_unit, kind, aggregation, plausible_min, plausible_max,
                            description)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (name) DO UPDATE SET canonical_unit = EXCLUDED.canonical_unit, kind = EXCLUDED.kind,
               aggregation = EXCLUDED.aggregation, plausible_min = EXCLUDED.plausible_min,
               plausible_max = EXCLUDED.plausible_max, description = EXCLUDED.description""",
        [
            (m.name, m.canonical_unit, m.kind, m.aggregation, m.plausible_min, m.plausible_max, m.description)
            for m in METRICS.values()
        ],
    )
