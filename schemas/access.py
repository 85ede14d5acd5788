"""Who may touch what in a citykpi database: the deployment's roles, their grants, the reader functions.

Applied by `citykpi migrate` (as the schema owner) after the SQL migrations, every time, so a table
added later gets its grants here. The model (SECURITY.md):

- `<prefix>_ingest` writes readings, rollups, devices, batches and dead letters; `<prefix>_kpi` reads
  the data and writes kpi_values. Both see every city by design.
- `<prefix>_reader` holds USAGE on the `reader` schema, EXECUTE on its functions and SELECT on its
  views, nothing else: no privilege on any table, hypertable or chunk, so row-level security (which
  chunks ignore) is not what isolates cities. Each function (READER_TABLES) is SECURITY DEFINER,
  owned by `<prefix>_definer` (NOLOGIN, not a superuser, no member but a non-superuser schema
  owner), pins its search_path and returns the rows of the session's login's cities
  (city_readers / platform_readers); a table that grows with time is read between two bounds
  (`reader.rollup_1h(from, to)`), the others through a view of the table's name over the function.
  A reader's query never reaches a multi-city table's plan, so EXPLAIN estimates nothing from it.
- The prefix keeps two deployments on one cluster apart; by default it is the database's name.
- The tables behind the functions keep no planner statistics on their values (defence in depth).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass

import asyncpg

log = logging.getLogger(__name__)

READER_SCHEMA = "reader"
PREFIX_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")

# Tables that decide who reads what: only the owner touches them.
ACCESS_TABLES = ("city_readers", "platform_readers", "deployment_roles", "schema_migrations")

# ingest: what the writer, the quality job, retention and `deadletters requeue` need.
INGEST_GRANTS = (
    "SELECT ON cities, metrics, devices",
    "INSERT (city_id, name, timezone), UPDATE (name, timezone) ON cities",
    "INSERT ON devices",
    "SELECT, INSERT ON readings",
    "UPDATE (flags) ON readings",
    "SELECT, INSERT, UPDATE ON rollup_1m, rollup_15m, rollup_1h, rollup_1d",
    "SELECT, INSERT, UPDATE ON meter_state",
    "SELECT, INSERT, UPDATE ON kpi_pending_days",
    "INSERT ON ingest_batches",
    "SELECT (batch_id), UPDATE (stored, committed_at) ON ingest_batches",
    "SELECT, INSERT ON dead_letters",
    "UPDATE (requeued_at) ON dead_letters",
    "SELECT ON alert_rules",  # the alert job (processors/alerts.py)
    "SELECT, INSERT ON alerts",
    "UPDATE (notified_at) ON alerts",
    "SELECT, INSERT, UPDATE, DELETE ON alert_cursors, alert_open",
    "SELECT, INSERT, UPDATE ON sparkplug_sessions",
)
KPI_WRITES = "INSERT, UPDATE, DELETE ON kpi_values, kpi_value_revisions, kpi_pending_days, eu_aqi_hourly"

# Row counts and sizes of every table and chunk (all cities together); a superuser owner takes
# them from PUBLIC in this database. pg_class.reltuples stays public: clients need pg_class.
STATISTICS_VIEWS = tuple(
    f"pg_catalog.pg_{kind}_{scope}_{what}"
    for kind in ("stat", "statio", "stat_xact")
    for scope in ("all", "user", "sys")
    for what in ("tables", "indexes")
    if not (kind == "stat_xact" and what == "indexes")
)

# TimescaleDB's internal chunk functions that check no privilege before 2.22 (upstream #10386):
# any login could drop or freeze every city's chunks. Only the owner calls them.
UNCHECKED_CHUNK_FUNCTIONS = (
    "drop_chunk",
    "drop_osm_chunk",
    "create_compressed_chunk",
    "freeze_chunk",
    "unfreeze_chunk",
    "hypertable_osm_range_update",
    "lock_osm_chunk_dimension_slice",
)

# Built-in functions any login may call that reach past the reader functions, revoked from PUBLIC
# in the deployment's database by a superuser owner (SECURITY.md, Side channels): the counters
# behind the statistics views, per table, chunk, function and database (pg_stat_get_*(oid)); advisory
# locks, with which a reader could hold the KPI refresh's per-city lock or the migration's and stall
# them; large objects, the one thing a reader could otherwise write (lo_from_bytea, lo_create).
SIDE_CHANNEL_FUNCTIONS = (
    "SELECT p.oid::regprocedure::text, p.proname ~ 'advisory' FROM pg_catalog.pg_proc p "
    "WHERE p.pronamespace = 'pg_catalog'::regnamespace AND ("
    " (p.proname LIKE 'pg\\_stat\\_get\\_%' AND p.pronargs > 0 AND p.proargtypes[0] = 'oid'::regtype)"
    " OR p.proname LIKE 'pg\\_%advisory\\_%' OR p.proname ~ '^lo(_|read$|write$)')"
)

# The cities the session's login may read: its own rows in city_readers, or all of them.
# A grant is the role's, not the name's (migration 0026): name and OID both match the session's.
SESSION_ROLE_OID = "(SELECT a.oid FROM pg_catalog.pg_roles a WHERE a.rolname = session_user)"
VISIBLE_CITIES = (
    "SELECT c.city_id FROM public.cities c "
    "WHERE c.city_id IN (SELECT r.city_id FROM public.city_readers r "
    f"WHERE r.role_name = session_user AND r.role_oid = {SESSION_ROLE_OID}) "
    "OR EXISTS (SELECT 1 FROM public.platform_readers p "
    f"WHERE p.role_name = session_user AND p.role_oid = {SESSION_ROLE_OID})"
)
CITY_FILTER = f"t.city_id IN ({VISIBLE_CITIES})"
DEVICE_FILTER = (
    f"t.device_key IN (SELECT d.device_key FROM public.devices d WHERE d.city_id IN ({VISIBLE_CITIES}))"
)
PLATFORM_ONLY = (
    "EXISTS (SELECT 1 FROM public.platform_readers p "
    f"WHERE p.role_name = session_user AND p.role_oid = {SESSION_ROLE_OID})"
)


@dataclass(frozen=True)
class ReaderTable:
    """How a reader reads one table: `reader.<table>(...)`, a SECURITY DEFINER function returning
    the rows of `filter` (over the table as `t`), between two bounds on `time_column` if the table
    grows with time, else with no argument and a view of the table's name over it. `rows` is the
    fixed estimate the planner uses for it, whatever the data (SECURITY.md, Statistics)."""

    filter: str
    rows: int
    time_column: str | None = None


# Every table a reader may read but the shared metric catalog (a plain view).
READER_TABLES: dict[str, ReaderTable] = {
    "cities": ReaderTable(CITY_FILTER, 10),
    "devices": ReaderTable(CITY_FILTER, 1000),
    "areas": ReaderTable(CITY_FILTER, 100),
    "city_facts": ReaderTable(CITY_FILTER, 100),
    "kpi_targets": ReaderTable(CITY_FILTER, 100),
    "kpi_values": ReaderTable(CITY_FILTER, 1000),  # KPIs x components x areas x periods: no range
    "kpi_value_revisions": ReaderTable(CITY_FILTER, 1000),
    "alerts": ReaderTable(CITY_FILTER, 1000),  # expired by citykpi_expire_alerts
    "sparkplug_sessions": ReaderTable(CITY_FILTER, 100),  # edge nodes and devices online/offline
    "readings": ReaderTable(DEVICE_FILTER, 100_000, "time"),
    "rollup_1m": ReaderTable(DEVICE_FILTER, 100_000, "bucket"),
    "rollup_15m": ReaderTable(DEVICE_FILTER, 10_000, "bucket"),
    "rollup_1h": ReaderTable(DEVICE_FILTER, 10_000, "bucket"),
    "rollup_1d": ReaderTable(DEVICE_FILTER, 1000, "bucket"),
    "eu_aqi_hourly": ReaderTable(CITY_FILTER, 10_000, "bucket"),
    "dead_letters": ReaderTable(CITY_FILTER, 1000, "received_at"),  # one without a city is the platform's
    "ingest_batches": ReaderTable(PLATFORM_ONLY, 10_000, "committed_at"),  # topics of every city
}
READER_CATALOG = "metrics"  # the same for every city: a plain view of the table
# The tables behind the reader functions, all holding several cities' rows: no planner statistics on
# them but for the keys and times (SECURITY.md, Statistics: defence in depth).
MULTI_CITY_TABLES = tuple(READER_TABLES)
KEY_COLUMNS = ("time", "bucket", "device_key", "metric_id", "city_id")


@dataclass(frozen=True)
class DeploymentRoles:
    """The NOLOGIN roles of one deployment; login roles are granted these."""

    prefix: str

    @property
    def ingest(self) -> str:
        return f"{self.prefix}_ingest"

    @property
    def kpi(self) -> str:
        return f"{self.prefix}_kpi"

    @property
    def reader(self) -> str:
        return f"{self.prefix}_reader"

    @property
    def definer(self) -> str:
        """Owns the reader functions and views; NOLOGIN, and no login is ever made a member of it."""
        return f"{self.prefix}_definer"

    def all(self) -> tuple[str, str, str, str]:
        return (self.ingest, self.kpi, self.reader, self.definer)


def derive_prefix(database: str) -> str:
    """A valid role prefix from a database name: lower case, [a-z0-9_], at most 40 characters. A
    name that had to change keeps a hash of the original, so two databases whose names differ
    only past the cut (or in case or punctuation) still get different roles."""
    prefix = re.sub(r"[^a-z0-9_]", "_", database.lower())
    if not prefix[:1].isalpha() and prefix[:1] != "_":
        prefix = f"_{prefix}"
    if prefix != database or len(prefix) > 40:
        prefix = f"{prefix[:31]}_{hashlib.sha256(database.encode()).hexdigest()[:8]}"
    return prefix


async def deployment_roles(conn: asyncpg.Connection, configured: str | None = None) -> DeploymentRoles:
    """The prefix fixed by the first migrate, else the configured one, else the database's name."""
    stored = None
    if await conn.fetchval("SELECT to_regclass('public.deployment_roles') IS NOT NULL"):
        stored = await conn.fetchval("SELECT prefix FROM public.deployment_roles")
    if stored is not None and configured is not None and stored != configured:
        raise ValueError(
            f"this database's roles use the prefix {stored!r}, not {configured!r}: "
            "set database.role_prefix to it (a prefix cannot change after the first migrate)"
        )
    prefix = stored or configured or derive_prefix(await conn.fetchval("SELECT current_database()"))
    if not PREFIX_PATTERN.match(prefix):
        raise ValueError(f"role prefix {prefix!r} must match {PREFIX_PATTERN.pattern}")
    return DeploymentRoles(prefix)


