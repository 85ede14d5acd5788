"""Publishers used by the simulator, the benchmarks and the tests: MQTT (paho) and Kafka (aiokafka).

The MQTT publisher also hands the simulator the commands addressed to its Sparkplug B edge nodes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from paho.mqtt.enums import CallbackAPIVersion

from core.config import KafkaSettings, MqttSettings
from ingest.kafka.source import kafka_security_kwargs
from ingest.mqtt.source import credentials
from ingest.simulator import SimMessage

# paho loses messages once more than 65,535 wait for their PUBACK (packet ids wrap): our semaphore
# keeps fewer in flight. paho's own in-flight limit stays off (0): with one set, paho walks every
# message in flight on each PUBACK (Client._update_inflight), and a publisher at 5,000 msg/s spent
# all its CPU there after a few minutes.
MAX_UNACKED = 20_000


class MqttPublisher:
    def __init__(self, settings: MqttSettings, client_id: str = "citykpi-publisher", qos: int = 1) -> None:
        self.qos = qos
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        credentials(settings).apply(self._client)
        self._client.max_inflight_messages_set(0)
        self._client.max_queued_messages_set(0)
        self._settings = settings
        self._acked = threading.Semaphore(MAX_UNACKED)
        self._client.on_publish = lambda *_a: self._acked.release()
        self._subscriptions: list[str] = []
        self.published = 0

    def subscribe(self, topic: str) -> asyncio.Queue[SimMessage]:
        """The messages on `topic` (a filter), handed to the calling event loop; subscribed at every
        connect. Call before `start`."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[SimMessage] = asyncio.Queue()

        def received(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:  # paho's thread
            loop.call_soon_threadsafe(queue.put_nowait, SimMessage(m.topic, bytes(m.payload)))

        self._client.message_callback_add(topic, received)
        self._subscriptions.append(topic)
        return queue

    async def start(self) -> None:
        connected = threading.Event()

        def on_connect(*_a: object) -> None:
            for topic in self._subscriptions:
                self._client.subscribe(topic, qos=1)
            connected.set()

        self._client.on_connect = on_connect
        self._client.connect(self._settings.host, self._settings.port, 30)
        self._client.loop_start()
        if not await asyncio.to_thread(connected.wait, 10):
            raise TimeoutError("publisher could not connect to the MQTT broker")

    async def publish(self, messages: Iterable[SimMessage]) -> None:
        for m in messages:
            if not self._acked.acquire(blocking=False):
                await asyncio.to_thread(self._acked.acquire)
            self._client.publish(m.topic, m.payload, qos=self.qos)
            self.published += 1

    async def flush(self) -> None:
        """Wait until the broker acknowledged everything published."""
        for _ in range(MAX_UNACKED):
            await asyncio.to_thread(self._acked.acquire)
        for _ in range(MAX_UNACKED):
            self._acked.release()

    async def stop(self) -> None:
        await self.flush()
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)


class KafkaPublisher:
    def __init__(self, settings: KafkaSettings, topic_for_format: dict[str, str]) -> None:
        self._settings = settings
        self._topics = topic_for_format
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            linger_ms=5,
            max_batch_size=256 * 1024,
            **kafka_security_kwargs(settings),
        )
        self.published = 0

    async def start(self) -> None:
        await self._producer.start()

    def topic(self, mqtt_topic: str) -> str:
        """The Kafka topic for a simulator message: by its format (the third MQTT topic level)."""
        fmt = mqtt_topic.split("/")[2]
        return self._topics.get(fmt, self._topics.get("senml", "citykpi.senml"))

    async def publish(self, messages: Iterable[SimMessage]) -> None:
        futures = []
        for m in messages:
            key = m.topic.rsplit("/", 1)[-1].encode()
            headers = [(k, v.encode()) for k, v in m.headers.items()]
            futures.append(
                await self._producer.send(self.topic(m.topic), m.payload, key=key, headers=headers)
            )
            self.published += 1
        if futures:
            await asyncio.gather(*futures)

    async def flush(self) -> None:
        await self._producer.flush()

    async def stop(self) -> None:
        await self._producer.stop()
