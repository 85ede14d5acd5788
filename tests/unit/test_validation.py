"""The validator remembers a (device, city, metric, unit) that passed its name checks; a known
name must still have each value and time checked, and give the reasons an unknown one gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.config import ValidationSettings
from ingest import validation
from ingest.validation import Rejected, Validator
from schemas.readings import Reading

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _reason(v: Validator, r: Reading) -> str | None:
    try:
        v.canonical(r, NOW)
    except Rejected as e:
        return e.reason
    return None


BAD_VALUES = [
    (Reading("air-1", "pm25", NOW, float("nan"), "ug/m3", "demo"), "not_finite"),
    (Reading("air-1", "pm25", NOW, "12", "ug/m3", "demo"), "wrong_type"),  # type: ignore[arg-type]
    (Reading("air-1", "pm25", NOW, True, "ug/m3", "demo"), "wrong_type"),
    (Reading("air-1", "pm25", NOW, 1e9, "ug/m3", "demo"), "out_of_range"),
    (Reading("air-1", "pm25", NOW + timedelta(hours=1), 5.0, "ug/m3", "demo"), "time_in_future"),
    (Reading("air-1", "pm25", datetime(1990, 1, 1, tzinfo=UTC), 5.0, "ug/m3", "demo"), "time_too_old"),
    (Reading("air-1", "pm25", NOW, 5.0, "ppm", "demo"), "wrong_unit"),
    (Reading("air-1", "pm25", NOW, float("inf"), "furlong", "demo"), "not_finite"),  # value before unit
    (Reading("air-1", "pm25", NOW, "x", "furlong", "demo"), "wrong_type"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("reading", "reason"), BAD_VALUES)
def test_a_known_device_metric_and_unit_still_has_its_value_and_time_checked(
    reading: Reading, reason: str
) -> None:
    fresh, warm = Validator(ValidationSettings()), Validator(ValidationSettings())
    good = Reading(reading.device_id, reading.metric, NOW, 5.0, reading.unit, reading.city)
    if reading.unit not in ("furlong", "ppm"):
        warm.canonical(good, NOW)
    assert _reason(fresh, reading) == reason
    assert _reason(warm, reading) == reason
    assert _reason(warm, reading) == reason  # and again, once whatever it could remember is


def test_the_remembered_conversion_is_the_units() -> None:
    v = Validator(ValidationSettings())
    for _ in range(3):
        assert v.canonical(Reading("t-1", "temperature", NOW, 86.0, "degF", "demo"), NOW) == pytest.approx(30)
        assert v.canonical(Reading("t-1", "temperature", NOW, 20.0, None, "demo"), NOW) == 20.0


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "KNOWN_KEYS_MAX", 10)
    v = Validator(ValidationSettings())
    for i in range(25):
        v.canonical(Reading(f"air-{i}", "pm25", NOW, 5.0, None, "demo"), NOW)
        assert len(v._known) <= 10
    long_unit = "ug/m3" + " " * 1000  # read after trimming, but not worth remembering
    v.canonical(Reading("air-x", "pm25", NOW, 5.0, long_unit, "demo"), NOW)
    assert all(key[3] != long_unit for key in v._known)