async def _ensure_group_role(conn: asyncpg.Connection, name: str) -> None:
    """Create a NOLOGIN role, or accept an existing one only if it could not log in or bypass anything."""
    row = await conn.fetchrow(
        "SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreaterole FROM pg_roles WHERE rolname = $1", name
    )
    if row is None:
        with contextlib.suppress(asyncpg.DuplicateObjectError):  # another migrate made it meanwhile
            await conn.execute(f'CREATE ROLE "{name}" NOLOGIN')
    elif any(row.values()):
        raise ValueError(
            f"role {name} exists and can log in or holds SUPERUSER/BYPASSRLS/CREATEROLE: "
            "choose another database.role_prefix"
        )


async def apply_access(conn: asyncpg.Connection, configured_prefix: str | None = None) -> DeploymentRoles:
    """Create the deployment's roles and (re)apply every grant, reader function and view; idempotent."""
    roles = await deployment_roles(conn, configured_prefix)
    ingest, kpi, reader, definer = (f'"{r}"' for r in roles.all())
    async with conn.transaction():
        for name in roles.all():
            await _ensure_group_role(conn, name)
        await conn.execute(
            "INSERT INTO public.deployment_roles (prefix) VALUES ($1) ON CONFLICT DO NOTHING", roles.prefix
        )
        db = await conn.fetchval("SELECT quote_ident(current_database())")
        # temporary objects only for the service's roles: a reader has nothing to shadow with
        await conn.execute(f"REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC")
        # only this deployment's logins connect: another deployment's roles stop at the door
        await conn.execute(f"GRANT CONNECT ON DATABASE {db} TO CURRENT_USER")
        await conn.execute(f"REVOKE CONNECT ON DATABASE {db} FROM PUBLIC")
        await conn.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {ingest}, {kpi}")
        await conn.execute(f"GRANT CONNECT ON DATABASE {db} TO {reader}")
        await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        await conn.execute(f"GRANT USAGE ON SCHEMA public TO {ingest}, {kpi}, {definer}")
        for grant in INGEST_GRANTS:
            await conn.execute(f"GRANT {grant} TO {ingest}")
        await conn.execute(
            "GRANT EXECUTE ON FUNCTION public.citykpi_apply_retention(text, integer), "
            "public.citykpi_expire_alerts(integer, boolean), "
            "public.citykpi_delete_empty_rollup_buckets(text, integer[], smallint[], bigint[], smallint) "
            f"TO {ingest}"
        )
        access_tables = ", ".join(f"public.{t}" for t in ACCESS_TABLES)
        await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {kpi}, {definer}")
        await conn.execute(f"REVOKE ALL ON {access_tables} FROM {kpi}")
        await conn.execute(f"GRANT {KPI_WRITES} TO {kpi}")
        superuser = await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        await _apply_reader_views(conn, roles, superuser)
        await _delete_grants_of_dropped_roles(conn)
        if superuser:
            views = ", ".join(STATISTICS_VIEWS)
            await conn.execute(f"REVOKE SELECT ON {views} FROM PUBLIC")
            await conn.execute(f"GRANT SELECT ON {views} TO pg_monitor, {ingest}, {kpi}")
            chunk_functions = await conn.fetch(
                "SELECT p.oid::regprocedure::text FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname IN ('_timescaledb_functions', '_timescaledb_internal') "
                "AND p.proname = ANY($1)",
                list(UNCHECKED_CHUNK_FUNCTIONS),
            )
            side_channels = await conn.fetch(SIDE_CHANNEL_FUNCTIONS)
            revoked = [r[0] for r in chunk_functions] + [f for f, _ in side_channels]
            await conn.execute(f"REVOKE EXECUTE ON FUNCTION {', '.join(revoked)} FROM PUBLIC")
            advisory = ", ".join(f for f, is_lock in side_channels if is_lock)
            # the KPI refresh serialises on one per city and period
            await conn.execute(f"GRANT EXECUTE ON FUNCTION {advisory} TO {ingest}, {kpi}")
        elif await conn.fetchval(
            "SELECT p.proacl IS NULL OR 0 = ANY (SELECT a.grantee FROM aclexplode(p.proacl) a) "
            "FROM pg_proc p WHERE p.oid = 'pg_catalog.pg_advisory_lock(bigint)'::regprocedure"
        ):
            log.warning(
                "the schema owner is not a superuser: every login here may still call the statistics "
                "counters, advisory locks and large-object functions and select the statistics views "
                "(SECURITY.md, Side channels); run citykpi migrate once as a superuser to revoke them"
            )
    # in a transaction of its own: its ALTER TABLE waits for a running autovacuum ANALYZE, which on
    # PostgreSQL 17 would wait for the pg_class rows the GRANTs above changed (a deadlock seen in
    # the bench); holding nothing, it makes the server cancel the ANALYZE instead
    async with conn.transaction():
        await _remove_planner_statistics(conn, superuser)
    return roles


