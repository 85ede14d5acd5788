"""paho's network loop (ingest/mqtt/network.py) on its pipe, against a real Mosquitto."""

from __future__ import annotations

import socket
import threading
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

import pytest

from ingest.mqtt.network import NetworkConfig, NetworkLoop
from tests.conftest import PrivateMosquitto
from tests.integration.test_mqtt_ingest import publish, senml_messages

pytestmark = pytest.mark.integration


def config(port: int, **overrides: Any) -> NetworkConfig:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "client_id": "citykpi-network-test",
        "protocol": "3.1.1",
        "clean_start": False,
        "session_expiry_s": 3600,
        "qos": 1,
        "subscriptions": ["city/+/senml/+"],
        "keepalive_s": 30,
        "reconnect_max_s": 1.0,
        "max_inflight": 1000,
        "max_held_bytes": 1 << 20,
    }
    return NetworkConfig(**{**values, **overrides})


def next_of(conn: Connection, kind: str, timeout: float = 10) -> tuple[Any, ...]:
    """The next message of `kind` from the loop (others skipped)."""
    while conn.poll(timeout):
        item = conn.recv()
        if item[0] == kind:
            return item  # type: ignore[no-any-return]
    raise TimeoutError(f"no {kind!r} from the network loop within {timeout} s")


def messages(conn: Connection, n: int) -> tuple[list[int], list[tuple[str, bytes]]]:
    """The next batches up to `n` messages: their sequence numbers and (topic, payload)s."""
    seqs: list[int] = []
    got: list[tuple[str, bytes]] = []
    while len(got) < n:
        _, seq, _at, _nbytes, topics, payloads = next_of(conn, "batch")
        seqs.append(seq)
        got += zip(topics, payloads, strict=True)
    return seqs, got


async def test_an_ack_from_an_earlier_connection_sends_no_puback(mosquitto: PrivateMosquitto) -> None:
    """A batch received on connection 1 is acked after the loop reconnected: its packet ids could
    now name other messages, so no PUBACK goes out; the broker redelivers the batch on connection
    2, and that batch's ack sends one PUBACK per message."""
    conn, loop_end = Pipe()
    loop = NetworkLoop(config(mosquitto.port), loop_end)
    pubacks: list[int] = []
    send_puback = loop._client._send_puback
    loop._client._send_puback = lambda mid: (pubacks.append(mid), send_puback(mid))[1]  # type: ignore[method-assign]
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        next_of(conn, "subscribed")
        await publish(mosquitto.port, senml_messages(5))
        first, batch = messages(conn, 5)
        sock = loop._client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)  # the connection is lost; the loop reconnects
        assert next_of(conn, "connected")[1] == 2
        second, again = messages(conn, 5)
        assert sorted(again) == sorted(batch)  # redelivered
        for seq in first + second:
            conn.send(("ack", seq))
        conn.send(("close",))
        thread.join(10)
        assert not thread.is_alive()
        assert len(pubacks) == 5  # the second batch's only
    finally:
        conn.close()
        thread.join(10)


async def test_the_loop_stops_reading_at_max_inflight_until_acked(mosquitto: PrivateMosquitto) -> None:
    conn, loop_end = Pipe()
    thread = threading.Thread(target=NetworkLoop(config(mosquitto.port, max_inflight=50), loop_end).run)
    thread.start()
    try:
        next_of(conn, "subscribed")
        await publish(mosquitto.port, senml_messages(200))
        batches: list[tuple[int, int]] = []
        while sum(n for _, n in batches) < 50:
            item = next_of(conn, "batch")
            batches.append((item[1], len(item[4])))
        assert not conn.poll(1.0)  # the bound: nothing more until an ack
        assert sum(n for _, n in batches) == 50
        conn.send(("ack", batches[0][0]))
        assert len(next_of(conn, "batch")[4]) <= batches[0][1]
    finally:
        conn.send(("close",))
        thread.join(10)
        conn.close()
