"""Decoder registry: `register` wraps each decoder so that it can only ever raise `DecodeError`."""

from __future__ import annotations

import functools
from collections.abc import Callable

from schemas.readings import DecodeContext, Decoded, DecodeError, Decoder

DECODERS: dict[str, Decoder] = {}


def register(*names: str) -> Callable[[Decoder], Decoder]:
    """Register a decoder under one or more format names.

    Decoders validate types explicitly; the wrapper is the safety net that turns anything they
    missed into `DecodeError("internal_error")` (a bug to fix, never a crash of the consumer).
    """

    def wrap(fn: Decoder) -> Decoder:
        @functools.wraps(fn)
        def guarded(payload: bytes, ctx: DecodeContext) -> Decoded:
            try:
                return fn(payload, ctx)
            except DecodeError:
                raise
            except RecursionError:
                raise DecodeError("too_deep", "nesting exceeds the recursion limit") from None
            except Exception as exc:
                raise DecodeError("internal_error", f"{type(exc).__name__}: {exc}"[:200]) from exc

        for name in names:
            if name in DECODERS:
                raise ValueError(f"decoder {name!r} registered twice")
            DECODERS[name] = guarded
        return guarded

    return wrap


def get_decoder(name: str) -> Decoder:
    """The decoder registered as `name`; KeyError lists the known names."""
    try:
        return DECODERS[name]
    except KeyError:
        raise KeyError(f"unknown decoder {name!r}; known decoders: {', '.join(sorted(DECODERS))}") from None
