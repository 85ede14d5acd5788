"""The decoder registry and what every JSON decoder shares; each format's cases are in
test_decoder_<format>.py (the modules of schemas/decoders/), their helpers in decoder_cases.py."""

from __future__ import annotations

import pytest

from schemas.decoders import DECODERS, get_decoder
from tests.unit.decoder_cases import decode_error

# --- registry ---------------------------------------------------------------------------------


def test_registry_names() -> None:
    json_formats = {"senml", "ngsi-v2", "ngsi-ld", "ttn", "sensor-community", "openaq", "json"}
    assert set(DECODERS) == json_formats | {"sparkplug-b"}
    assert get_decoder("senml") is DECODERS["senml"]
    with pytest.raises(KeyError, match=r"unknown decoder 'cbor'.*ngsi-ld.*senml"):
        get_decoder("cbor")


# --- shared behaviour ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(DECODERS) - {"sparkplug-b"}))  # protobuf: its own tests
@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "bad_json"),
        (b"\xff\xfe\x00", "bad_json"),
        (b"{", "bad_json"),
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (b"1" * 5000, "bad_json"),  # above Python's int digit limit
    ],
)
def test_malformed_payloads(name: str, payload: bytes, reason: str) -> None:
    assert decode_error(name, payload) == reason
