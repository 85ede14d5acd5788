"""A hostile city reader, ingest login and KPI login against the access model (SECURITY.md), on both
servers: each attack either fails with a privilege error or changes nothing, and the reader never
sees a row of the other city.

The database holds two cities, `demo` and `other`, with readings (TimescaleDB chunks), rollups, KPI
values, station-hour AQI, dead letters and city facts for both; the reader is a `citykpi_grant_reader`
login of demo. One long module on purpose: it is the threat model read in one place,
every attack against the same fixture and the same access model (schemas/access.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from core.config import Settings
from processors.writer import TimescaleWriter, WriteBatch
from schemas.access import KEY_COLUMNS, MULTI_CITY_TABLES, READER_CATALOG, READER_TABLES
from schemas.migrations import migrate
from tests.conftest import PrivateMosquitto, as_login, deployment_of, make_login

pytestmark = pytest.mark.integration

# at the top of an hour, so both cities' readings share one chunk (and one 1 h rollup bucket)
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
DEMO_VALUES = [10.0 + i for i in range(10)]  # the other city's values are 50 and above
OTHER_OFFSET = timedelta(minutes=30)  # the other city's readings: half an hour after demo's

# Every object the reader functions, the access functions and retention name, as a reader would shadow them.
SHADOWED_RELATIONS = (*READER_TABLES, READER_CATALOG, "city_readers", "platform_readers", "deployment_roles")
SHADOWED_FUNCTIONS = (
    "now()",
    "make_interval(days integer)",
    "format(f text, VARIADIC a text[])",
    "drop_chunks(relation regclass, older_than timestamptz)",
    "current_database()",
    "pg_has_role(a text, b text, c text)",
)
KPI_WRITES = (
    "INSERT INTO public.kpi_values (city_id, kpi_code, period_kind, period_start, unit) "
    "VALUES ('other', 'x', 'year', '2026-01-01', 'u')",
    "UPDATE public.kpi_values SET value = -1",
    "DELETE FROM public.kpi_values",
)

PRIVILEGE_ERRORS = (asyncpg.InsufficientPrivilegeError,)
ALL_TIME = "('-infinity', 'infinity')"  # the bounds of a reader function over a table that grows with time


def reader_source(table: str) -> str:
    """What a reader selects from to read `table`: its view, or its function over all time."""
    time_range = ALL_TIME if table in READER_TABLES and READER_TABLES[table].time_column else ""
    return f"reader.{table}{time_range}"


@dataclass
class TwoCities:
    owner_dsn: str
    reader_dsn: str
    reader: str


@pytest.fixture
async def two_cities(any_db: str) -> AsyncIterator[TwoCities]:
    owner = await asyncpg.connect(any_db)
    try:
        await owner.execute("INSERT INTO cities (city_id, name) VALUES ('other', 'Other City')")
        for city, value in (("demo", 1.0), ("other", 99.0)):
            await owner.execute(
                "INSERT INTO kpi_values (city_id, kpi_code, period_kind, period_start, unit, value) "
                "VALUES ($1, 'EN/EQ/AQ/1', 'year', $2, 'µg/m³', $3)",
                city,
                date(2026, 1, 1),
                value,
            )
            await owner.execute(
                "INSERT INTO city_facts (city_id, key, value, valid_from) VALUES ($1, 'population', $2, $3)",
                city,
                value * 1000,
                date(2020, 1, 1),
            )
            await owner.execute(
                "INSERT INTO dead_letters (source, city_id, device_id, reason) VALUES ('test', $1, 'x', 'r')",
                city,
            )
            # Sparkplug B state and alert events: what an edge node declared (metric names,
            # aliases, bdSeq, seq) and what a rule saw (value, threshold, device, times) differ
            # per city, so the views and EXPLAIN estimates have the other city's values to hide
            await owner.execute(
                "INSERT INTO sparkplug_sessions (city_id, group_id, edge_node_id, device_id, online, "
                "bd_seq, seq, metrics, born_at) VALUES ($1, $1, $1 || '-gateway', 'meter-' || $1, true, "
                "$2::bigint, $2::integer, jsonb_build_array(jsonb_build_object('name', $1 || '/energy', "
                "'alias', $2::bigint, 'datatype', 10)), $3)",
                city,
                int(value),
                T0 + (OTHER_OFFSET if city == "other" else timedelta(0)),
            )
            await owner.execute(
                "INSERT INTO alerts (alert_id, event, at, rule_id, city_id, device_id, metric, statistic, "
                "severity, value, threshold, opened_at) VALUES (gen_random_uuid(), 'opened', $3, "
                "$1 || '-pm25-high', $1, $1 || '-air', 'pm25', 'reading', $4, $2::float8, "
                "$2::float8 - 0.5, $3)",
                city,
                value,
                T0 + (OTHER_OFFSET if city == "other" else timedelta(0)),
                "critical" if city == "other" else "info",
            )
    finally:
        await owner.close()
    batch = WriteBatch(source="test")
    for i in range(10):
        batch.add("demo", "air-1", "pm25", T0 + timedelta(minutes=i), DEMO_VALUES[i])
        batch.add("other", "air-1", "pm25", T0 + OTHER_OFFSET + timedelta(minutes=i), 50.0 + i)
    async with TimescaleWriter(any_db) as w:
        await w.write(batch)
    owner = await asyncpg.connect(any_db)
    try:
        await owner.execute(
            "INSERT INTO eu_aqi_hourly (city_id, device_key, bucket, pm25, band) "
            "SELECT city_id, device_key, $1, band, band FROM devices, "
            "(VALUES ('demo', 2), ('other', 5)) AS v(c, band) WHERE city_id = c",
            T0,
        )
        await owner.execute("ANALYZE")  # so pg_stats has histograms to leak
        role = f"reader_demo_{uuid.uuid4().hex[:6]}"
        await owner.execute("SELECT citykpi_grant_reader($1, 'demo', 'pw')", role)
    finally:
        await owner.close()
    yield TwoCities(any_db, as_login(any_db, role), role)


async def _reader_sees_only_demo(conn: asyncpg.Connection) -> None:
    """The functions and views (unqualified names, through the reader's search_path) show demo's rows only."""
    values = await conn.fetch(f"SELECT value FROM readings{ALL_TIME} ORDER BY value")
    assert [r[0] for r in values] == DEMO_VALUES
    assert {r[0] for r in await conn.fetch("SELECT city_id FROM cities")} == {"demo"}
    assert {r[0] for r in await conn.fetch("SELECT city_id FROM devices")} == {"demo"}
    assert {r[0] for r in await conn.fetch("SELECT city_id FROM kpi_values")} == {"demo"}
    assert {r[0] for r in await conn.fetch(f"SELECT city_id FROM dead_letters{ALL_TIME}")} == {"demo"}
    assert {r[0] for r in await conn.fetch("SELECT city_id FROM sparkplug_sessions")} == {"demo"}
    assert {r[0] for r in await conn.fetch("SELECT device_id FROM alerts")} == {"demo-air"}
    assert {r[0] for r in await conn.fetch("SELECT city_id FROM city_facts")} == {"demo"}
    aqi = await conn.fetch(f"SELECT city_id, band FROM eu_aqi_hourly{ALL_TIME}")
    assert [tuple(r) for r in aqi] == [("demo", 2)]
    assert await conn.fetchval(f"SELECT max(max) FROM rollup_1m{ALL_TIME}") == max(DEMO_VALUES)
    assert await conn.fetchval(f"SELECT count(*) FROM ingest_batches{ALL_TIME}") == 0


async def _other_city_untouched(owner_dsn: str) -> None:
    owner = await asyncpg.connect(owner_dsn)
    try:
        assert await owner.fetchval("SELECT value FROM kpi_values WHERE city_id = 'other'") == 99.0
        assert await owner.fetchval("SELECT count(*) FROM readings") == 20
        assert await owner.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = 'pwned'") == 0
    finally:
        await owner.close()


async def _allowed(conn: asyncpg.Connection, statements: list[str]) -> list[str]:
    """The statements that ran: each of the others was refused with a privilege error."""
    allowed = []
    for statement in statements:
        try:
            await conn.execute(statement)
            allowed.append(statement)
        except PRIVILEGE_ERRORS:
            pass
    return allowed


async def _cannot_gain_privilege(
    conn: asyncpg.Connection, roles_to_try: list[str], *also_refused: str
) -> None:
    """Role switching, catalog secrets, DDL, the owner's functions: each one refused."""
    attempts = [
        *also_refused,
        *(f'SET ROLE "{r}"' for r in roles_to_try),
        *(f'SET SESSION AUTHORIZATION "{r}"' for r in roles_to_try),
        "CREATE ROLE pwned LOGIN SUPERUSER",
        "CREATE ROLE pwned",
        "SELECT rolpassword FROM pg_authid",
        "CREATE TABLE public.pwned (x int)",
        "CREATE SCHEMA pwned",
        "CREATE FUNCTION public.pwned() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "SELECT citykpi_grant_reader('pwned', 'other', 'pw')",
        "SELECT citykpi_revoke_reader('postgres', NULL)",
        "SELECT citykpi_grant_service(session_user, 'kpi', NULL)",
        "SELECT citykpi_join_group(session_user, 'definer')",
        "SELECT citykpi_ensure_login('pwned', 'pw')",
        "SELECT * FROM public.city_readers",
        "INSERT INTO public.city_readers VALUES (session_user, 'other')",
        "INSERT INTO public.platform_readers VALUES (session_user)",
        "ALTER TABLE public.readings ENABLE ROW LEVEL SECURITY",
        "SELECT lo_import('/etc/passwd')",
        "COPY public.kpi_values TO PROGRAM 'id'",
        "SELECT pg_read_file('pg_hba.conf')",
    ]
    assert not await _allowed(conn, attempts)
    for statement in (
        "SELECT session_user = current_user",
        "SELECT NOT rolsuper FROM pg_roles WHERE rolname = current_user",
    ):
        assert await conn.fetchval(statement)


async def test_reader_sees_only_its_city_through_views_and_nothing_below_them(
    two_cities: TwoCities, server_url: str
) -> None:
    """No privilege on any table, hypertable or chunk: only the reader functions answer."""
    chunks: list[str] = []
    if "15433" in server_url:
        owner = await asyncpg.connect(two_cities.owner_dsn)
        try:
            chunks = [
                r[0]
                for r in await owner.fetch(
                    "SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks"
                )
            ]
        finally:
            await owner.close()
        assert len(chunks) >= 4  # readings and every rollup have a chunk
    owner = await asyncpg.connect(two_cities.owner_dsn)
    try:  # every relation of the schema, present and future (other issues' tables included)
        privileged = await owner.fetch(
            "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE (n.nspname = 'public' OR c.relname LIKE '\\_hyper\\_%' OR c.relname LIKE 'compress\\_%') "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'S') AND (has_table_privilege($1, c.oid, "
            "'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') OR (c.relkind = 'S' AND "
            "has_sequence_privilege($1, c.oid, 'USAGE, SELECT, UPDATE')))",
            two_cities.reader,
        )
    finally:
        await owner.close()
    assert privileged == []
    reader = await asyncpg.connect(two_cities.reader_dsn)
    try:
        await _reader_sees_only_demo(reader)
        readable = []
        for table in [f"public.{t}" for t in (*READER_TABLES, READER_CATALOG)] + chunks:
            with contextlib.suppress(PRIVILEGE_ERRORS):
                readable.append((table, await reader.fetchval(f"SELECT count(*) FROM {table}")))
        assert not readable
        with pytest.raises(PRIVILEGE_ERRORS):
            await reader.execute("COPY public.readings TO STDOUT")
        # statistics: no histogram of any table or chunk, no per-table row counts (pg_class
        # estimates and relation sizes stay public: the platform's volume, no city's rows)
        leaked = await reader.fetchval(
            "SELECT array_agg(DISTINCT tablename) FROM pg_stats "
            "WHERE schemaname = 'public' OR tablename LIKE '\\_hyper\\_%' OR tablename LIKE 'compress\\_%'"
        )
        assert leaked is None
        for view in ("pg_stat_user_tables", "pg_statio_user_tables", "pg_stat_all_tables"):
            with pytest.raises(PRIVILEGE_ERRORS):
                await reader.fetch(f"SELECT * FROM {view}")
    finally:
        await reader.close()


async def test_reader_temp_objects_shadow_nothing_and_leaky_functions_see_nothing(
    two_cities: TwoCities,
) -> None:
    """Readers get no TEMPORARY privilege; granted it anyway, temp tables, views and functions
    named like everything the reader functions and the owner's functions use change nothing (their
    search_path is pg_catalog, pg_temp and every name qualified), and a leaky function in a WHERE
    clause is never shown the other city's rows (it sees a reader function's output only)."""
    reader = await asyncpg.connect(two_cities.reader_dsn)
    try:
        await reader.execute("SET default_transaction_read_only = off")
        with pytest.raises(PRIVILEGE_ERRORS):
            await reader.execute("CREATE TEMP TABLE city_readers (role_name text, city_id text)")
    finally:
        await reader.close()
    owner = await asyncpg.connect(two_cities.owner_dsn)
    try:
        db = await owner.fetchval("SELECT current_database()")
        await owner.execute(f'GRANT TEMPORARY ON DATABASE "{db}" TO "{two_cities.reader}"')
    finally:
        await owner.close()

    reader = await asyncpg.connect(two_cities.reader_dsn)
    notices: list[str] = []
    reader.add_log_listener(lambda _c, msg: notices.append(str(msg.message)))
    try:
        await reader.execute("SET default_transaction_read_only = off")
        for name in SHADOWED_RELATIONS:
            await reader.execute(
                f"CREATE TEMP VIEW {name} AS SELECT c.* FROM (VALUES ('{two_cities.reader}', 'other')) "
                "AS c(role_name, city_id)"
            )
        for name in SHADOWED_FUNCTIONS:
            await reader.execute(
                f"CREATE FUNCTION pg_temp.{name} RETURNS text LANGUAGE plpgsql "
                "AS $$ BEGIN CREATE ROLE pwned SUPERUSER; RETURN 'pwned'; END $$"
            )
        await reader.execute("SET search_path = pg_temp, reader, public, pg_catalog")
        for table in ("readings", "cities", "devices", "kpi_values", "dead_letters", "city_facts"):
            rows = await reader.fetch(f"SELECT * FROM {reader_source(table)}")
            assert rows and all(r.get("city_id", "demo") == "demo" for r in rows), table
        values = await reader.fetch(f"SELECT value FROM {reader_source('readings')} ORDER BY value")
        assert [r[0] for r in values] == DEMO_VALUES
        await reader.execute(
            "CREATE FUNCTION pg_temp.leak(v float8) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 "
            "AS $$ BEGIN RAISE NOTICE 'saw %', v; RETURN true; END $$"
        )
        await reader.fetch(f"SELECT * FROM {reader_source('readings')} r WHERE pg_temp.leak(r.value)")
        await reader.fetch(f"SELECT * FROM {reader_source('rollup_1m')} r WHERE pg_temp.leak(r.max)")
        await reader.fetch("SELECT * FROM reader.kpi_values k WHERE pg_temp.leak(k.value)")
        seen = {float(n.split()[1]) for n in notices if n.startswith("saw ")}
        assert seen and seen <= set(DEMO_VALUES) | {1.0}, seen
        await _cannot_gain_privilege(reader, [], *KPI_WRITES)
    finally:
        await reader.close()
    await _other_city_untouched(two_cities.owner_dsn)


async def test_reader_debug_messages_show_nothing_from_inside_the_reader_functions(
    two_cities: TwoCities,
) -> None:
    """A reader may set `client_min_messages = debug5` with `debug_print_plan`, `debug_print_parse`
    and `trace_sort` on: each query planned inside a SECURITY DEFINER function would then be sent to
    it as a LOG message (the tables and chunks behind the function, by relation OID, with their
    row estimates), and each sort's row counts. The functions pin `client_min_messages = warning`:
    the reader receives messages about its own statement only, none naming a table behind them."""
    owner = await asyncpg.connect(two_cities.owner_dsn)
    try:
        behind = await owner.fetch(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND (n.nspname = 'public' OR n.nspname LIKE '\\_timescaledb%')"
        )
    finally:
        await owner.close()
    reader = await asyncpg.connect(two_cities.reader_dsn)
    messages: list[str] = []
    reader.add_log_listener(lambda _c, msg: messages.append(f"{msg.message}\n{msg.detail or ''}"))
    try:
        for setting in ("debug_print_plan", "debug_print_parse", "debug_print_rewritten", "trace_sort"):
            await reader.execute(f"SET {setting} = on")
        await reader.execute("SET client_min_messages = debug5")
        await reader.fetch(f"SELECT * FROM {reader_source('readings')} ORDER BY value DESC")
        await reader.fetch(f"SELECT * FROM {reader_source('dead_letters')} ORDER BY received_at")
        await reader.fetch("SELECT * FROM reader.kpi_values ORDER BY value")
        await asyncio.sleep(0.1)  # log messages arrive asynchronously
    finally:
        await reader.close()
    assert any(":relid" in m or "PLAN" in m.upper() for m in messages)  # the reader's own plans
    leaked = [m for m in messages for oid in behind if f":relid {oid[0]} " in m or f":relid {oid[0]}\n" in m]
    assert not leaked, leaked[0][:500]


async def test_reader_takes_no_lock_counter_or_large_object_of_the_deployment(two_cities: TwoCities) -> None:
    """Past the reader functions, a reader with read-only turned off could hold the KPI refresh's
    advisory lock for a city (`hashtext('kpi:<city>:<period>:<start>')`) or the migration's and stall
    them, read every table's, chunk's and function's counters (pg_stat_get_*(oid), behind the
    revoked statistics views) and write large objects. Each is refused; the service logins keep the
    advisory locks the refresh needs."""
    owner = await asyncpg.connect(two_cities.owner_dsn)
    try:
        db_oid = await owner.fetchval("SELECT oid FROM pg_database WHERE datname = current_database()")
        relations = [r[0] for r in await owner.fetch("SELECT inhrelid FROM pg_inherits")]
        relations.append(await owner.fetchval("SELECT 'public.readings'::regclass::oid"))
    finally:
        await owner.close()
    attempts = [
        "SELECT pg_advisory_lock(hashtext('kpi:demo:year:2026-01-01'))",
        "SELECT pg_try_advisory_lock(1)",
        "SELECT pg_advisory_xact_lock_shared(1, 2)",
        *(f"SELECT pg_stat_get_live_tuples({oid}), pg_stat_get_tuples_inserted({oid})" for oid in relations),
        f"SELECT pg_stat_get_db_tuples_inserted({db_oid})",
        "SELECT pg_stat_get_function_calls('reader.readings(timestamptz, timestamptz)'::regprocedure)",
        "SELECT lo_from_bytea(0, 'planted')",
        "SELECT lo_create(0)",
        "SELECT count(*) FROM pg_stat_user_tables",
    ]
    reader = await asyncpg.connect(two_cities.reader_dsn)
    try:
        await reader.execute("SET default_transaction_read_only = off")
        assert not await _allowed(reader, attempts)
    finally:
        await reader.close()
    roles = deployment_of(two_cities.owner_dsn)
    for group in (roles.kpi, roles.ingest):
        service = await asyncpg.connect(await make_login(two_cities.owner_dsn, group))
        try:
            async with service.transaction():
                await service.execute("SELECT pg_advisory_xact_lock(hashtext('kpi:demo:year:2026-01-01'))")
        finally:
            await service.close()


async def test_reader_cannot_switch_roles_write_or_turn_read_only_off_to_any_effect(
    two_cities: TwoCities,
) -> None:
    roles = deployment_of(two_cities.owner_dsn)
    reader = await asyncpg.connect(two_cities.reader_dsn)
    try:
        assert await reader.fetchval("SHOW default_transaction_read_only") == "on"
        await reader.execute("SET default_transaction_read_only = off")
        await reader.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
        for statement in (
            "INSERT INTO reader.kpi_values (city_id, kpi_code, period_kind, period_start, unit) "
            "VALUES ('demo', 'x', 'year', '2026-01-01', 'u')",
            "UPDATE reader.kpi_values SET value = -1",
            "DELETE FROM reader.devices",
            "INSERT INTO reader.devices (city_id, device_id) VALUES ('other', 'x')",
            "CREATE VIEW reader.pwned AS SELECT 1",
            "ALTER VIEW reader.devices RENAME TO pwned",
            "CREATE OR REPLACE FUNCTION reader.readings(time_from timestamptz, time_to timestamptz) "
            "RETURNS SETOF public.readings LANGUAGE sql AS 'SELECT * FROM public.readings'",
            "ALTER FUNCTION reader.readings(timestamptz, timestamptz) SECURITY INVOKER",
            "ALTER FUNCTION reader.devices() RESET search_path",
            "ALTER FUNCTION reader.cities() RENAME TO pwned",
            "DROP FUNCTION reader.rollup_1h(timestamptz, timestamptz)",
        ):
            with pytest.raises((*PRIVILEGE_ERRORS, asyncpg.ObjectNotInPrerequisiteStateError)):
                await reader.execute(statement)  # a view over a function is not updatable at all
        with pytest.raises(PRIVILEGE_ERRORS):
            await reader.copy_records_to_table(
                "metrics", records=[("pwned",)], columns=["name"], schema_name="reader"
            )
        await _cannot_gain_privilege(
            reader,
            [roles.ingest, roles.kpi, roles.definer, "postgres"],
            *KPI_WRITES,
            "SET SESSION row_security = off; SELECT count(*) FROM public.readings",
        )
        await _reader_sees_only_demo(reader)
    finally:
        await reader.close()
    await _other_city_untouched(two_cities.owner_dsn)


async def test_every_security_definer_function_a_login_can_call_is_hardened(two_cities: TwoCities) -> None:
    """SECURITY DEFINER code callable by a reader, ingest or KPI login pins its search_path to
    pg_catalog, pg_temp (so nothing resolves in the caller's temporary schema)."""
    roles = deployment_of(two_cities.owner_dsn)
    logins = [two_cities.reader]
    for group in (roles.ingest, roles.kpi):
        logins.append((await make_login(two_cities.owner_dsn, group)).split("://", 1)[1].split(":", 1)[0])
    owner = await asyncpg.connect(two_cities.owner_dsn)
    try:
        rows = await owner.fetch(
            "SELECT l.login, p.oid::regprocedure::text AS fn, p.proconfig FROM pg_proc p, unnest($1::text[]) "
            "AS l(login) WHERE p.prosecdef AND has_function_privilege(l.login, p.oid, 'EXECUTE')",
            logins,
        )
    finally:
        await owner.close()
    for name in ("citykpi_apply_retention", "citykpi_expire_alerts", "citykpi_delete_empty_rollup_buckets"):
        assert any(r["fn"].startswith(name) for r in rows), name
    loose = [
        (r["login"], r["fn"]) for r in rows if "search_path=pg_catalog, pg_temp" not in (r["proconfig"] or [])
    ]
    assert not loose
    assert not [r for r in rows if r["login"] == two_cities.reader and r["fn"].startswith("citykpi")]


async def test_a_reader_reads_only_through_hardened_definer_functions(two_cities: TwoCities) -> None:
    """The reader may EXECUTE no function of the database (extensions' and the system's aside) but
    the reader functions: SECURITY DEFINER, owned by the definer role, search_path pinned to
    pg_catalog, pg_temp. It may SELECT no relation but views whose only source is such a function,
    and the shared metric catalog's view: no table, no view over one, no chunk."""
    roles = deployment_of(two_cities.owner_dsn)
    owner = await asyncpg.connect(two_cities.owner_dsn)
    try:
        functions = await owner.fetch(
            "SELECT p.oid::regprocedure::text AS fn, p.prosecdef, pg_get_userbyid(p.proowner) AS owner, "
            "p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_proc'::regclass "
            "AND e.objid = p.oid AND e.deptype = 'e') AND has_function_privilege($1, p.oid, 'EXECUTE')",
            two_cities.reader,
        )
        relations = await owner.fetch(
            "SELECT c.oid::regclass::text AS relation, c.relkind::text, array(SELECT DISTINCT "
            "d.refobjid::regclass::text FROM pg_rewrite w JOIN pg_depend d ON d.classid = "
            "'pg_rewrite'::regclass AND d.objid = w.oid WHERE w.ev_class = c.oid AND d.refclassid = "
            "'pg_class'::regclass AND d.refobjid <> c.oid AND NOT EXISTS (SELECT 1 FROM pg_depend f "
            "JOIN pg_proc p ON p.oid = f.refobjid JOIN pg_class r ON r.reltype = p.prorettype "
            "WHERE f.objid = w.oid AND f.refclassid = 'pg_proc'::regclass AND r.oid = d.refobjid)) "
            "AS tables, array(SELECT DISTINCT "
            "d.refobjid::regprocedure::text FROM pg_rewrite w JOIN pg_depend d ON d.classid = "
            "'pg_rewrite'::regclass AND d.objid = w.oid WHERE w.ev_class = c.oid AND d.refclassid = "
            "'pg_proc'::regclass) AS functions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND c.relkind IN "
            "('r', 'p', 'v', 'm', 'f') AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = "
            "'pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e') AND has_table_privilege($1, "
            "c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')",
            two_cities.reader,
        )
    finally:
        await owner.close()
    hardened = {
        f["fn"]
        for f in functions
        if f["prosecdef"]
        and f["owner"] == roles.definer
        and "search_path=pg_catalog, pg_temp" in (f["proconfig"] or [])
    }
    assert {f["fn"].split("(")[0] for f in functions} == {f"reader.{t}" for t in READER_TABLES}
    assert hardened == {f["fn"] for f in functions}
    catalog = (f"reader.{READER_CATALOG}", "v", [READER_CATALOG], [])
    loose = [
        tuple(r)
        for r in relations
        if tuple(r) != catalog and (r["relkind"] != "v" or r["tables"] or not set(r["functions"]) <= hardened)
    ]
    assert not loose
    views = {r["relation"] for r in relations}
    assert views == {f"reader.{t}" for t, spec in READER_TABLES.items() if not spec.time_column} | {
        catalog[0]
    }


async def test_ingest_login_cannot_turn_retention_into_owner_sql(two_cities: TwoCities) -> None:
    """The ingest login may call the owner's retention function: its temp functions and tables named
    like what the function uses are never reached, and it cannot aim it at another table."""
    roles = deployment_of(two_cities.owner_dsn)
    ingest = await asyncpg.connect(await make_login(two_cities.owner_dsn, roles.ingest))
    try:
        for name in SHADOWED_FUNCTIONS:
            await ingest.execute(
                f"CREATE FUNCTION pg_temp.{name} RETURNS text LANGUAGE plpgsql "
                "AS $$ BEGIN CREATE ROLE pwned SUPERUSER; RETURN 'pwned'; END $$"
            )
        for name in ("readings", "rollup_1m", "kpi_values"):
            await ingest.execute(f"CREATE TEMP TABLE {name} (time timestamptz, bucket timestamptz)")
        await ingest.execute("SET search_path = pg_temp, public")
        assert await ingest.fetchval("SELECT public.citykpi_apply_retention('readings', 1)") >= 0
        assert await ingest.fetchval("SELECT public.citykpi_apply_retention('rollup_1m', 1)") >= 0
        for target, days in (
            ("kpi_values", 1),
            ("city_readers", 1),
            ("readings; DROP TABLE x", 1),
            ("readings", 0),
        ):
            with pytest.raises(asyncpg.InvalidParameterValueError):
                await ingest.fetchval("SELECT public.citykpi_apply_retention($1, $2)", target, days)
        await _cannot_gain_privilege(ingest, [roles.definer, roles.kpi, "postgres"], *KPI_WRITES)
        with pytest.raises(PRIVILEGE_ERRORS):
            await ingest.execute("DELETE FROM public.readings")
    finally:
        await ingest.close()
    await _other_city_untouched(two_cities.owner_dsn)


async def test_kpi_login_reads_data_but_not_who_reads_what_and_gains_nothing(two_cities: TwoCities) -> None:
    roles = deployment_of(two_cities.owner_dsn)
    kpi = await asyncpg.connect(await make_login(two_cities.owner_dsn, roles.kpi))
    try:
        assert await kpi.fetchval("SELECT count(*) FROM public.readings") == 20
        await _cannot_gain_privilege(kpi, [roles.definer, roles.ingest, "postgres"])
        for statement in (
            "INSERT INTO public.readings VALUES (now(), 1, 1, 1.0, 0, 1)",
            "DELETE FROM public.devices",
        ):
            with pytest.raises(PRIVILEGE_ERRORS):
                await kpi.execute(statement)
    finally:
        await kpi.close()
    await _other_city_untouched(two_cities.owner_dsn)


async def test_two_deployments_on_one_cluster_share_no_role(any_db: str, server_url: str) -> None:
    """Each database gets its own roles (prefix: its name). A reader or ingest login of deployment
    A cannot even connect to B; with CONNECT handed out anyway, it reads none of B's rows or chunks
    and registers no device there."""
    from tests.conftest import migrated_database

    other_db = await migrated_database(server_url)
    try:
        a, b = deployment_of(any_db), deployment_of(other_db)
        assert not set(a.all()) & set(b.all())
        reader_name = f"reader_a_{a.prefix[-6:]}"
        owner_a = await asyncpg.connect(any_db)
        try:
            await owner_a.execute("SELECT citykpi_grant_reader($1, 'demo', 'pw')", reader_name)
        finally:
            await owner_a.close()
        reader_a = as_login(any_db, reader_name)
        ingest_a = await make_login(any_db, a.ingest)
        batch = WriteBatch(source="test")
        batch.add("demo", "air-b", "pm25", T0, 42.0)
        async with TimescaleWriter(other_db) as w:
            await w.write(batch)

        def into_b(login_dsn: str) -> str:
            return login_dsn.rsplit("/", 1)[0] + "/" + other_db.rsplit("/", 1)[1]

        for login in (reader_a, ingest_a):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for database"):
                await asyncpg.connect(into_b(login))

        owner_b = await asyncpg.connect(other_db)
        try:
            await owner_b.execute(f'GRANT CONNECT ON DATABASE "{other_db.rsplit("/", 1)[1]}" TO PUBLIC')
            chunks = []
            if "15433" in server_url:
                chunks = [
                    r[0]
                    for r in await owner_b.fetch(
                        "SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks"
                    )
                ]
        finally:
            await owner_b.close()
        conn = await asyncpg.connect(into_b(reader_a))
        try:
            for relation in [reader_source("readings"), "reader.cities", "public.readings", *chunks]:
                with pytest.raises(PRIVILEGE_ERRORS):
                    await conn.fetchval(f"SELECT count(*) FROM {relation}")
        finally:
            await conn.close()
        conn = await asyncpg.connect(into_b(ingest_a))
        try:
            with pytest.raises(PRIVILEGE_ERRORS):
                await conn.execute("INSERT INTO devices (city_id, device_id) VALUES ('demo', 'spoofed')")
            with pytest.raises(PRIVILEGE_ERRORS):
                await conn.fetchval("SELECT public.citykpi_apply_retention('readings', 1)")
        finally:
            await conn.close()
    finally:
        from bench.stack import drop_database

        await drop_database(server_url, other_db)


async def test_a_reader_grant_dies_with_its_role_and_never_passes_to_the_next_role_of_its_name(
    two_cities: TwoCities, caplog: pytest.LogCaptureFixture
) -> None:
    """demo's reader is dropped without `roles revoke-reader` and its name given again: to a login
    an operator puts in the reader group by hand (it reads no city), then through grant-reader to a
    reader of `other` (it reads `other` only, and grant-reader says it dropped the old demo grant).
    Another dropped reader's grant is deleted, and named, by the next migrate. Keyed by name only,
    the new role read demo in both cases."""
    reader_group = deployment_of(two_cities.owner_dsn).reader
    name = two_cities.reader
    owner = await asyncpg.connect(two_cities.owner_dsn)
    try:
        await owner.execute(f'DROP OWNED BY "{name}"')
        await owner.execute(f'DROP ROLE "{name}"')
        db = await owner.fetchval("SELECT quote_ident(current_database())")
        await owner.execute(f'CREATE ROLE "{name}" LOGIN PASSWORD \'pw\' IN ROLE "{reader_group}"')
        await owner.execute(f'ALTER ROLE "{name}" IN DATABASE {db} SET search_path = reader, public')
    finally:
        await owner.close()

    async def cities_and_readings() -> tuple[set[str], int]:
        conn = await asyncpg.connect(two_cities.reader_dsn)
        try:
            cities = {r[0] for r in await conn.fetch("SELECT city_id FROM cities")}
            return cities, await conn.fetchval(f"SELECT count(*) FROM readings{ALL_TIME}")
        finally:
            await conn.close()

    assert await cities_and_readings() == (set(), 0)
    owner = await asyncpg.connect(two_cities.owner_dsn)
    try:
        said = [r[0] for r in await owner.fetch("SELECT citykpi_grant_reader($1, 'other', NULL)", name)]
        assert f"dropped the grant of city demo left by an earlier role named {name}" in said
        assert "may now read city other" in said
        assert not any(line.startswith("also reads") for line in said)
    finally:
        await owner.close()
    assert await cities_and_readings() == ({"other"}, 10)

    gone = f"reader_gone_{uuid.uuid4().hex[:6]}"
    owner = await asyncpg.connect(two_cities.owner_dsn)
    try:
        await owner.execute("SELECT citykpi_grant_reader($1, 'demo', 'pw')", gone)
        await owner.execute(f'DROP OWNED BY "{gone}"')
        await owner.execute(f'DROP ROLE "{gone}"')
        with caplog.at_level("WARNING", logger="schemas.access"):
            await migrate(owner)
        assert f"{gone} (demo)" in caplog.text
        assert await owner.fetchval("SELECT count(*) FROM city_readers WHERE role_name = $1", gone) == 0
        with pytest.raises(asyncpg.UndefinedObjectError):  # a grant to a name no role holds
            await owner.execute("INSERT INTO city_readers (role_name, city_id) VALUES ($1, 'demo')", gone)
    finally:
        await owner.close()


async def test_a_hostile_device_cannot_flood_a_city_or_win_the_first_value_race_unseen(any_db: str) -> None:
    """One message naming 50 devices registers only validation.max_new_devices_per_message of them
    (the rest are replayable unknown_device dead letters of that message, the refusals counted); a
    reading stamped a minute ahead is rejected by the default future tolerance; a value that loses
    to an earlier one for the same key is dead-lettered and counted per city."""
    from datetime import datetime as dt

    from core.telemetry import CONFLICTING_VALUES, REGISTRATIONS_REFUSED
    from ingest.validation import Rejected, Validator
    from processors.registration import RegistrationBudget
    from processors.writer import MessageOrigin
    from schemas.readings import Reading

    settings = Settings()  # type: ignore[call-arg]
    v = settings.validation
    refused = REGISTRATIONS_REFUSED.labels("per_message")._value.get()
    batch = WriteBatch(source="mqtt")
    batch.origins.append(
        MessageOrigin(
            "mqtt", "city/demo/ngsi-ld/x", None, None, dt.now(UTC), b"{...}", v.dead_letter_payload_bytes
        )
    )
    for i in range(50):
        batch.add("demo", f"entity-{i:02d}", "pm25", T0, 1.0, origin=0)
    budget = RegistrationBudget(v.max_new_devices_per_message, v.max_new_devices_per_city_minute)
    async with TimescaleWriter(any_db, registration=budget) as w:
        result = await w.write(batch)
    assert (result.stored, result.dead_letters) == (
        v.max_new_devices_per_message,
        50 - v.max_new_devices_per_message,
    )
    assert REGISTRATIONS_REFUSED.labels("per_message")._value.get() - refused == 40
    owner = await asyncpg.connect(any_db)
    try:
        assert await owner.fetchval("SELECT count(*) FROM devices WHERE device_id LIKE 'entity-%'") == 10
        rows = await owner.fetch("SELECT DISTINCT reason, message_id FROM dead_letters")
        assert len(rows) == 1 and rows[0]["reason"] == "unknown_device" and rows[0]["message_id"] is not None
    finally:
        await owner.close()

    assert v.max_future_s <= 60
    now = dt.now(UTC)
    ahead = Reading(
        city="demo",
        device_id="air-1",
        metric="pm25",
        time=now + timedelta(seconds=90),
        value=5.0,
        unit="ug/m3",
    )
    with pytest.raises(Rejected, match="time_in_future"):
        Validator(v).canonical(ahead, now)

    conflicts = CONFLICTING_VALUES.labels("demo")._value.get()
    first, spoofed = WriteBatch(source="mqtt"), WriteBatch(source="mqtt")
    first.add("demo", "air-9", "pm25", T0, 12.0)
    spoofed.add("demo", "air-9", "pm25", T0, 99.0)
    async with TimescaleWriter(any_db) as w:
        await w.write(first)
        assert (await w.write(spoofed)).dead_letters == 1
    assert CONFLICTING_VALUES.labels("demo")._value.get() - conflicts == 1


async def test_hostile_devices_through_the_service_reach_no_other_city(
    any_db: str, service_logins: tuple[str, str], mosquitto: PrivateMosquitto
) -> None:
    """End to end, the service running as its ingest login: a device naming 50 other devices in
    its SenML pack on its own topic, the same pack through a gateway route (the per-message cap),
    a value stamped 90 s ahead, a pack naming another city's device: nothing lands in the other
    city, the gateway registers only its cap, every refusal is a dead letter."""
    from core.config import TopicRoute
    from ingest.service import Service
    from ingest.simulator import SimMessage
    from tests.integration.test_mqtt_ingest import publish, settings_for

    owner = await asyncpg.connect(any_db)
    try:
        await owner.execute("INSERT INTO cities (city_id, name) VALUES ('other', 'Other City')")
        await owner.execute("INSERT INTO devices (city_id, device_id) VALUES ('other', 'victim')")
    finally:
        await owner.close()
    settings = settings_for(service_logins[0], mosquitto.port)
    settings.mqtt.routes.append(TopicRoute(filter="gw/+/senml", format="senml", city_level=2))
    settings.quality.enabled, settings.kpi_refresh_interval_s = False, 0
    now = int(datetime.now(UTC).timestamp())
    flood = json.dumps([{"bn": f"other-{i:02d}:", "bt": now - 60, "n": "pm25", "v": 1.0} for i in range(50)])
    messages = [
        SimMessage("city/demo/senml/dev-1", flood.encode()),  # topic identity: others are mismatches
        SimMessage("gw/demo/senml", flood.encode()),  # a gateway: its cap of new devices
        SimMessage(
            "city/demo/senml/dev-1",
            json.dumps([{"bn": "dev-1:", "bt": now + 90, "n": "pm25", "v": 2.0}]).encode(),
        ),
        SimMessage(
            "city/demo/senml/victim",
            json.dumps([{"bn": "victim:", "bt": now - 30, "n": "pm25", "v": 3.0}]).encode(),
        ),
    ]
    service = Service(settings)
    await service.start()
    try:
        await publish(mosquitto.port, messages)
        deadline = asyncio.get_running_loop().time() + 30
        while service.pipeline.stats.stored + service.pipeline.stats.dead_letters < 102:
            assert asyncio.get_running_loop().time() < deadline, service.pipeline.stats
            await asyncio.sleep(0.2)
    finally:
        await service.stop()
    owner = await asyncpg.connect(any_db)
    try:
        other = await owner.fetchval(
            "SELECT count(*) FROM readings r JOIN devices d USING (device_key) WHERE d.city_id = 'other'"
        )
        assert other == 0
        assert await owner.fetchval("SELECT count(*) FROM devices WHERE city_id = 'other'") == 1
        cap = Settings().validation.max_new_devices_per_message  # type: ignore[call-arg]
        assert await owner.fetchval("SELECT count(*) FROM devices WHERE device_id LIKE 'other-%'") == cap
        reasons = dict(await owner.fetch("SELECT reason, count(*) FROM dead_letters GROUP BY 1"))
        assert reasons.get("unknown_device") == 50 - cap, reasons
        assert reasons.get("time_in_future") == 1, reasons
        assert reasons.get("device_mismatch", 0) >= 49, reasons
    finally:
        await owner.close()


async def test_no_login_can_drop_or_freeze_a_chunk_through_timescaledbs_internal_functions(
    two_cities: TwoCities, server_url: str
) -> None:
    """TimescaleDB before 2.22 checks no privilege in its internal chunk functions (upstream
    timescale/timescaledb#10386): on 2.19 a city reader dropped every city's readings with
    `_timescaledb_functions.drop_chunk(chunk)`, even in a read-only transaction. Each of them is
    refused to the reader, ingest and KPI logins, and the chunks stay."""
    if "15433" not in server_url:
        pytest.skip("TimescaleDB only")
    roles = deployment_of(two_cities.owner_dsn)
    logins = [two_cities.reader_dsn]
    logins += [await make_login(two_cities.owner_dsn, g) for g in (roles.ingest, roles.kpi)]
    owner = await asyncpg.connect(two_cities.owner_dsn)
    try:
        chunks = [
            r[0]
            for r in await owner.fetch(
                "SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks"
            )
        ]
        functions = [
            r[0]
            for r in await owner.fetch(
                "SELECT p.oid::regproc::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname IN ('_timescaledb_functions', '_timescaledb_internal') "
                "AND p.proname IN ('drop_chunk', 'freeze_chunk', 'unfreeze_chunk') "
                "AND p.proargtypes = '2205'::oidvector"
            )
        ]
    finally:
        await owner.close()
    assert chunks and len(functions) >= 3
    allowed = []
    for dsn in logins:
        conn = await asyncpg.connect(dsn)
        try:
            for function in functions:
                for chunk in chunks:
                    try:
                        await conn.execute(f"SELECT {function}('{chunk}'::regclass)")
                        allowed.append((dsn.split("://")[1].split(":")[0], function, chunk))
                    except PRIVILEGE_ERRORS:
                        pass
                    except asyncpg.UndefinedTableError:  # an earlier call dropped it
                        allowed.append(("?", function, chunk))
        finally:
            await conn.close()
    assert not allowed
    await _other_city_untouched(two_cities.owner_dsn)


# Values of a column's type that no row holds (the i-th of n); timestamps right after the other city's {first}
# (TimescaleDB excludes chunks by time, and which chunks exist is public).
NO_ROW_VALUES = {
    "text": "'no such value ' || i",
    "integer": "-1000 - i",
    "smallint": "-1000 - i",
    "bigint": "-1000 - i",
    "double precision": "-1e6 - i",
    "date": "date '1900-01-01' + i",
    "uuid": "gen_random_uuid()",
    "bytea": "convert_to('no such value ' || i, 'UTF8')",
    "jsonb": "jsonb_build_object('no such value', i)",
    "timestamp with time zone": "{first} + i * interval '1 microsecond'",
}
ORDERED_TYPES = ("integer", "smallint", "bigint", "double precision", "date", "timestamp with time zone")


def _literal(array_text: str, sql_type: str) -> str:
    return "'" + array_text.replace("'", "''") + f"'::{sql_type}[]"


async def _plan_rows(conn: asyncpg.Connection, table: str, where: str) -> list[tuple[str, int]]:
    """Every node of the reader's plan with its row estimate: what EXPLAIN tells the reader."""
    sql = f"EXPLAIN (FORMAT JSON) SELECT * FROM {reader_source(table)} WHERE {where}"
    plan = json.loads(await conn.fetchval(sql))

    def nodes(node: dict[str, Any]) -> list[tuple[str, int]]:
        own = [(str(node["Node Type"]), int(node["Plan Rows"]))]
        return own + [n for child in node.get("Plans", []) for n in nodes(child)]

    return nodes(plan[0]["Plan"])


async def _other_city_predicates(
    owner: asyncpg.Connection, reader: asyncpg.Connection, view: str
) -> list[tuple[str, str, str]]:
    """(column, predicate matching only the other city's rows, the same shape matching no row) for
    every column of the view in which the other city holds values demo does not."""
    predicates = []
    for column, sql_type in await owner.fetch(
        "SELECT quote_ident(a.attname), format_type(a.atttypid, NULL) FROM pg_attribute a "
        "WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        f"public.{view}",
    ):
        if sql_type not in NO_ROW_VALUES:
            continue
        seen = [
            r[0] for r in await reader.fetch(f"SELECT DISTINCT {column}::text FROM {reader_source(view)}")
        ]
        others = await owner.fetchval(
            f"SELECT array_agg(DISTINCT {column} ORDER BY {column})::text FROM public.{view} "
            f"WHERE {column} IS NOT NULL AND {column}::text <> ALL($1::text[])",
            seen,
        )
        if others is None:
            continue
        count = await owner.fetchval(f"SELECT cardinality({_literal(others, sql_type)})")
        value = NO_ROW_VALUES[sql_type].format(first=f"(({_literal(others, sql_type)})[1])")
        nothing = await owner.fetchval(
            f"SELECT array_agg({value})::text FROM generate_series(1, $1) i", count
        )
        predicates.append(
            (
                column,
                f"{column} = ANY({_literal(others, sql_type)})",
                f"{column} = ANY({_literal(nothing, sql_type)})",
            )
        )
        if sql_type in ORDERED_TYPES:
            low, high, demo_inside = await owner.fetchrow(
                f"SELECT min(o)::text, max(o)::text, EXISTS (SELECT 1 FROM unnest($1::text[]) d "
                f"WHERE d::{sql_type} BETWEEN min(o) AND max(o)) FROM unnest({_literal(others, sql_type)}) o",
                seen,
            )
            nothing_low, nothing_high = await owner.fetchrow(
                f"SELECT min(o)::text, max(o)::text FROM unnest({_literal(nothing, sql_type)}) o"
            )
            if not demo_inside:
                predicates.append(
                    (
                        column,
                        f"{column} BETWEEN '{low}'::{sql_type} AND '{high}'::{sql_type}",
                        f"{column} BETWEEN '{nothing_low}'::{sql_type} AND '{nothing_high}'::{sql_type}",
                    )
                )
    return predicates


async def _explain_leaks(two_cities: TwoCities, keys: bool) -> tuple[list[str], list[str]]:
    """(columns compared, leaks) over every reader function of several cities: the key columns
    (schemas.access.KEY_COLUMNS) or all the others."""
    owner = await asyncpg.connect(two_cities.owner_dsn)
    reader = await asyncpg.connect(two_cities.reader_dsn)
    try:
        compared, leaks = [], []
        for view in MULTI_CITY_TABLES:
            for column, other_city, no_row in await _other_city_predicates(owner, reader, view):
                if (column.strip('"') in KEY_COLUMNS) != keys:
                    continue
                compared.append(f"{view}.{column}")
                seen, baseline = (
                    await _plan_rows(reader, view, other_city),
                    await _plan_rows(reader, view, no_row),
                )
                if seen != baseline:
                    leaks.append(f"{view}: {other_city} estimated {seen}, no row {baseline}")
        return compared, leaks
    finally:
        await reader.close()
        await owner.close()


async def test_reader_explain_estimates_reveal_nothing_of_the_other_citys_values(
    two_cities: TwoCities,
) -> None:
    """Through a security_barrier view the planner pushed a reader's leakproof comparison into the
    view and estimated it from the base table's statistics, all cities' (seen then: `value BETWEEN
    50 AND 59`, the other city's range, 10 rows against 2 for the empty 20-49). For every reader
    function over several cities and every column but the keys in which the other city holds values
    demo does not, a predicate matching exactly those values and the same predicate over values no
    row holds give the same plan and row estimates, after ANALYZE, on TimescaleDB chunks made after
    the migration too."""
    compared, leaks = await _explain_leaks(two_cities, keys=False)
    assert not leaks, "\n".join(leaks)
    # the other city's values are compared in every kind of table: readings, rollups, KPIs, dead letters
    expected = {"readings.value", "rollup_1m.max", "rollup_1m.first_time", "kpi_values.value"}
    expected |= {"dead_letters.id", "city_facts.value", "ingest_batches.source", "cities.name"}
    # and in the newer ones: alert events, Sparkplug B sessions, stored AQI sub-indices
    expected |= {"alerts.value", "alerts.threshold", "alerts.rule_id", "alerts.device_id", "alerts.severity"}
    expected |= {"alerts.at", "sparkplug_sessions.metrics", "sparkplug_sessions.edge_node_id"}
    expected |= {"sparkplug_sessions.bd_seq", "sparkplug_sessions.born_at", "eu_aqi_hourly.band"}
    expected |= {"eu_aqi_hourly.pm25"}
    assert expected <= set(compared), compared


async def test_reader_explain_estimates_reveal_nothing_of_the_other_citys_keys(two_cities: TwoCities) -> None:
    """As above, for the key columns (device keys, metric ids, times, city ids), which keep their
    statistics for the owner's and the service's plans: a reader's comparison is estimated above the
    reader function's Function Scan (its fixed ROWS, default selectivities), never from them."""
    compared, leaks = await _explain_leaks(two_cities, keys=True)
    expected = {"readings.device_key", 'readings."time"', "rollup_1m.bucket", "devices.device_key"}
    expected |= {"kpi_values.city_id", "alerts.city_id", "eu_aqi_hourly.device_key"}
    assert expected <= set(compared), compared
    assert not leaks, "\n".join(leaks)


async def test_statistics_collected_before_the_access_model_are_deleted_at_migrate(
    two_cities: TwoCities,
) -> None:
    """Statistics ANALYZE collected before the statistics target became 0 (a database migrated
    before this rule, or an operator's `SET STATISTICS`), extended statistics included, are gone
    after the next `citykpi migrate`, on the tables and on every chunk (the keys keep theirs)."""
    owner = await asyncpg.connect(two_cities.owner_dsn)
    try:
        await owner.execute("ALTER TABLE readings ALTER COLUMN value SET STATISTICS -1")
        await owner.execute("ALTER TABLE kpi_values ALTER COLUMN value SET STATISTICS 100")
        await owner.execute("CREATE STATISTICS kpi_values_city_value ON city_id, value FROM kpi_values")
        await owner.execute("ANALYZE")
        behind_views = (
            "SELECT count(*) FROM pg_statistic s JOIN pg_attribute a ON a.attrelid = s.starelid "
            "AND a.attnum = s.staattnum AND a.attname <> ALL($2::text[]) "
            "WHERE s.starelid IN (SELECT c.oid FROM pg_class c "
            "WHERE c.relname = ANY($1::text[]) AND c.relnamespace = 'public'::regnamespace "
            "UNION SELECT i.inhrelid FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhparent "
            "WHERE c.relname = ANY($1::text[]) AND c.relnamespace = 'public'::regnamespace)"
        )
        assert await owner.fetchval(behind_views, list(MULTI_CITY_TABLES), list(KEY_COLUMNS)) > 0
        assert await owner.fetchval("SELECT count(*) FROM pg_statistic_ext") == 1
        await migrate(owner)
        await owner.execute("ANALYZE")
        assert await owner.fetchval(behind_views, list(MULTI_CITY_TABLES), list(KEY_COLUMNS)) == 0
        assert await owner.fetchval("SELECT count(*) FROM pg_statistic_ext") == 0
        assert await owner.fetchval("SELECT count(*) FROM pg_stats WHERE tablename = 'metrics'") > 0
    finally:
        await owner.close()


async def test_kpi_export_as_a_city_reader_exports_its_own_city_only(two_cities: TwoCities) -> None:
    """`citykpi kpi export` is an operator tool (the owner's login exports any city), but a reader
    whose configuration holds its own login reads through the views: --city of the other city is
    an unknown city, its own city's values export, and nothing of the other city's is printed."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    owner = await asyncpg.connect(two_cities.owner_dsn)
    try:
        for city, value in (("demo", 1.5), ("other", 98.5)):
            await owner.execute(
                "INSERT INTO kpi_values (city_id, kpi_code, period_kind, period_start, unit, value) "
                "VALUES ($1, 'EN:EN:AQ:1C', 'year', $2, 'µg/m³', $3)",
                city,
                date(2025, 1, 1),
                value,
            )
    finally:
        await owner.close()

    def export(city: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(Path(sys.executable).parent / "citykpi"),
                "kpi",
                "export",
                "--city",
                city,
                "--period",
                "2025",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "CITYKPI_DATABASE__URL": two_cities.reader_dsn},
            timeout=120,
        )

    other = export("other")
    assert other.returncode != 0 and other.stdout == "", other
    assert "98.5" not in other.stderr and "Other City" not in other.stderr
    own = export("demo")
    assert own.returncode == 0, own.stderr
    values = [e["kpiValue"]["value"] for e in json.loads(own.stdout)]
    assert values == [1.5]
