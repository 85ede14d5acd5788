"""Sources are registered by name (ingest/sources.py): the service runs each one its settings enable."""

from __future__ import annotations

from typing import Any

import pytest

from core.config import Settings
from ingest import sources


class ConsoleSource:
    """A stand-in source of a new kind, made by this module's `from_settings`."""

    name = "console"
    held_messages = 0
    connected = True

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline


def from_settings(settings: Settings, pipeline: Any) -> ConsoleSource | None:
    return ConsoleSource(pipeline) if settings.log_level == "DEBUG" else None


def test_a_new_source_is_a_module_and_a_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sources.SOURCES, "console", __name__)
    pipeline = object()
    quiet = Settings(mqtt={"enabled": False}, kafka={"enabled": False})  # type: ignore[arg-type]
    assert sources.enabled_sources(quiet, pipeline) == []  # type: ignore[arg-type]
    loud = Settings(mqtt={"enabled": False}, kafka={"enabled": False}, log_level="DEBUG")  # type: ignore[arg-type]
    (found,) = sources.enabled_sources(loud, pipeline)  # type: ignore[arg-type]
    assert found.name == "console" and found.pipeline is pipeline  # type: ignore[attr-defined]


def test_the_built_in_sources_follow_their_enabled_flags() -> None:
    both = Settings(mqtt={"enabled": True}, kafka={"enabled": True})  # type: ignore[arg-type]
    assert [s.name for s in sources.enabled_sources(both, object())] == ["mqtt", "kafka"]  # type: ignore[arg-type]
    kafka_only = Settings(mqtt={"enabled": False}, kafka={"enabled": True})  # type: ignore[arg-type]
    assert [s.name for s in sources.enabled_sources(kafka_only, object())] == ["kafka"]  # type: ignore[arg-type]
