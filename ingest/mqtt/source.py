"""MQTT source (paho-mqtt 2.x): persistent session, QoS 1, manual acks after the database commit.

The service runs paho's network loop itself, in one thread (`loop_read`/`loop_write`/`loop_misc`
on the socket), so it can stop reading while it holds more than `max_inflight` messages or
`max_held_bytes` of payload: the backlog then stays in the broker (and in the TCP window), on
MQTT 3.1.1 too, where nothing tells the broker how many messages the client can take.

paho's callbacks only append (message, connection generation) to a deque; an asyncio task drains
it in chunks into `Delivery`s. A message is PUBACKed only after its batch is committed: the ack
is handed back to the network thread, the socket's only user. Acks for messages received on an
earlier connection are skipped: the broker redelivers those itself (persistent session) and the
database ignores them as duplicates, while a stale packet id must never acknowledge a different
message. Reconnecting is one tenacity policy (`reconnect_policy`): jittered exponential backoff
capped at `reconnect_max_s`, started over after a connection that was up is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import tenacity
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core import telemetry
from core.config import MqttSettings, Settings
from ingest.pipeline import Delivery, Message, Pipeline
from ingest.routing import Router

log = logging.getLogger(__name__)

CHUNK = 2000
READS_PER_WAKE = 1000  # packets read per readable socket before looking at acks and the bound again


def apply_credentials(client: mqtt.Client, s: MqttSettings) -> None:
    """Username/password and TLS (CA, client certificate) from the settings; shared by every client."""
    if s.username:
        client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
    if s.tls_ca or s.tls_cert:
        ctx = ssl.create_default_context(cafile=str(s.tls_ca) if s.tls_ca else None)
        if s.tls_cert and s.tls_key:
            ctx.load_cert_chain(str(s.tls_cert), str(s.tls_key))
        client.tls_set_context(ctx)


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


class MqttSource:
    name = "mqtt"

    def __init__(self, settings: MqttSettings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.router = Router(settings.routes)
        self._queue: deque[tuple[mqtt.MQTTMessage, int, datetime]] = deque()
        self._generation = 0
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stopping = False  # no new messages are read (shutdown)
        self._closing = False  # the network thread disconnects and ends
        # held = received and not yet acknowledged; changed by the network thread only
        self.held_messages = 0
        self.held_bytes = 0
        self._acks: deque[tuple[list[tuple[int, int, int]], int, int]] = deque()
        self._unacked_since: deque[datetime] = deque()  # first receive time of each submitted chunk
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._connections = 0
        self.error: BaseException | None = None  # set when the network thread died
        self._client = self._make_client()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def subscriptions(self) -> list[str]:
        s = self.settings
        filters = [r.filter for r in s.routes]
        if s.shared_group:
            return [f"$share/{s.shared_group}/{f}" for f in filters]
        return filters

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=None if v5 else s.clean_start,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
        )
        apply_credentials(client, s)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = lambda *_a: self._subscribed.set()
        return client

    # -- network thread -------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason_code: Any, _p: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT connect refused: %s", reason_code)
            return
        self._generation += 1
        self._connections += 1
        if self._connections > 1:
            telemetry.RECONNECTS.labels(self.name).inc()
        qos: int = self.settings.qos
        topics: list[tuple[str, int]] = [(f, qos) for f in self.subscriptions()]
        client.subscribe(topics)
        self._connected.set()
        telemetry.SOURCE_CONNECTED.labels(self.name).set(1)
        log.info(
            "MQTT connected to %s:%d (session present: %s), subscribed to %s",
            self.settings.host,
            self.settings.port,
            flags.session_present,
            self.subscriptions(),
        )

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        self._connected.clear()
        self._subscribed.clear()
        telemetry.SOURCE_CONNECTED.labels(self.name).set(0)
        if not self._closing:
            log.warning("MQTT disconnected (%s); reconnecting", reason_code)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.held_messages += 1
        self.held_bytes += len(msg.payload)
        was_empty = not self._queue
        self._queue.append((msg, self._generation, datetime.now(UTC)))
        if was_empty and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wakeup.set)

    def _full(self) -> bool:
        s = self.settings
        return self.held_messages >= s.max_inflight or self.held_bytes >= s.max_held_bytes

    def _network(self) -> None:
        """Connect, serve, reconnect until closed; an unexpected error ends the thread (`error`)."""
        try:
            reconnect_policy(self.settings.reconnect_max_s, self._sleep, self._log_retry)(self._session)
        except Exception as e:
            log.exception("MQTT network thread failed")
            self.error = e
        finally:
            self._connected.clear()
            telemetry.SOURCE_CONNECTED.labels(self.name).set(0)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        if isinstance(error, _Lost):
            return  # _on_disconnect said so already
        log.warning(
            "MQTT broker %s:%d not reachable (%s); retry %d in %.1f s",
            self.settings.host,
            self.settings.port,
            error,
            state.attempt_number,
            wait,
        )

    def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when the source is closed."""
        deadline = time.monotonic() + seconds
        while not self._closing and (left := deadline - time.monotonic()) > 0:
            select.select([self._wake_r], [], [], left)
            self._drain_wake()

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def _session(self) -> None:
        """One connection from CONNECT to its loss (`_Lost`/`_NotConnected`) or to close (returns)."""
        if self._closing:
            return
        client = self._client
        client.reconnect()
        was_connected = False
        while True:
            self._apply_acks()
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
            pending = reading and isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
            readable, writable, _ = select.select(
                [self._wake_r, sock] if reading else [self._wake_r],
                [sock] if client.want_write() else [],
                [],
                0 if pending else 0.5,
            )
            if self._wake_r in readable:
                self._drain_wake()
            if (sock in readable or pending) and self._read(client) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if sock in writable and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        if self._closing:
            return
        raise _Lost() if was_connected or self.connected else _NotConnected()

    def _read(self, client: mqtt.Client) -> MQTTErrorCode:
        """Read packets while there are some and the bound allows (paho reads one per call)."""
        for _ in range(READS_PER_WAKE):
            before = self.held_messages
            rc = client.loop_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self.held_messages == before or self._full():
                return rc
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _apply_acks(self) -> None:
        while self._acks:
            acks, n, nbytes = self._acks.popleft()
            generation = self._generation
            if self.connected:
                for mid, qos, g in acks:
                    if g == generation:
                        self._client.ack(mid, qos)
            self.held_messages -= n
            self.held_bytes -= nbytes

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already woken (buffer full), or closed
            self._wake_w.send(b"x")

    # -- asyncio side ---------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        s = self.settings
        if s.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry_s
            props.ReceiveMaximum = min(s.max_inflight, 65535)
            self._client.connect_async(
                s.host, s.port, s.keepalive_s, clean_start=s.clean_start, properties=props
            )
        else:
            self._client.connect_async(s.host, s.port, s.keepalive_s)
        telemetry.SOURCE_CONNECTED.labels(self.name).set(0)
        self._thread = threading.Thread(target=self._network, name="citykpi-mqtt-network", daemon=True)
        self._thread.start()
        self._task = asyncio.create_task(self._pump(), name="citykpi-mqtt-pump")
        if not await asyncio.to_thread(self._subscribed.wait, s.startup_wait_s):
            log.warning(
                "MQTT broker %s:%d not subscribed within %.0f s; still trying in the background",
                s.host,
                s.port,
                s.startup_wait_s,
            )

    async def _pump(self) -> None:
        while not self._stopping:
            if not self._queue:
                self._wakeup.clear()
                if not self._queue:
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), 0.5)
                    except TimeoutError:
                        continue
            await self._submit_chunk()

    async def report(self) -> None:
        self._report()

    def failure(self) -> str | None:
        """Why this source's background work died, if it did (the service then fails)."""
        if self.error is not None:
            return f"network thread: {type(self.error).__name__}: {self.error}"
        if self._task is not None and self._task.done() and not self._task.cancelled():
            error = self._task.exception()
            return f"pump: {type(error).__name__}: {error}" if error else None
        return None

    def _report(self) -> None:
        telemetry.HELD_MESSAGES.labels(self.name).set(self.held_messages)
        telemetry.HELD_BYTES.labels(self.name).set(self.held_bytes)
        oldest = self._unacked_since[0] if self._unacked_since else None
        if oldest is None and self._queue:
            oldest = self._queue[0][2]
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
        telemetry.OLDEST_UNACKED_SECONDS.labels(self.name).set(age)

    async def _submit_chunk(self) -> None:
        items: list[tuple[mqtt.MQTTMessage, int, datetime]] = []
        q = self._queue
        while q and len(items) < CHUNK:
            items.append(q.popleft())
        if not items:
            return
        messages = [Message(bytes(m.payload), m.topic, t) for m, _g, t in items]
        acks = [(m.mid, m.qos, g) for m, g, _t in items if m.qos > 0]
        n, nbytes = len(items), sum(len(m.payload) for m in messages)
        self._unacked_since.append(items[0][2])

        async def ack() -> None:
            self._unacked_since.popleft()
            self._acks.append((acks, n, nbytes))
            self._wake()

        await self.pipeline.submit(
            Delivery(
                self.name,
                self.router,
                messages,
                ack,
                {"messages": len(messages), "first_topic": items[0][0].topic},
            )
        )

    async def stop(self) -> None:
        """Stop reading; messages already received are handed to the pipeline first."""
        self._stopping = True
        self._wake()
        if self._task is not None:
            await self._task
        while self._queue:
            await self._submit_chunk()
        self._report()

    async def close(self) -> None:
        """Disconnect after the pipeline has drained (so the last acks go out first)."""
        self._closing = True
        self._wake()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        self._report()
        self._wake_r.close()
        self._wake_w.close()


def from_settings(settings: Settings, pipeline: Pipeline) -> MqttSource | None:
    """The service's MQTT source (registered in ingest/sources.py), when `mqtt.enabled`."""
    return MqttSource(settings.mqtt, pipeline) if settings.mqtt.enabled else None
