"""Topic -> (payload format, city, device): MQTT filters with `+`/`#`, or exact Kafka topic names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from ingest.config import TopicRoute


@dataclass(frozen=True, slots=True)
class RouteMatch:
    format: str
    city: str | None
    device: str | None
    field_map: Mapping[str, str]  # shared by every message of the route: never mutated


def topic_matches(filter_: str, topic: str) -> bool:
    """MQTT filter matching (a `$share/<group>/` prefix is ignored)."""
    if filter_.startswith("$share/"):
        filter_ = filter_.split("/", 2)[2]
    f_levels, t_levels = filter_.split("/"), topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels) or (f != "+" and f != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


class Router:
    def __init__(self, routes: list[TopicRoute]) -> None:
        self._routes = routes
        self.match = lru_cache(maxsize=100_000)(self._match)

    def _match(self, topic: str) -> RouteMatch | None:
        levels = topic.split("/")
        for r in self._routes:
            if not topic_matches(r.filter, topic):
                continue
            city = r.city
            if r.city_level is not None and r.city_level <= len(levels):
                city = levels[r.city_level - 1]
            device = levels[r.device_level - 1] if r.device_level and r.device_level <= len(levels) else None
            return RouteMatch(r.format, city, device, r.field_map)
        return None
