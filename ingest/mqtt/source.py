"""MQTT source (paho-mqtt 2.x): persistent session, QoS 1, manual acks after the database commit.

paho's network thread only appends (message, connection generation) to a deque; an asyncio task
drains it in chunks into `Delivery`s, so the two threads meet once per chunk, not once per message.
A message is PUBACKed only after its batch is committed. Acks for messages received on an earlier
connection are skipped: the broker redelivers those itself (persistent session) and the database
ignores them as duplicates, while a stale packet id must never acknowledge a different message.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections import deque
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest import telemetry
from ingest.config import MqttSettings
from ingest.pipeline import Delivery, Message, Pipeline
from ingest.routing import Router

log = logging.getLogger(__name__)

CHUNK = 2000


def apply_credentials(client: mqtt.Client, s: MqttSettings) -> None:
    """Username/password and TLS (CA, client certificate) from the settings; shared by every client."""
    if s.username:
        client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
    if s.tls_ca or s.tls_cert:
        ctx = ssl.create_default_context(cafile=str(s.tls_ca) if s.tls_ca else None)
        if s.tls_cert and s.tls_key:
            ctx.load_cert_chain(str(s.tls_cert), str(s.tls_key))
        client.tls_set_context(ctx)


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
        self._stopping = False
        self._inflight = 0
        self._client = self._make_client()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

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
        client.reconnect_delay_set(1, int(max(1, s.reconnect_max_s)))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = lambda *_a: self._subscribed.set()
        return client

    # -- paho thread ----------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason_code: Any, _p: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT connect refused: %s", reason_code)
            return
        self._generation += 1
        qos: int = self.settings.qos
        topics: list[tuple[str, int]] = [(f, qos) for f in self.subscriptions()]
        client.subscribe(topics)
        self._connected.set()
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
        if not self._stopping:
            log.warning("MQTT disconnected (%s); reconnecting with backoff", reason_code)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        was_empty = not self._queue
        self._queue.append((msg, self._generation, datetime.now(UTC)))
        if was_empty and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wakeup.set)

    # -- asyncio side ---------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        s = self.settings
        props = None
        if s.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry_s
            props.ReceiveMaximum = min(s.max_inflight, 65535)
            self._client.connect_async(
                s.host, s.port, s.keepalive_s, clean_start=s.clean_start, properties=props
            )
        else:
            self._client.connect_async(s.host, s.port, s.keepalive_s)
        self._client.loop_start()
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

    async def _submit_chunk(self) -> None:
        items: list[tuple[mqtt.MQTTMessage, int, datetime]] = []
        q = self._queue
        while q and len(items) < CHUNK:
            items.append(q.popleft())
        if not items:
            return
        messages = [Message(bytes(m.payload), m.topic, t) for m, _g, t in items]
        acks = [(m.mid, m.qos, g) for m, g, _t in items if m.qos > 0]
        self._inflight += len(acks)
        telemetry.MQTT_INFLIGHT.set(self._inflight)

        async def ack() -> None:
            generation = self._generation
            for mid, qos, g in acks:
                if g == generation:
                    self._client.ack(mid, qos)
            self._inflight -= len(acks)
            telemetry.MQTT_INFLIGHT.set(self._inflight)

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
        """Stop receiving; messages already queued are handed to the pipeline first."""
        self._stopping = True
        if self._task is not None:
            await self._task
        while self._queue:
            await self._submit_chunk()

    async def close(self) -> None:
        """Disconnect after the pipeline has drained (so the last acks go out first)."""
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
