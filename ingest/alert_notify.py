"""Where alert events go besides the `alerts` table: an MQTT topic and a webhook, both optional.

Called by the alert job (processors/alerts.py) with the events not yet published; it marks them
published only when every configured channel took them, so a channel that is down gets them on a
later run (at least once: receivers dedupe on alert_id, event, at). The job runs beside ingestion,
never inside a write, so a failing webhook cannot block or lose a reading.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import tenacity
from paho.mqtt.enums import CallbackAPIVersion

from core import telemetry
from core.config import AlertSettings, MqttSettings
from ingest.mqtt.source import credentials

log = logging.getLogger(__name__)


class AlertNotifier:
    def __init__(self, alerts: AlertSettings, mqtt_settings: MqttSettings) -> None:
        self.alerts = alerts
        self.mqtt = mqtt_settings

    @property
    def webhook_url(self) -> str:
        return self.alerts.webhook_url.get_secret_value() if self.alerts.webhook_url else ""

    @property
    def enabled(self) -> bool:
        return self.alerts.publishes

    async def __call__(self, events: list[dict[str, Any]]) -> None:
        """Publish to every configured channel; raises if one failed after its retries."""
        failed = []
        if self.alerts.mqtt_topic:
            try:
                await asyncio.to_thread(self._publish_mqtt, events)
            except Exception as e:
                telemetry.ALERT_NOTIFY_FAILURES.labels("mqtt").inc()
                failed.append(f"mqtt: {e}")
        if self.webhook_url:
            try:
                await self._post_webhook(events)
            except httpx.HTTPStatusError as e:  # the message would quote the URL, a secret
                telemetry.ALERT_NOTIFY_FAILURES.labels("webhook").inc()
                failed.append(f"webhook: HTTP {e.response.status_code}")
            except Exception as e:
                telemetry.ALERT_NOTIFY_FAILURES.labels("webhook").inc()
                failed.append(f"webhook: {type(e).__name__}")
        if failed:
            raise RuntimeError("; ".join(failed))

    async def _post_webhook(self, events: list[dict[str, Any]]) -> None:
        """POST {"events": [...]}, retried with jittered exponential backoff on errors and 5xx/429."""
        a = self.alerts
        async with httpx.AsyncClient(timeout=a.webhook_timeout_s) as client:
            async for attempt in tenacity.AsyncRetrying(
                stop=tenacity.stop_after_attempt(a.webhook_attempts),
                wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.5),
                retry=tenacity.retry_if_exception_type(httpx.HTTPError),
                reraise=True,
            ):
                with attempt:
                    response = await client.post(self.webhook_url, json={"events": events})
                    if response.status_code >= 500 or response.status_code == 429:
                        response.raise_for_status()
                    if response.status_code >= 400:  # the receiver refuses them: retrying will not help
                        log.warning(
                            "webhook refused %d alert events: HTTP %d", len(events), response.status_code
                        )

    def _publish_mqtt(self, events: list[dict[str, Any]]) -> None:
        """One QoS 1 message per event on `alerts.mqtt_topic`/<city_id>, each acknowledged by the broker."""
        s = self.mqtt
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", clean_session=True)
        credentials(s).apply(client)
        connected = threading.Event()
        client.on_connect = lambda *_a: connected.set()
        client.connect(s.host, s.port, 30)
        client.loop_start()
        try:
            if not connected.wait(10):
                raise ConnectionError(f"MQTT broker {s.host}:{s.port} did not accept the connection")
            infos = [
                client.publish(f"{self.alerts.mqtt_topic}/{e['city_id']}", json.dumps(e), qos=1)
                for e in events
            ]
            for info in infos:
                info.wait_for_publish(10)
                if not info.is_published():
                    raise ConnectionError("MQTT broker did not acknowledge an alert event")
        finally:
            client.disconnect()
            client.loop_stop()