async def _delete_grants_of_dropped_roles(conn: asyncpg.Connection) -> None:
    """Reader grants whose role was dropped grant nothing (they name its OID), but they are the
    operator's loose end: name them once and delete them."""
    dropped = await conn.fetch(
        "WITH gone AS ("
        " DELETE FROM public.city_readers r WHERE NOT EXISTS"
        "  (SELECT 1 FROM pg_catalog.pg_roles a WHERE a.oid = r.role_oid) RETURNING r.role_name, r.city_id"
        "), gone_platform AS ("
        " DELETE FROM public.platform_readers p WHERE NOT EXISTS"
        "  (SELECT 1 FROM pg_catalog.pg_roles a WHERE a.oid = p.role_oid) RETURNING p.role_name, NULL::text"
        ") SELECT * FROM gone UNION ALL SELECT * FROM gone_platform ORDER BY 1, 2"
    )
    if dropped:
        log.warning(
            "deleted %d reader grant(s) of dropped roles (inert since their role was dropped): %s",
            len(dropped),
            ", ".join(f"{r[0]} ({r[1] or 'every city'})" for r in dropped),
        )


def reader_function(table: str, spec: ReaderTable) -> str:
    """CREATE OR REPLACE of `reader.<table>`: a custom plan per call (the bounds are constants, so
    TimescaleDB excludes chunks at planning), names qualified, nothing resolved in pg_temp, and no
    server message below WARNING sent to the caller from inside (a reader's `debug_print_plan` or
    `trace_sort` with `client_min_messages = debug5` would print the function's own plans: every
    table, chunk and estimate behind it)."""
    arguments, where = "", spec.filter
    if spec.time_column:
        arguments = "time_from timestamptz, time_to timestamptz"
        where = f"t.{spec.time_column} BETWEEN time_from AND time_to AND {where}"
    return (
        f"CREATE OR REPLACE FUNCTION {READER_SCHEMA}.{table}({arguments}) RETURNS SETOF public.{table} "
        f"LANGUAGE plpgsql STABLE SECURITY DEFINER ROWS {spec.rows} "
        "SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_custom_plan "
        "SET client_min_messages = warning "
        f"AS $fn$ BEGIN RETURN QUERY SELECT t.* FROM public.{table} t WHERE {where}; END $fn$"
    )


