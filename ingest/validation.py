"""Per-reading checks between decoding and storage; each failure has a short, stable reason."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from core.config import ValidationSettings
from schemas.metrics import METRICS
from schemas.readings import DecodeError, Reading
from schemas.text import storable
from schemas.units import normalize

MAX_ID_LENGTH = 200


class Rejected(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _bad_id(s: str | None) -> bool:
    return not s or len(s) > MAX_ID_LENGTH or not s.isprintable()


def bad_text(what: str, s: object) -> str | None:
    """The `bad_text` detail for text PostgreSQL cannot store (it would fail the whole batch)."""
    if isinstance(s, str) and not storable(s):
        return f"{what} {ascii(s)[:100]}"
    return None


def check_text(what: str, s: object) -> None:
    if (detail := bad_text(what, s)) is not None:
        raise Rejected("bad_text", detail)


class Validator:
    def __init__(self, settings: ValidationSettings) -> None:
        self.settings = settings
        self._max_future = timedelta(seconds=settings.max_future_s)

    def canonical(self, r: Reading, now: datetime) -> float:
        """The reading's value in its metric's canonical unit, or `Rejected` with the reason."""
        check_text("device", r.device_id)
        check_text("city", r.city)
        check_text("metric", r.metric)
        check_text("unit", r.unit)
        metric = METRICS.get(r.metric)
        if metric is None:
            raise Rejected("unknown_metric", repr(r.metric)[:100])
        if _bad_id(r.device_id):
            raise Rejected("bad_device_id", repr(r.device_id)[:100])
        value = r.value
        if not isinstance(value, float | int) or (isinstance(value, bool) and metric.aggregation != "state"):
            raise Rejected("wrong_type", f"{r.metric}: {type(value).__name__}")
        if not math.isfinite(value):
            raise Rejected("not_finite", f"{r.metric}={value}")
        try:
            value = normalize(r.metric, float(value), r.unit)
        except DecodeError as e:
            raise Rejected(e.reason, f"{r.metric}: {e.detail or e}") from None
        if not (metric.plausible_min <= value <= metric.plausible_max):
            raise Rejected(
                "out_of_range",
                f"{r.metric}={value:g} {metric.canonical_unit} outside "
                f"[{metric.plausible_min:g}, {metric.plausible_max:g}]",
            )
        t = r.time
        if t > now + self._max_future:
            raise Rejected("time_in_future", f"{t.isoformat()} is after {now.isoformat()}")
        if t < self.settings.min_time:
            raise Rejected("time_too_old", f"{t.isoformat()} is before {self.settings.min_time.isoformat()}")
        return value
