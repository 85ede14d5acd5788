"""Fixtures that reach the real servers started by deploy/local/stack.sh (see `make test`).

Each database test gets a fresh database on the real server, migrated; private Mosquitto brokers
(for restart tests) are started by the same stack script on a free port.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from bench.stack import (
    KAFKA_BOOTSTRAP,
    KAFKA_IMPL,
    MQTT_PORT,
    PLAIN_URL,
    REPO,
    STACK,
    STACK_ENV,
    TSDB_URL,
    PrivateMosquitto,
    create_database,
    drop_database,
    free_port,
    migrated_database,
)
from schemas.access import DeploymentRoles, derive_prefix

__all__ = [  # the stack's names, for the tests that import them from here
    "KAFKA_BOOTSTRAP",
    "KAFKA_IMPL",
    "MQTT_PORT",
    "PLAIN_URL",
    "REPO",
    "STACK",
    "STACK_ENV",
    "TSDB_URL",
    "PrivateMosquitto",
    "free_port",
    "migrated_database",
]


def deployment_of(dsn: str) -> DeploymentRoles:
    """The roles `citykpi migrate` made for a test database (prefix derived from its name)."""
    return DeploymentRoles(derive_prefix(dsn.rsplit("/", 1)[1]))


def as_login(dsn: str, user: str, password: str = "pw") -> str:
    scheme, rest = dsn.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest.split('@', 1)[1]}"


async def make_login(dsn: str, *groups: str) -> str:
    """A fresh login (password 'pw') holding only `groups`; returns its DSN."""
    name = f"u_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(dsn)
    try:
        member_of = f" IN ROLE {', '.join(groups)}" if groups else ""
        await conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'pw'{member_of}")
    finally:
        await conn.close()
    return as_login(dsn, name)


@pytest.fixture(params=["timescaledb", "postgresql"])
def server_url(request: pytest.FixtureRequest) -> str:
    """Both database servers: TimescaleDB (Apache edition) and plain PostgreSQL."""
    return TSDB_URL if request.param == "timescaledb" else PLAIN_URL


@pytest.fixture
async def empty_db(server_url: str) -> AsyncIterator[str]:
    dsn = await create_database(server_url)
    yield dsn
    await drop_database(server_url, dsn)


@pytest.fixture
async def tsdb() -> AsyncIterator[str]:
    """A fresh, migrated database on the real TimescaleDB server, with the demo city."""
    dsn = await migrated_database(TSDB_URL)
    yield dsn
    await drop_database(TSDB_URL, dsn)


@pytest.fixture
async def any_db(server_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database on each server in turn."""
    dsn = await migrated_database(server_url)
    yield dsn
    await drop_database(server_url, dsn)


@pytest.fixture
def mosquitto() -> Iterator[PrivateMosquitto]:
    # under the repo's .stack, not /tmp/pytest-of-root (mode 700): mosquitto drops root and must
    # reach its persistence folder
    broker = PrivateMosquitto(REPO / ".stack" / "test-brokers" / uuid.uuid4().hex[:8])
    broker.up()
    yield broker
    broker.down()


class TcpProxy:
    """A loopback TCP proxy a test can cut (close every connection, refuse new ones) and restore:
    a server outage for one client, without stopping the server the other tests share."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def url(self, dsn: str) -> str:
        """`dsn` through the proxy."""
        host_port = f"{self.target[0]}:{self.target[1]}"
        assert host_port in dsn, dsn
        return dsn.replace(host_port, f"127.0.0.1:{self.port}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


@pytest.fixture
async def service_logins(any_db: str) -> tuple[str, str]:
    """(ingest DSN, KPI DSN): logins holding only the deployment's ingest or KPI role."""
    roles = deployment_of(any_db)
    return await make_login(any_db, roles.ingest), await make_login(any_db, roles.kpi)
