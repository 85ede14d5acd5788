"""Text PostgreSQL can store: no NUL character and no lone surrogate.

PostgreSQL rejects both in `text` and `jsonb` (SQLSTATE 22021/22P05), so one such string in a batch
fails the whole transaction. Validation turns them away (`storable`); dead letters, which must
always be writable, keep them as backslash escapes (`escaped`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def storable(s: str) -> bool:
    if "\x00" in s:
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def escaped(s: str, limit: int) -> str:
    """`s` cut to `limit` characters, NUL and lone surrogates written as backslash escapes."""
    s = s[:limit]
    if storable(s):
        return s
    return s.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")[:limit]


def escaped_json(value: Any, limit: int = 1000) -> Any:
    """A JSON-able value whose strings (keys too) are all `escaped`: safe to store as jsonb."""
    if isinstance(value, str):
        return escaped(value, limit)
    if isinstance(value, Mapping):
        return {escaped(str(k), limit): escaped_json(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [escaped_json(v, limit) for v in value]
    return value
