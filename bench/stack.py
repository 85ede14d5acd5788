"""The local stack (deploy/local/stack.sh) for benches and tests: its URLs, throwaway databases
and private Mosquitto brokers. Tests reach it through their fixtures (tests/conftest.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import uuid
from pathlib import Path

import asyncpg

from schemas.access import derive_prefix

REPO = Path(__file__).resolve().parent.parent
STACK = REPO / "deploy" / "local" / "stack.sh"


def _stack_env() -> dict[str, str]:
    env: dict[str, str] = {}
    urls = Path(os.environ.get("CITYKPI_STACK_DIR", REPO / ".stack")) / "urls.env"  # as stack.sh
    if urls.exists():
        for line in urls.read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    return env


STACK_ENV = _stack_env()
TSDB_URL = os.environ.get(
    "CITYKPI_DATABASE__URL",
    STACK_ENV.get("CITYKPI_DATABASE__URL", "postgresql://postgres@127.0.0.1:15433/citykpi"),
)
PLAIN_URL = STACK_ENV.get("CITYKPI_TEST_PLAIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:15434/citykpi")
MQTT_PORT = int(STACK_ENV.get("CITYKPI_MQTT__PORT", "18830"))
KAFKA_BOOTSTRAP = STACK_ENV.get("CITYKPI_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:19092")
KAFKA_IMPL = STACK_ENV.get("CITYKPI_STACK_KAFKA_IMPL", "unknown")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_db(url: str, db: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + db


async def create_database(server_url: str) -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return with_db(server_url, name)


async def drop_database(server_url: str, dsn: str) -> None:
    """Drop the database, then its deployment's roles and the logins granted them (roles are
    cluster-wide and would pile up)."""
    name = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        groups = [
            r.format(p=derive_prefix(name)) for r in ("{p}_ingest", "{p}_kpi", "{p}_reader", "{p}_definer")
        ]
        logins = await conn.fetch(
            "SELECT DISTINCT u.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = ANY($1) AND NOT u.rolsuper",
            groups,
        )
        for role in [r["rolname"] for r in logins] + groups:
            with contextlib.suppress(asyncpg.PostgresError):  # still owns something elsewhere
                await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
    finally:
        await conn.close()


async def migrated_database(server_url: str) -> str:
    from core.config import Settings
    from ingest.database import prepare_database

    dsn = await create_database(server_url)
    await prepare_database(Settings(database={"url": dsn}))  # type: ignore[arg-type]
    return dsn


class PrivateMosquitto:
    """A Mosquitto of this test alone, started and stopped by deploy/local/stack.sh."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, "CITYKPI_STACK_DIR": str(root), "CITYKPI_STACK_MQTT_PORT": str(self.port)}

    def up(self) -> None:
        subprocess.run(["bash", str(STACK), "up", "mqtt"], env=self.env, check=True, capture_output=True)

    def down(self) -> None:
        subprocess.run(["bash", str(STACK), "down", "mqtt"], env=self.env, check=True, capture_output=True)


async def count_readings(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM readings"))
    finally:
        await conn.close()