async def _apply_reader_views(conn: asyncpg.Connection, roles: DeploymentRoles, superuser: bool) -> None:
    """The reader schema, its functions and views, created as the definer so the definer owns them.

    A reader's query sees only a function's output: its WHERE clause is estimated above a Function
    Scan (fixed ROWS, default selectivities), never from a multi-city table's statistics, and a
    SECURITY DEFINER function is never inlined into the reader's plan."""
    definer, reader = f'"{roles.definer}"', f'"{roles.reader}"'
    if not superuser:
        await conn.execute(f"GRANT {definer} TO CURRENT_USER")  # SET ROLE needs membership
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {READER_SCHEMA} AUTHORIZATION {definer}")
    await conn.execute(f"REVOKE ALL ON SCHEMA {READER_SCHEMA} FROM PUBLIC")
    await conn.execute(f"GRANT SELECT ON public.city_readers, public.platform_readers TO {definer}")
    await conn.execute(f"SET LOCAL ROLE {definer}")
    # the security_barrier views over the tables that databases migrated before the functions hold
    for table, spec in READER_TABLES.items():
        if spec.time_column:
            await conn.execute(f"DROP VIEW IF EXISTS {READER_SCHEMA}.{table}")
    for table, spec in READER_TABLES.items():
        await conn.execute(reader_function(table, spec))
        if not spec.time_column:
            await conn.execute(
                f"CREATE OR REPLACE VIEW {READER_SCHEMA}.{table} AS SELECT * FROM {READER_SCHEMA}.{table}()"
            )
    await conn.execute(f"DROP VIEW IF EXISTS {READER_SCHEMA}.visible_cities")
    catalog = f"{READER_SCHEMA}.{READER_CATALOG}"
    await conn.execute(f"CREATE OR REPLACE VIEW {catalog} AS SELECT t.* FROM public.{READER_CATALOG} t")
    await conn.execute(f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {READER_SCHEMA} FROM PUBLIC")
    await conn.execute("RESET ROLE")
    await conn.execute(f"GRANT USAGE ON SCHEMA {READER_SCHEMA} TO {reader}")
    await conn.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {READER_SCHEMA} TO {reader}")
    await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {READER_SCHEMA} TO {reader}")


async def _remove_planner_statistics(conn: asyncpg.Connection, superuser: bool) -> None:
    """No column or extended statistics on MULTI_CITY_TABLES and their chunks but the keys'
    (SECURITY.md, Statistics): defence in depth, should a relation over one of them ever be granted
    to a reader again, whose EXPLAIN would estimate its WHERE clause from every city's histogram.
    A statistics target of 0 stops ANALYZE collecting (TimescaleDB copies it to existing and new
    chunks); the rows ANALYZE collected before stay in pg_statistic until deleted, which only a
    superuser may do."""
    tables = await conn.fetch(
        "SELECT c.oid::regclass::text AS name, array_agg(quote_ident(a.attname) ORDER BY a.attnum) "
        "FILTER (WHERE a.attstattarget IS DISTINCT FROM 0 AND a.attname <> ALL($2::text[])) AS columns "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY($1::text[]) "
        "AND c.relkind IN ('r', 'p', 'm') AND a.attnum > 0 AND NOT a.attisdropped GROUP BY c.oid",
        list(MULTI_CITY_TABLES),
        list(KEY_COLUMNS),
    )
    for table in tables:
        if table["columns"]:
            clauses = ", ".join(f"ALTER COLUMN {column} SET STATISTICS 0" for column in table["columns"])
            await conn.execute(f"ALTER TABLE {table['name']} {clauses}")
    for statistics in await conn.fetch(
        "SELECT format('%I.%I', s.stxnamespace::regnamespace, s.stxname) FROM pg_catalog.pg_statistic_ext s "
        "JOIN pg_catalog.pg_class c ON c.oid = s.stxrelid "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY($1::text[])",
        list(MULTI_CITY_TABLES),
    ):
        await conn.execute(f"DROP STATISTICS {statistics[0]}")
    if superuser:
        await conn.execute(
            "DELETE FROM pg_catalog.pg_statistic s USING pg_catalog.pg_attribute a "
            "WHERE a.attrelid = s.starelid AND a.attnum = s.staattnum AND a.attstattarget = 0"
        )
    elif stale := await conn.fetchval(
        "SELECT count(DISTINCT (s.schemaname, s.tablename)) FROM pg_catalog.pg_stats s "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = format('%I.%I', s.schemaname, s.tablename)::regclass "
        "AND a.attname = s.attname WHERE a.attstattarget = 0"
    ):
        log.warning(
            "%d tables or chunks behind the reader functions keep planner statistics collected before "
            "their statistics target became 0: only a superuser can delete them, see SECURITY.md",
            stale,
        )
