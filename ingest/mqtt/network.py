"""paho's network loop for the MQTT source, talking to the service over one pipe.

It runs in a process of its own (`mqtt.network_process`, so paho's per-packet Python work has its
own GIL and core) or in a thread of the service; the code and the pipe protocol are the same.
This module imports only the standard library, paho and tenacity: the process stays small.

The loop reads the socket itself (`loop_read`/`loop_write`/`loop_misc`), so it can stop reading
while it holds `max_inflight` messages or `max_held_bytes` of payload: the backlog then stays in the
broker (and in the TCP window), on MQTT 3.1.1 too. Messages go to the service in batches
(`("batch", seq, received_at, nbytes, topics, payloads)`), without paho's per-message objects; the
packet ids stay here with the batch's connection generation. The service answers `("ack", seq)`
once the batch is committed; the PUBACKs go out only if the connection that received the batch is
still the current one: the broker redelivers the others itself (persistent session) and the
database ignores them as duplicates, while a stale packet id must never acknowledge a different
message. Reconnecting is one tenacity policy (`reconnect_policy`): jittered exponential backoff
capped at `reconnect_max_s`, started over after a connection that was up is lost. The loop ends
on `("close",)` or when the service's end of the pipe closes (the service died: an orphan must not
hold the client id).
"""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import ssl
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import paho.mqtt.client as mqtt
import tenacity
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

BATCH = 2000  # messages per batch handed to the service
READS_PER_WAKE = 1000  # packets read per readable socket before looking at acks and the bound again
RECV_BYTES = 65536  # one recv() serves many of paho's one-byte reads


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def apply(self, client: mqtt.Client) -> None:
        """Username/password and TLS (CA, client certificate); shared by every paho client."""
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.tls_ca or self.tls_cert:
            ctx = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert and self.tls_key:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
            client.tls_set_context(ctx)


@dataclass(frozen=True)
class NetworkConfig:
    """What the loop needs of `MqttSettings`, as plain values (the process never imports pydantic)."""

    host: str
    port: int
    client_id: str
    protocol: str
    clean_start: bool
    session_expiry_s: int
    qos: int
    subscriptions: list[str]
    keepalive_s: int
    reconnect_max_s: float
    max_inflight: int
    max_held_bytes: int
    credentials: Credentials = field(default_factory=Credentials)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkConfig:
        return cls(**{**d, "credentials": Credentials(**d["credentials"])})


