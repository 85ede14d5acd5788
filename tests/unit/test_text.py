"""Text PostgreSQL cannot store is turned away at validation and escaped in dead letters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.config import ValidationSettings
from ingest.validation import Rejected, Validator
from processors.writer import DeadLetter
from schemas.readings import Reading
from schemas.text import escaped, escaped_json, storable

POISON = ["a\x00b", "a\ud800b", "\udfff", "\x00"]


@pytest.mark.parametrize("text", POISON)
def test_nul_and_lone_surrogates_are_not_storable(text: str) -> None:
    assert not storable(text)
    assert storable(escaped(text, 100))


def test_ordinary_unicode_is_storable_and_kept_as_is() -> None:
    text = "Zürich 東京 🚦 x'); DROP TABLE readings; --"
    assert storable(text)
    assert escaped(text, 1000) == text


def test_escaped_text_is_capped_even_when_escapes_lengthen_it() -> None:
    assert len(escaped("\x00" * 10_000, 200)) == 200
    assert len(escaped("x" * 10_000_000, 1000)) == 1000


def test_escaped_json_reaches_keys_and_nested_values() -> None:
    value = escaped_json({"t\x00": ["\ud800", {"k": "v\x00"}], "n": 3})
    assert value == {"t\\x00": ["\\ud800", {"k": "v\\x00"}], "n": 3}


@pytest.mark.parametrize("field", ["device_id", "city", "metric", "unit"])
@pytest.mark.parametrize("bad", ["\x00", "\ud800"])
def test_each_stored_text_of_a_reading_is_checked(field: str, bad: str) -> None:
    now = datetime.now(UTC)
    reading = Reading("air-1", "pm25", now, 5.0, "ug/m3", "demo")
    setattr(reading, field, getattr(reading, field) + bad)
    with pytest.raises(Rejected) as info:
        Validator(ValidationSettings()).canonical(reading, now)
    assert info.value.reason == "bad_text"
    assert storable(info.value.detail)


def test_every_dead_letter_column_is_capped_and_storable() -> None:
    huge = "\ud800\x00" * 1_000_000
    record = DeadLetter(huge, huge, huge, huge, 1, 2, huge, huge, b"\x00" * 10, 10).record()
    for column in record:
        if isinstance(column, str):
            assert storable(column) and len(column) <= 2000
