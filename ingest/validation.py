"""Per-reading checks between decoding and storage; each failure has a short, stable reason."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from core.config import ValidationSettings
from schemas.metrics import METRICS, Metric
from schemas.readings import DecodeError, Reading
from schemas.text import storable
from schemas.units import conversion

MAX_ID_LENGTH = 200
KNOWN_KEYS_MAX = 32_768  # (device, city, metric, unit) combinations remembered as passing their checks
_KNOWN_KEY_CHARS = 256  # longer units or cities are checked every time rather than remembered

Key = tuple[str, str | None, str, str | None]  # device, city, metric, unit
Known = tuple[Metric, float, float]  # the metric, and scale and offset to its canonical unit


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
        self._known: dict[Key, Known] = {}

    def canonical(self, r: Reading, now: datetime) -> float:
        """The reading's value in its metric's canonical unit, or `Rejected` with the reason.

        The checks of a reading's names (device, city, metric, unit) depend on nothing else, so a
        combination that passed them is remembered (at most `KNOWN_KEYS_MAX`, then all forgotten
        at once): a device's next readings only check their value and time. The order of the
        checks, and so the reason of a reading failing several, is the same either way.
        """
        key = (r.device_id, r.city, r.metric, r.unit)
        known = self._known.get(key)
        metric = self._check_ids(r) if known is None else known[0]
        value = r.value
        if type(value) is not float and (
            not isinstance(value, float | int) or (isinstance(value, bool) and metric.aggregation != "state")
        ):
            raise Rejected("wrong_type", f"{r.metric}: {type(value).__name__}")
        if not math.isfinite(value):
            raise Rejected("not_finite", f"{r.metric}={value}")
        if known is None:
            known = self._remember(key, metric, r)
        value = float(value) * known[1] + known[2]
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

    @staticmethod
    def _check_ids(r: Reading) -> Metric:
        """The checks of the reading's names: storable text, a known metric, a valid device id."""
        check_text("device", r.device_id)
        check_text("city", r.city)
        check_text("metric", r.metric)
        check_text("unit", r.unit)
        metric = METRICS.get(r.metric)
        if metric is None:
            raise Rejected("unknown_metric", repr(r.metric)[:100])
        if _bad_id(r.device_id):
            raise Rejected("bad_device_id", repr(r.device_id)[:100])
        return metric

    def _remember(self, key: Key, metric: Metric, r: Reading) -> Known:
        """The unit's conversion (or `Rejected`), remembered with the metric for the key's next readings."""
        try:
            scale, offset = conversion(r.metric, r.unit)
        except DecodeError as e:
            raise Rejected(e.reason, f"{r.metric}: {e.detail or e}") from None
        known = (metric, scale, offset)
        if all(s is None or len(s) <= _KNOWN_KEY_CHARS for s in (r.unit, r.city)):
            if len(self._known) >= KNOWN_KEYS_MAX:
                self._known.clear()
            self._known[key] = known
        return known