class LeanClient(mqtt.Client):
    """paho with a shorter receive path: socket reads served from one buffer, and QoS 0/1 PUBLISH
    packets handed to `received` as (topic, payload, packet id, qos) without an MQTTMessage (and
    its threading.Condition) each; QoS 2 keeps paho's own path (`on_message` after PUBREL)."""

    def __init__(self, *args: Any, received: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._received = received
        self._rbuf = b""
        self._rpos = 0

    def buffered(self) -> bool:
        """Bytes already received and not yet parsed (select() does not see them)."""
        return self._rpos < len(self._rbuf)

    def forget_buffer(self) -> None:
        self._rbuf, self._rpos = b"", 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(max(bufsize, RECV_BYTES))
            if len(data) <= bufsize:
                return data
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = start + bufsize
        return self._rbuf[start : self._rpos]

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if qos == 2:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        topic: bytes | bytearray
        if self._protocol == MQTTProtocolVersion.MQTTv5:
            p = _packet.decode_publish(header, packet, self._protocol)
            topic, mid, payload = p.topic, p.mid, bytes(p.payload)
        else:
            end = 2 + ((packet[0] << 8) | packet[1]) if len(packet) >= 2 else 0
            if end <= 2 or end + 2 * (qos > 0) > len(packet):
                raise MalformedPacket("PUBLISH topic length outside the packet, or empty topic")
            topic, mid = packet[2:end], 0
            if qos:
                mid, end = (packet[end] << 8) | packet[end + 1], end + 2
            payload = bytes(memoryview(packet)[end:])  # paho's packet is a bytearray
        self._received(topic.decode("utf-8", "surrogateescape"), payload, mid, qos)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class _Lost(Exception):
    """The connection was up (CONNACK accepted) and is gone: the backoff starts over."""


class _NotConnected(Exception):
    """The broker closed the connection before accepting it: retried with backoff."""


def _restart_backoff_after_loss(state: tenacity.RetryCallState) -> None:
    if state.outcome is not None and isinstance(state.outcome.exception(), _Lost):
        state.attempt_number = 1


def reconnect_policy(
    max_s: float,
    sleep: Callable[[float], None] = time.sleep,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
) -> tenacity.Retrying:
    """Retry a session until it returns (closed): waits 0.2 s doubling up to `max_s`, each plus
    0-0.5 s of jitter so a fleet does not reconnect in step; a lost connection (`_Lost`) starts over
    at the first wait (0.2-0.7 s)."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((OSError, _NotConnected, _Lost)),
        wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=max_s, jitter=0.5),
        after=_restart_backoff_after_loss,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


class _Orphaned(Exception):
    """The service's end of the pipe closed without a close command: stop at once."""


class NetworkLoop:
    def __init__(self, config: NetworkConfig, conn: Connection) -> None:
        self.config = config
        self.conn = conn
        self.connected = False
        self._generation = 0
        self._connections = 0
        self._stopping = False  # no new messages are read (shutdown)
        self._closing = False  # disconnect and end
        self.held_messages = 0  # received and not yet acknowledged
        self.held_bytes = 0
        self._seq = 0
        self._sent: dict[int, tuple[int, list[tuple[int, int]], int, int]] = {}  # seq -> gen, acks, n, bytes
        self._topics: list[str] = []
        self._payloads: list[bytes] = []
        self._acks: list[tuple[int, int]] = []
        self._batch_bytes = 0
        self._batch_at = 0.0
        self._client = self._make_client()

    def _make_client(self) -> LeanClient:
        c = self.config
        v5 = c.protocol == "5"
        client = LeanClient(
            CallbackAPIVersion.VERSION2,
            client_id=c.client_id,
            clean_session=None if v5 else c.clean_start,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
            received=self._received,
        )
        c.credentials.apply(client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = lambda _c, _u, m: self._received(
            m._topic.decode("utf-8", "surrogateescape"), bytes(m.payload), m.mid, m.qos
        )
        client.on_subscribe = lambda *_a: self._send(("subscribed",))
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = c.session_expiry_s
            props.ReceiveMaximum = min(c.max_inflight, 65535)
            client.connect_async(c.host, c.port, c.keepalive_s, clean_start=c.clean_start, properties=props)
        else:
            client.connect_async(c.host, c.port, c.keepalive_s)
        return client

    def _send(self, item: tuple[Any, ...]) -> None:
        try:
            self.conn.send(item)
        except OSError:
            raise _Orphaned() from None

    def _log(self, level: int, msg: str) -> None:
        self._send(("log", level, msg))

    # -- messages -------------------------------------------------------------------------
    def _received(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        if not self._topics:
            self._batch_at = time.time()
        self._topics.append(topic)
        self._payloads.append(payload)
        if qos:
            self._acks.append((mid, qos))
        self._batch_bytes += len(payload)
        self.held_messages += 1
        self.held_bytes += len(payload)
        if len(self._topics) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        """Hand the messages read so far to the service as one batch."""
        if not self._topics:
            return
        self._seq += 1
        self._sent[self._seq] = (self._generation, self._acks, len(self._topics), self._batch_bytes)
        self._send(("batch", self._seq, self._batch_at, self._batch_bytes, self._topics, self._payloads))
        self._topics, self._payloads, self._acks, self._batch_bytes = [], [], [], 0

    def _commands(self) -> None:
        """Acks and stop/close from the service; an ack's PUBACKs go out on their own connection only."""
        try:
            while self.conn.poll():
                command = self.conn.recv()
                if command[0] == "ack":
                    generation, acks, n, nbytes = self._sent.pop(command[1])
                    if self.connected and generation == self._generation:
                        for mid, qos in acks:
                            self._client.ack(mid, qos)
                    self.held_messages -= n
                    self.held_bytes -= nbytes
                elif command[0] == "stop":
                    self._stopping = True
                    self._flush()
                    self._send(("stopped",))
                elif command[0] == "close":
                    self._closing = True
        except (EOFError, OSError):
            raise _Orphaned() from None

    def _full(self) -> bool:
        c = self.config
        return self.held_messages >= c.max_inflight or self.held_bytes >= c.max_held_bytes

    # -- paho callbacks -------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason_code: Any, _p: Any) -> None:
        if reason_code.is_failure:
            self._log(logging.ERROR, f"MQTT connect refused: {reason_code}")
            return
        self._flush()  # what the last connection delivered keeps that connection's generation
        self._generation += 1
        self._connections += 1
        client.subscribe([(f, self.config.qos) for f in self.config.subscriptions])
        self.connected = True
        self._send(("connected", self._connections, bool(flags.session_present)))

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        self.connected = False
        self._send(("disconnected", str(reason_code), self._closing))

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        """Connect, serve, reconnect until closed; an unexpected error is reported, then the loop ends."""
        try:
            reconnect_policy(self.config.reconnect_max_s, self._sleep, self._log_retry)(self._session)
        except _Orphaned:
            pass
        except Exception as e:
            with contextlib.suppress(_Orphaned):
                self._send(("failed", f"{type(e).__name__}: {e}", traceback.format_exc()))
        finally:
            self.conn.close()

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        if isinstance(error, _Lost):
            return  # the disconnect said so already
        c = self.config
        self._log(
            logging.WARNING,
            f"MQTT broker {c.host}:{c.port} not reachable ({error}); "
            f"retry {state.attempt_number} in {wait:.1f} s",
        )

    def _sleep(self, seconds: float) -> None:
        """Sleep, serving acks and waking early when closed."""
        deadline = time.monotonic() + seconds
        while not self._closing and (left := deadline - time.monotonic()) > 0:
            select.select([self.conn], [], [], left)
            self._commands()

    def _session(self) -> None:
        """One connection from CONNECT to its loss (`_Lost`/`_NotConnected`) or to close (returns)."""
        if self._closing:
            return
        client = self._client
        client.forget_buffer()
        client.reconnect()
        was_connected = False
        while True:
            self._commands()
            sock = client.socket()
            if sock is None:
                break
            if self._closing:
                client.disconnect()
                client.loop_write()
                return
            was_connected = was_connected or self.connected
            reading = not (self._stopping or self._full())
            if not reading:
                # The broker's PINGRESP waits behind the backlog we are not reading: keep sending
                # PINGREQs (so the broker keeps us), without paho timing out on the unread answers.
                client._ping_t = 0
            pending = reading and (
                client.buffered() or (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0)
            )
            watched: list[Any] = [self.conn, sock] if reading else [self.conn]
            readable, writable, _ = select.select(
                watched,
                [sock] if client.want_write() else [],
                [],
                0 if pending else 0.5,
            )
            if (sock in readable or pending) and self._read(client) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if sock in writable and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        self._flush()
        if self._closing:
            return
        raise _Lost() if was_connected or self.connected else _NotConnected()

    def _read(self, client: LeanClient) -> MQTTErrorCode:
        """Read packets while there are some and the bound allows (paho reads one per call)."""
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        for _ in range(READS_PER_WAKE):
            before = self.held_messages
            rc = client.loop_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._full():
                break
            if self.held_messages == before and not client.buffered():
                break
        self._flush()
        return rc


def main(fd: int) -> None:
    """The network process: `python -c 'from ingest.mqtt.network import main; main(FD)'`, with the
    pipe's end as FD; its first message is the NetworkConfig. SIGTERM/SIGINT are the service's to
    act on (it drains, then sends close): this process ends on close or when the service is gone."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        config = NetworkConfig.from_dict(conn.recv())
    except EOFError:
        sys.exit(0)
    NetworkLoop(config, conn).run()
