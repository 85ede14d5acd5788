"""Least-privilege roles and row-level security, on both servers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from processors.rollups import ROLLUP_TABLES
from processors.writer import TimescaleWriter, WriteBatch
from tests.conftest import as_login as _as
from tests.conftest import deployment_of, make_login

pytestmark = pytest.mark.integration
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


async def _two_cities(dsn: str) -> None:
    owner = await asyncpg.connect(dsn)
    try:
        await owner.execute("INSERT INTO cities (city_id, name) VALUES ('other', 'Other City')")
    finally:
        await owner.close()
    batch = WriteBatch(source="test")
    for i in range(10):
        batch.add("demo", "air-1", "pm25", T0 + timedelta(minutes=i), 10.0 + i)
        batch.add("other", "air-1", "pm25", T0 + timedelta(minutes=i), 50.0 + i)
    async with TimescaleWriter(dsn) as w:
        await w.write(batch)


async def test_a_city_reader_sees_only_its_city_and_cannot_write(any_db: str) -> None:
    await _two_cities(any_db)
    role = f"grafana_demo_{uuid.uuid4().hex[:6]}"
    owner = await asyncpg.connect(any_db)
    try:
        await owner.execute("SELECT citykpi_grant_reader($1, 'demo', 'pw')", role)
    finally:
        await owner.close()
    reader = await asyncpg.connect(_as(any_db, role))
    try:
        assert {r[0] for r in await reader.fetch("SELECT city_id FROM devices")} == {"demo"}
        assert {r[0] for r in await reader.fetch("SELECT city_id FROM cities")} == {"demo"}
        always = "('-infinity', 'infinity')"  # the time range every reader function of a time series takes
        values = [r[0] for r in await reader.fetch(f"SELECT value FROM readings{always} ORDER BY value")]
        assert values == [10.0 + i for i in range(10)]  # none of the other city's 50+
        assert await reader.fetchval(f"SELECT max(max) FROM rollup_1h{always}") == 19.0
        await reader.execute("SET default_transaction_read_only = off")  # the privileges stop writes too
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.execute("INSERT INTO readings VALUES (now(), 1, 1, 1.0, 0, 1)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.execute("DELETE FROM public.kpi_values")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.execute("SELECT citykpi_grant_reader('x', 'other', 'pw')")
    finally:
        await reader.close()


async def test_the_ingest_role_can_write_but_not_delete_or_touch_kpis(any_db: str) -> None:
    login = await make_login(any_db, deployment_of(any_db).ingest)
    batch = WriteBatch(source="test")
    batch.add("demo", "noise-1", "laeq", T0, 61.0)
    async with TimescaleWriter(login) as w:
        first = await w.write(batch)
        again = await w.write(batch)
    assert (first.stored, again.duplicates) == (1, 1)
    conn = await asyncpg.connect(login)
    try:
        for table in ("readings", *ROLLUP_TABLES):  # the quality job deletes through the owner's function
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"DELETE FROM {table}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO kpi_values (city_id, kpi_code, period_kind, period_start, unit) "
                "VALUES ('demo', 'x', 'year', '2026-01-01', 'u')"
            )
    finally:
        await conn.close()


async def test_migrating_an_older_deployment_takes_delete_on_the_rollups_from_the_ingest_role(
    any_db: str,
) -> None:
    """Before migration 0025 the ingest role held DELETE on the rollups for the quality job; the
    migration revokes it (applying the access model again would leave it in place)."""
    from schemas.migrations import migrate

    ingest = deployment_of(any_db).ingest
    conn = await asyncpg.connect(any_db)
    try:
        await conn.execute(f"GRANT DELETE ON {', '.join(ROLLUP_TABLES)} TO {ingest}")
        await conn.execute("DELETE FROM schema_migrations WHERE version = '0025_rollup_bucket_delete'")
        await migrate(conn)
        held = [
            t
            for t in ROLLUP_TABLES
            if await conn.fetchval("SELECT has_table_privilege($1, $2, 'DELETE')", ingest, t)
        ]
    finally:
        await conn.close()
    assert held == []


def test_roles_grant_reader_cli_makes_a_login_that_reads_one_city(tsdb: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.integration.test_cli import run

    secret = tmp_path / "pw"
    secret.write_text("s3cret-pw\n")
    role = f"grafana_cli_{uuid.uuid4().hex[:6]}"
    out = run(
        "roles",
        "grant-reader",
        role,
        "--city",
        "demo",
        "--password-file",
        str(secret),
        env={"CITYKPI_DATABASE__URL": tsdb},
    )
    assert out.returncode == 0, out.stderr
    assert "s3cret" not in out.stdout + out.stderr
    import asyncio

    async def cities() -> set[str]:
        conn = await asyncpg.connect(_as(tsdb, role))
        try:
            return {r[0] for r in await conn.fetch("SELECT city_id FROM cities")}
        finally:
            await conn.close()

    assert asyncio.run(cities()) == {"demo"}


async def test_role_prefix_is_configurable_and_fixed_by_the_first_migrate(empty_db: str) -> None:
    from schemas.access import PREFIX_PATTERN, derive_prefix
    from schemas.migrations import migrate

    prefix = f"ck_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(empty_db)
    try:
        report = await migrate(conn, prefix)
        assert report.roles is not None and report.roles.ingest == f"{prefix}_ingest"
        made = await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1", f"{prefix}\\_%")
        assert made == 4
        assert (await migrate(conn)).roles == report.roles  # unconfigured: the stored prefix
        with pytest.raises(ValueError, match="cannot change"):
            await migrate(conn, "another_prefix")
    finally:
        await conn.close()
        cleanup = await asyncpg.connect(empty_db)
        try:
            roles = f"{prefix}_ingest, {prefix}_kpi, {prefix}_reader, {prefix}_definer"
            await cleanup.execute(f"DROP OWNED BY {roles}; DROP ROLE {roles}")
        finally:
            await cleanup.close()
    assert derive_prefix("citykpi") == "citykpi" and derive_prefix("t_0123abcd") == "t_0123abcd"
    a, b = derive_prefix("City-KPI.Prod"), derive_prefix("city_kpi_prod")
    assert a.startswith("city_kpi_prod_") and b == "city_kpi_prod"
    long_a, long_b = derive_prefix("x" * 45 + "a"), derive_prefix("x" * 45 + "b")
    assert long_a != long_b and len(long_a) == len(long_b) == 40
    assert derive_prefix("9lives").startswith("_9lives_")
    assert all(PREFIX_PATTERN.match(p) for p in (a, long_a, derive_prefix("9lives")))


def test_roles_cli_grants_service_logins_reports_changes_and_revokes_readers(tsdb: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """grant-service makes an ingest login; grant-reader on an existing role says what changed and
    what else it still holds; revoke-reader takes the city back and the reader group with it."""
    import asyncio

    from tests.integration.test_cli import run

    env = {"CITYKPI_DATABASE__URL": tsdb}
    secret = tmp_path / "pw"
    secret.write_text("s3cret-pw\n")
    svc = f"svc_{uuid.uuid4().hex[:6]}"
    out = run("roles", "grant-service", svc, "--service", "ingest", "--password-file", str(secret), env=env)
    assert out.returncode == 0, out.stderr
    assert (
        f"created login role {svc}" in out.stdout and f"added to {deployment_of(tsdb).ingest}" in out.stdout
    )
    out = run("roles", "grant-reader", svc, "--city", "demo", env=env)  # an existing role, not only a reader
    assert out.returncode == 0, out.stderr
    assert "password changed" not in out.stdout and "may now read city demo" in out.stdout
    assert f"still a member of {deployment_of(tsdb).ingest} (not changed)" in out.stdout
    assert "s3cret" not in out.stdout + out.stderr
    out = run("roles", "revoke-reader", svc, env=env)
    assert out.returncode == 0, out.stderr
    assert "no longer reads city demo" in out.stdout and "removed from" in out.stdout

    async def can_read() -> bool:
        conn = await asyncpg.connect(_as(tsdb, svc, "s3cret-pw"))
        try:
            return bool(await conn.fetchval("SELECT has_schema_privilege('reader', 'USAGE')"))
        finally:
            await conn.close()

    assert asyncio.run(can_read()) is False
    out = run("roles", "grant-service", svc, "--service", "superuser", env=env)
    assert out.returncode == 1 and "ingest or kpi" in out.stderr


async def test_a_reader_function_plans_with_its_bounds_and_scans_only_their_chunks(tsdb: str) -> None:
    """plan_cache_mode = force_custom_plan: the reader function's query is planned with the bounds
    as constants, so TimescaleDB scans only the chunks of the range (seen with auto_explain's nested
    plans, as the superuser owner, who reads every city once in platform_readers)."""
    owner = await asyncpg.connect(tsdb)
    notices: list[str] = []
    owner.add_log_listener(lambda _c, msg: notices.append(str(msg.message)))
    try:
        await owner.execute("INSERT INTO devices (city_id, device_id) VALUES ('demo', 'chunky')")
        await owner.execute(
            "INSERT INTO readings SELECT now() - i * interval '1 hour', device_key, 1, i, 0, 1 "
            "FROM devices, generate_series(1, 24 * 20) i WHERE device_id = 'chunky'"
        )
        chunks = await owner.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'readings'"
        )
        await owner.execute("INSERT INTO platform_readers VALUES (session_user) ON CONFLICT DO NOTHING")
        await owner.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; "
            # WARNING: the function sends nothing below it to the client (client_min_messages)
            "SET auto_explain.log_nested_statements = on; SET auto_explain.log_level = warning"
        )
        n = await owner.fetchval("SELECT count(*) FROM reader.readings(now() - interval '2 days', now())")
    finally:
        await owner.close()
    (inner,) = [m for m in notices if "FROM public.readings t" in m]
    scanned = inner.count("_hyper_")
    assert n in (47, 48) and chunks >= 10 and 1 <= scanned <= 3, (chunks, inner)  # now() moved on


async def test_migrate_replaces_the_former_reader_views_over_tables(any_db: str) -> None:
    """A database migrated before the reader functions holds security_barrier views over the tables
    (reader.visible_cities, reader.readings, reader.devices, ...): the next migrate drops those of
    the time series and visible_cities, and the others become views over their functions."""
    from schemas.access import READER_TABLES
    from schemas.migrations import migrate

    await _two_cities(any_db)
    roles = deployment_of(any_db)
    role = f"upgraded_{uuid.uuid4().hex[:6]}"
    in_city = "t.city_id IN (SELECT v.city_id FROM reader.visible_cities v)"
    former = {
        "devices": in_city,
        "dead_letters": in_city,
        "readings": "t.device_key > 0",
        "rollup_1h": "true",
    }
    owner = await asyncpg.connect(any_db)
    try:
        await owner.execute(f'SET ROLE "{roles.definer}"')
        await owner.execute("DROP VIEW reader.devices")
        await owner.execute("CREATE VIEW reader.visible_cities AS SELECT city_id FROM public.cities")
        for table, where in former.items():
            await owner.execute(
                f"CREATE VIEW reader.{table} WITH (security_barrier) AS SELECT t.* FROM public.{table} t "
                f"WHERE {where}"
            )
        await owner.execute("RESET ROLE")
        await owner.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA reader TO "{roles.reader}"')
        await owner.execute("SELECT citykpi_grant_reader($1, 'demo', 'pw')", role)
        await migrate(owner)
        views = {r[0] for r in await owner.fetch("SELECT viewname FROM pg_views WHERE schemaname = 'reader'")}
        assert views == {t for t, spec in READER_TABLES.items() if not spec.time_column} | {"metrics"}
    finally:
        await owner.close()
    reader = await asyncpg.connect(_as(any_db, role))
    try:
        assert {r[0] for r in await reader.fetch("SELECT city_id FROM devices")} == {"demo"}
        assert await reader.fetchval("SELECT count(*) FROM readings('-infinity', 'infinity')") == 10
    finally:
        await reader.close()
