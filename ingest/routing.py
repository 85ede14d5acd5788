"""Topic -> (payload format, city, device): MQTT filters with `+`/`#`, or exact Kafka topic names.

A route also says whose word counts for identity (`TopicRoute.identity`, `trust_payload_city`);
`RouteMatch.device_of` and `RouteMatch.city_of` apply it to each decoded reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.config import TopicRoute
from schemas.cache import ByteBoundedCache

NGSI_URN_PREFIX = "urn:ngsi-ld:"


class IdentityMismatch(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class RouteMatch:
    format: str
    city: str | None
    device: str | None  # the topic's device on a topic-identity route, else None
    field_map: Mapping[str, str]  # shared by every message of the route: never mutated
    trust_payload_city: bool = False

    @property
    def dead_letter_city(self) -> str | None:
        """The city a dead letter of this route is filed under, whose readers see its payload: none
        (the platform's) where payloads choose their city, since one message may carry several
        cities' readings and its city field is the sender's claim."""
        return None if self.trust_payload_city else self.city

    def device_of(self, payload_device: str) -> str:
        """The device a reading is stored under: on a topic route, the payload may only name the
        topic's device (as is, or as an NGSI URN `urn:ngsi-ld:<Type>:<device>`, kept as spelled)."""
        topic = self.device
        if topic is None or payload_device == topic:
            return payload_device
        if payload_device.startswith(NGSI_URN_PREFIX) and payload_device.rpartition(":")[2] == topic:
            return payload_device
        raise IdentityMismatch(
            "device_mismatch",
            f"payload names device {payload_device[:100]!r}, the topic {topic[:100]!r}; "
            'a gateway route (identity = "payload") stores each payload device',
        )

    def city_of(self, payload_city: str | None) -> str:
        """The city a reading is stored under: the route's, or the payload's where the route trusts it."""
        if payload_city is not None and payload_city != self.city:
            if self.trust_payload_city:
                return payload_city
            raise IdentityMismatch(
                "city_mismatch",
                f"payload names city {payload_city[:100]!r}, the route {self.city!r}; "
                "set trust_payload_city on the route to let payloads choose",
            )
        if not self.city:
            raise IdentityMismatch("no_city", "neither the route nor a trusted payload names a city")
        return self.city


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
        self.match = ByteBoundedCache(self._match, max_bytes=16 * 1024 * 1024, max_key_bytes=1024)

    def _match(self, topic: str) -> RouteMatch | None:
        levels = topic.split("/")
        for r in self._routes:
            if not topic_matches(r.filter, topic):
                continue
            city = r.city
            if r.city_level is not None and r.city_level <= len(levels):
                city = levels[r.city_level - 1]
            device = None
            if r.identity == "topic" and r.device_level and r.device_level <= len(levels):
                device = levels[r.device_level - 1]  # "" is no device: every payload id disagrees
            return RouteMatch(r.format, city, device, r.field_map, r.trust_payload_city)
        return None
