"""Sparkplug B rebirth requests: the host's side of "DATA before BIRTH".

The decoder marks an edge node whose DATA it could not read (no NBIRTH yet, or a seq gap) in
`SparkplugSessions.rebirths_wanted`; this job publishes `spBv1.0/<group>/NCMD/<node>` with the
metric `Node Control/Rebirth` = true, so the node sends its BIRTH certificates again, at most once per
node every `mqtt.sparkplug_rebirth_s`. A BIRTH clears the wish.
"""

from __future__ import annotations

import asyncio
import logging
import time

from core.config import MqttSettings
from ingest.publishers import MqttPublisher
from ingest.simulator import SimMessage
from schemas.sparkplug import SessionKey, SparkplugSessions
from schemas.sparkplug.payloads import rebirth_command

log = logging.getLogger(__name__)


def asks_for_rebirths(settings: MqttSettings) -> bool:
    """Whether the service runs the rebirth job: MQTT on, a Sparkplug B route, requests not off."""
    return (
        settings.enabled
        and settings.sparkplug_rebirth_s > 0
        and any(r.format == "sparkplug-b" for r in settings.routes)
    )


def due_requests(
    sessions: SparkplugSessions, asked: dict[SessionKey, float], now: float, every_s: float
) -> list[SessionKey]:
    """The nodes to ask now: wanted, and not asked within `every_s`."""
    wanted = sorted(sessions.rebirths_wanted, key=str)
    return [k for k in wanted if k not in asked or now - asked[k] >= every_s]


async def rebirth_loop(settings: MqttSettings, sessions: SparkplugSessions, poll_s: float = 1.0) -> None:
    """Publish the due rebirth requests every `poll_s`, over a connection of its own (opened with
    the first request: a deployment without Sparkplug B never connects)."""
    publisher: MqttPublisher | None = None
    asked: dict[SessionKey, float] = {}
    try:
        while True:
            now = time.monotonic()
            due = due_requests(sessions, asked, now, settings.sparkplug_rebirth_s)
            if due:
                if publisher is None:
                    publisher = MqttPublisher(settings, client_id=f"{settings.client_id}-sparkplug-host")
                    await publisher.start()
                stamp = int(time.time() * 1000)
                await publisher.publish(
                    SimMessage(f"spBv1.0/{k.group}/NCMD/{k.edge_node}", rebirth_command(stamp)) for k in due
                )
                for k in due:
                    asked[k] = now
                log.info("asked %d Sparkplug B edge nodes to send their BIRTH again", len(due))
            await asyncio.sleep(poll_s)
    finally:
        if publisher is not None:
            await publisher.stop()
