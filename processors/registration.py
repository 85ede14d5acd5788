"""How many unknown devices the writer may auto-register: per inbound message and per city per minute.

Auto-registration lets a new sensor start reporting without a registry import; unbounded, it lets one
message (an NGSI notification naming 50 entities) or one noisy client fill a city's registry. A device
refused here stays unknown: its readings become `unknown_device` dead letters, replayable once it is
registered (or the next minute), and the refusal is counted in
`citykpi_device_registrations_refused_total`. The budget caps what the service's sources deliver;
`citykpi replay` and `deadletters requeue` are the operator's and are not capped.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable

from core.telemetry import REGISTRATIONS_REFUSED

WINDOW_S = 60.0


class RegistrationBudget:
    """Admits new (city, device) pairs within `per_message` per message and `per_city_minute` per
    city over a sliding minute. Pairs without a message (origin -1: direct writes) skip the
    per-message cap."""

    def __init__(
        self, per_message: int, per_city_minute: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_message = per_message
        self.per_city_minute = per_city_minute
        self._clock = clock
        self._recent: defaultdict[str, deque[float]] = defaultdict(deque)

    def admit(self, candidates: Iterable[tuple[str, str, int]]) -> list[tuple[str, str]]:
        """The admitted (city, device) of `candidates` (city, device, origin), in order; each
        admitted pair is charged to its city's minute."""
        now = self._clock()
        per_origin: Counter[int] = Counter()
        admitted: list[tuple[str, str]] = []
        for city, device, origin in candidates:
            recent = self._recent[city]
            while recent and now - recent[0] >= WINDOW_S:
                recent.popleft()
            if origin >= 0 and per_origin[origin] >= self.per_message:
                REGISTRATIONS_REFUSED.labels("per_message").inc()
                continue
            if len(recent) >= self.per_city_minute:
                REGISTRATIONS_REFUSED.labels("per_city_minute").inc()
                continue
            per_origin[origin] += 1
            recent.append(now)
            admitted.append((city, device))
        return admitted
