"""MQTT source (paho-mqtt 2.x): persistent session, QoS 1, manual acks after the database commit.

paho's network loop (ingest/mqtt/network.py) runs in a thread of the service, or in a process of
its own when `mqtt.network_process` is on (its per-packet work then has its own GIL and core).
Either way it talks to this side over one pipe: batches of (topic, payload) come in, read straight
into the event loop (`add_reader`) and handed to the pipeline as one `Delivery` each; `("ack",
seq)` goes back once a batch is committed, and the loop sends the PUBACKs, on the connection that
received the batch only. The loop stops reading at `max_inflight` held messages or
`max_held_bytes`, so what waits here is bounded too. A network loop that ends on its own (a crash,
kill -9 of the process) fails the service (`failure()`), which then exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import threading
from collections import deque
from dataclasses import asdict
from datetime import UTC, datetime
from multiprocessing import Pipe
from pathlib import Path
from typing import Any

from core import telemetry
from core.config import MqttSettings, Settings
from ingest.mqtt.network import Credentials, NetworkConfig, NetworkLoop
from ingest.pipeline import Delivery, Message, Pipeline
from ingest.routing import Router

log = logging.getLogger(__name__)

# the package root, so `python -c 'from ingest.mqtt.network import main'` finds this checkout
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def credentials(s: MqttSettings) -> Credentials:
    """Username/password and TLS files of the settings; `.apply(client)` sets them on a paho client."""
    return Credentials(
        s.username,
        s.password.get_secret_value() if s.password else None,
        str(s.tls_ca) if s.tls_ca else None,
        str(s.tls_cert) if s.tls_cert else None,
        str(s.tls_key) if s.tls_key else None,
    )


class MqttSource:
    name = "mqtt"

    def __init__(self, settings: MqttSettings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.router = Router(settings.routes)
        self.connected = False
        # held = received and not yet acknowledged (counted here: what the loop sent, minus the acks)
        self.held_messages = 0
        self.held_bytes = 0
        self.error: str | None = None  # set when the network loop ended on its own
        self._batches: deque[tuple[int, datetime, int, list[str], list[bytes]]] = deque()
        self._unacked_since: deque[datetime] = deque()  # first receive time of each submitted batch
        self._wakeup = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._reading_done = asyncio.Event()  # the loop said it stopped reading, or it ended
        self._closing = False
        self._conn, self._loop_end = Pipe(duplex=True)
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def alive(self) -> bool:
        """The network loop (process or thread) is running."""
        if self._process is not None:
            return self._process.poll() is None
        return self._thread is not None and self._thread.is_alive()

    def subscriptions(self) -> list[str]:
        s = self.settings
        filters = [r.filter for r in s.routes]
        if s.shared_group:
            return [f"$share/{s.shared_group}/{f}" for f in filters]
        return filters

    def network_config(self) -> NetworkConfig:
        s = self.settings
        return NetworkConfig(
            host=s.host,
            port=s.port,
            client_id=s.client_id,
            protocol=s.protocol,
            clean_start=s.clean_start,
            session_expiry_s=s.session_expiry_s,
            qos=s.qos,
            subscriptions=self.subscriptions(),
            keepalive_s=s.keepalive_s,
            reconnect_max_s=s.reconnect_max_s,
            max_inflight=s.max_inflight,
            max_held_bytes=s.max_held_bytes,
            credentials=credentials(s),
        )

    @property
    def network_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- start ----------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        telemetry.SOURCE_CONNECTED.labels(self.name).set(0)
        if self.settings.network_process:
            fd = self._loop_end.fileno()
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")])),
            }
            self._process = subprocess.Popen(
                [sys.executable, "-c", f"from ingest.mqtt.network import main; main({fd})"],
                pass_fds=[fd],
                env=env,
                stdin=subprocess.DEVNULL,
            )
            self._loop_end.close()  # the process holds it now: its exit is our EOF
            self._conn.send(asdict(self.network_config()))
        else:
            network = NetworkLoop(self.network_config(), self._loop_end)
            self._thread = threading.Thread(target=network.run, name="citykpi-mqtt-network", daemon=True)
            self._thread.start()
        self._loop.add_reader(self._conn.fileno(), self._readable)
        self._task = asyncio.create_task(self._pump(), name="citykpi-mqtt-pump")
        s = self.settings
        try:
            await asyncio.wait_for(self._subscribed.wait(), s.startup_wait_s)
        except TimeoutError:
            log.warning(
                "MQTT broker %s:%d not subscribed within %.0f s; still trying in the background",
                s.host,
                s.port,
                s.startup_wait_s,
            )

    # -- from the network loop ------------------------------------------------------------
    def _readable(self) -> None:
        try:
            while self._conn.poll():
                self._handle(self._conn.recv())
        except (EOFError, OSError):
            self._ended()

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "batch":
            _, seq, at, nbytes, topics, payloads = item
            self._batches.append((seq, datetime.fromtimestamp(at, UTC), nbytes, topics, payloads))
            self.held_messages += len(topics)
            self.held_bytes += nbytes
            self._wakeup.set()
        elif kind == "log":
            log.log(item[1], "%s", item[2])
        elif kind == "connected":
            _, connections, session_present = item
            if connections > 1:
                telemetry.RECONNECTS.labels(self.name).inc()
            self.connected = True
            telemetry.SOURCE_CONNECTED.labels(self.name).set(1)
            s = self.settings
            log.info(
                "MQTT connected to %s:%d (session present: %s), subscribed to %s",
                s.host,
                s.port,
                session_present,
                self.subscriptions(),
            )
        elif kind == "subscribed":
            self._subscribed.set()
        elif kind == "disconnected":
            self.connected = False
            telemetry.SOURCE_CONNECTED.labels(self.name).set(0)
            if not item[2]:
                log.warning("MQTT disconnected (%s); reconnecting", item[1])
        elif kind == "stopped":
            self._reading_done.set()
            self._wakeup.set()
        elif kind == "failed":
            log.error("MQTT network loop failed: %s\n%s", item[1], item[2])
            self.error = f"network loop: {item[1]}"

    def _ended(self) -> None:
        """The network loop's end of the pipe closed: expected after close, else a failure."""
        assert self._loop is not None
        self._loop.remove_reader(self._conn.fileno())
        self.connected = False
        telemetry.SOURCE_CONNECTED.labels(self.name).set(0)
        self._reading_done.set()
        self._wakeup.set()
        if not self._closing and self.error is None:
            if self._process is not None:  # its pipe closed as it exited: reap it for the exit code
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(0.2)
            self.error = f"network {'process' if self._process else 'thread'} ended"
            log.error("MQTT %s unexpectedly", self.error)

    def _send(self, item: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):  # the loop is gone: failure() says so
            self._conn.send(item)

    # -- to the pipeline ------------------------------------------------------------------
    async def _pump(self) -> None:
        """Hand each batch to the pipeline (waiting while it is full), until reading stopped."""
        while not (self._reading_done.is_set() and not self._batches):
            if not self._batches:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._submit(*self._batches.popleft())

    async def _submit(
        self, seq: int, at: datetime, nbytes: int, topics: list[str], payloads: list[bytes]
    ) -> None:
        messages = [Message(p, t, at) for t, p in zip(topics, payloads, strict=True)]
        self._unacked_since.append(at)

        async def ack() -> None:
            self._unacked_since.popleft()
            self.held_messages -= len(messages)
            self.held_bytes -= nbytes
            self._send(("ack", seq))

        await self.pipeline.submit(
            Delivery(
                self.name, self.router, messages, ack, {"messages": len(messages), "first_topic": topics[0]}
            )
        )

    async def report(self) -> None:
        telemetry.HELD_MESSAGES.labels(self.name).set(self.held_messages)
        telemetry.HELD_BYTES.labels(self.name).set(self.held_bytes)
        oldest = self._unacked_since[0] if self._unacked_since else None
        if oldest is None and self._batches:
            oldest = self._batches[0][1]
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
        telemetry.OLDEST_UNACKED_SECONDS.labels(self.name).set(age)

    def failure(self) -> str | None:
        """Why this source's background work died, if it did (the service then fails)."""
        if self.error is not None:
            code = self._process.poll() if self._process is not None else None  # reaped a moment later
            return self.error if code is None else f"{self.error} (exit code {code})"
        if self._task is not None and self._task.done() and not self._task.cancelled():
            error = self._task.exception()
            return f"pump: {type(error).__name__}: {error}" if error else None
        return None

    # -- shutdown -------------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop reading; messages already received are handed to the pipeline first."""
        self._send(("stop",))
        if self._task is not None:
            await self._task
        await self.report()

    async def close(self) -> None:
        """Disconnect after the pipeline has drained (so the last acks go out first)."""
        self._closing = True
        self._send(("close",))
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._process is not None:
            try:
                await asyncio.to_thread(self._process.wait, 10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                await asyncio.to_thread(self._process.wait)
        elif self._thread is not None and self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, 10)
        if self._loop is not None and not self._conn.closed:
            self._loop.remove_reader(self._conn.fileno())
        self._conn.close()
        if self._thread is None or not self._thread.is_alive():
            self._loop_end.close()  # the loop's end, when no thread holds it
        await self.report()


def from_settings(settings: Settings, pipeline: Pipeline) -> MqttSource | None:
    """The service's MQTT source (registered in ingest/sources.py), when `mqtt.enabled`."""
    return MqttSource(settings.mqtt, pipeline) if settings.mqtt.enabled else None
