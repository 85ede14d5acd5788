"""Dead-letter rows as the writer builds them, and the topic filters that select them: no server."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from ingest.deadletters import topic_filter_regex
from processors.writer import MAX_ID_CHARS, MAX_TOPIC_CHARS, MessageOrigin, WriteBatch


def test_a_bisected_batch_keeps_each_rows_message() -> None:
    batch = WriteBatch("mqtt")
    now = datetime.now(UTC)
    for i in range(4):
        batch.origins.append(MessageOrigin("mqtt", f"t/{i}", None, None, now, b"p%d" % i, 1024))
        batch.add("demo", f"d{i}", "pm25", now, 1.0, origin=i)
    second_half = batch.take([2, 3])
    letter = second_half.dead_letter(1, "db_rejected:23514", "check violation")
    assert (letter.topic, letter.payload, letter.device_id) == ("t/3", b"p3", "d3")


def test_dead_letter_rows_cut_hostile_topics_and_ids() -> None:
    origin = MessageOrigin("mqtt", "x/" * 5000, None, None, None, b"{}", 1024)
    row = origin.dead_letter("no_route", "d" * 10_000, "c" * 10_000, "d" * 10_000).record()
    topic, city, device, detail = row[1], row[4], row[5], row[7]
    assert isinstance(topic, str) and len(topic) == MAX_TOPIC_CHARS and topic.endswith("…")
    assert isinstance(city, str) and isinstance(device, str) and len(city) == len(device) == MAX_ID_CHARS
    assert isinstance(detail, str) and len(detail) <= 2000


@pytest.mark.parametrize(
    ("topic_filter", "matches", "misses"),
    [
        (
            "city/+/senml/+",
            ["city/demo/senml/a-1"],
            ["city/demo/senml", "city/demo/senml/a/b", "cityXdemo/senml/a"],
        ),
        ("city/demo/#", ["city/demo", "city/demo/x/y"], ["city/demolition/x"]),
        ("citykpi.senml", ["citykpi.senml"], ["citykpiXsenml", "citykpi.senml.x"]),
    ],
)
def test_topic_filters_select_what_the_mqtt_filter_matches(
    topic_filter: str, matches: list[str], misses: list[str]
) -> None:
    regex = re.compile(topic_filter_regex(topic_filter))
    assert all(regex.search(t) for t in matches) and not any(regex.search(t) for t in misses)
