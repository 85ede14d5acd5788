"""Caches keyed by attacker-chosen text stay within their byte budget."""

from __future__ import annotations

from core.config import MqttSettings
from ingest.routing import Router
from schemas.cache import ENTRY_OVERHEAD, ByteBoundedCache
from schemas.metrics import canonical_metric_name


def test_many_large_keys_stay_within_the_byte_budget_and_the_newest_are_kept() -> None:
    cache = ByteBoundedCache(len, max_bytes=100_000, max_key_bytes=10_000)
    keys = [f"{i:05d}" + "x" * 5000 for i in range(1000)]
    for k in keys:
        assert cache(k) == len(k)
    assert cache.bytes <= 100_000
    assert len(cache) == 100_000 // (5005 + ENTRY_OVERHEAD)
    calls: list[str] = []
    spy = ByteBoundedCache(lambda k: calls.append(k) or 1, max_bytes=100_000, max_key_bytes=10_000)
    for k in keys[-3:] * 2:
        spy(k)
    assert calls == keys[-3:]  # the second round was served from the cache


def test_keys_over_the_per_key_limit_are_computed_not_kept() -> None:
    cache = ByteBoundedCache(len, max_bytes=10**9, max_key_bytes=100)
    assert cache("y" * 101) == 101
    assert len(cache) == 0 and cache.bytes == 0


def test_the_topic_router_holds_no_more_than_its_budget_of_hostile_topics() -> None:
    router = Router(MqttSettings().routes)
    for i in range(2000):
        router.match(f"city/demo/senml/{i}" + "z" * 60_000)  # 60 KB topics: 120 MB if all were kept
        router.match(f"city/demo/senml/dev-{i}")
    assert router.match.bytes <= 16 * 1024 * 1024  # type: ignore[attr-defined]
    assert router.match("city/demo/senml/dev-1").device == "dev-1"  # type: ignore[union-attr]


def test_metric_names_from_payloads_do_not_grow_the_name_cache_past_its_budget() -> None:
    for i in range(300):
        assert canonical_metric_name(f"{i}" + "n" * 200_000) is None
    assert canonical_metric_name("PM2_5") == "pm25"
    assert canonical_metric_name.bytes <= 4 * 1024 * 1024
