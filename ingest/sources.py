"""The inbound sources the service runs, registered by name like Telegraf's input plugins.

A source is a package `ingest/<name>/` whose `source.py` defines `from_settings(settings, pipeline)`:
the `Source` its settings section describes, or None when that section is disabled. It hands each
batch of messages to the pipeline as a `Delivery` whose `ack` is called once they are committed.
Registering it is one line in `SOURCES`; its module is imported only when the service starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from core.config import Settings
    from ingest.pipeline import Pipeline

# name -> module defining `from_settings(settings, pipeline) -> Source | None`
SOURCES: dict[str, str] = {
    "mqtt": "ingest.mqtt.source",
    "kafka": "ingest.kafka.source",
}


class Source(Protocol):
    name: str
    held_messages: int

    @property
    def connected(self) -> bool: ...

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def close(self) -> None: ...
    async def report(self) -> None: ...
    def failure(self) -> str | None: ...


def enabled_sources(settings: Settings, pipeline: Pipeline) -> list[Source]:
    """One source per registered name whose settings enable it, in registration order."""
    found: list[Source] = []
    for module in SOURCES.values():
        source = importlib.import_module(module).from_settings(settings, pipeline)
        if source is not None:
            found.append(source)
    return found
