"""A least-recently-used cache of a one-string-argument function, bounded by the bytes of its keys.

Keys come from payloads and topics, which an attacker chooses: a cache bounded by entries would
hold 100,000 topics of 60 KB (6 GB). This one holds `max_bytes` of keys at most (a key costs its
length plus a fixed overhead) and does not cache a key longer than `max_key_bytes` at all.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")
ENTRY_OVERHEAD = 200  # bytes of dict slot, key object and value reference, roughly
_MISSING = object()


class ByteBoundedCache(Generic[V]):
    def __init__(self, fn: Callable[[str], V], max_bytes: int, max_key_bytes: int = 4096) -> None:
        self._fn = fn
        self._max_bytes = max_bytes
        self._max_key = max_key_bytes
        self._entries: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0

    def __call__(self, key: str) -> V:
        # A hit takes no lock: each OrderedDict call is atomic under the GIL, and a key another
        # thread evicts in between is still a correct value to return.
        hit = self._entries.get(key, _MISSING)
        if hit is not _MISSING:
            try:  # noqa: SIM105 (contextlib.suppress costs more than the lookup it guards)
                self._entries.move_to_end(key)
            except KeyError:
                pass
            return hit  # type: ignore[return-value]
        value = self._fn(key)
        if len(key) > self._max_key:
            return value
        with self._lock:
            if key not in self._entries:
                self._entries[key] = value
                self.bytes += len(key) + ENTRY_OVERHEAD
                while self.bytes > self._max_bytes:
                    old, _ = self._entries.popitem(last=False)
                    self.bytes -= len(old) + ENTRY_OVERHEAD
        return value

    def __len__(self) -> int:
        return len(self._entries)


def byte_bounded_cache(
    max_bytes: int, max_key_bytes: int = 4096
) -> Callable[[Callable[[str], V]], ByteBoundedCache[V]]:
    def wrap(fn: Callable[[str], V]) -> ByteBoundedCache[V]:
        return ByteBoundedCache(fn, max_bytes, max_key_bytes)

    return wrap
