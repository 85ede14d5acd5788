"""`load_json` reads payloads with orjson where it can, and must give exactly what `json` gives.

orjson refuses NaN/Infinity, numbers beyond a double and lone surrogates, and reads integers beyond
64 bits as floats: each of those must still come out as the standard library reads them.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.decoders._common import load_json
from schemas.readings import DecodeError


def _same(a: Any, b: Any) -> bool:
    """Equal, type for type (1 is not 1.0), NaN equal to NaN, -0.0 apart from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v": NaN, "w": Infinity, "x": -Infinity}',
        b'{"v": 1e400}',
        b'{"device_id": 123456789012345678901234567890, "pm25": 1}',
        b'{"v": 18446744073709551616}',
        b'{"v": -9223372036854775809}',
        b'{"v": 9223372036854775807, "w": -9223372036854775808}',
        b'{"device_id": "\\ud800", "pm25": 1}',
        b'{"device_id": "a\\u0000b", "pm25": 1}',
        b'{"a": 1, "a": 2}',
        b'{"v": -0.0, "w": 0.1, "x": 5e-324, "y": 1.7976931348623157e308}',
        b'\xef\xbb\xbf{"pm25": 1}',
        '{"pm25": 1}'.encode("utf-16"),
        b'  {"pm25": 1}\n',
    ],
)
def test_load_json_reads_what_json_reads(payload: bytes) -> None:
    text = payload.decode("utf-8-sig") if not payload.startswith(b"\xff\xfe") else payload.decode("utf-16")
    assert _same(load_json(payload), json.loads(text))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"pm25": 1', "bad_json"),
        (b"\xff\x00\x81binary", "binary_payload"),
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (b'{"pm25": 1} trailing', "bad_json"),
        (b"", "bad_json"),
    ],
)
def test_load_json_refuses_what_json_refuses(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as e:
        load_json(payload)
    assert e.value.reason == reason


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_load_json_matches_json_on_generated_documents(doc: Any) -> None:
    payload = json.dumps(doc).encode("utf-8", "surrogatepass")
    assert _same(load_json(payload), json.loads(payload.decode("utf-8", "surrogatepass")))
