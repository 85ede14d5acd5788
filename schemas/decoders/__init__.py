"""Payload decoders, one module per format, registered by name in `DECODERS`.

Each decoder is `decode(payload: bytes, ctx: DecodeContext) -> list[Reading]` and raises only
`DecodeError`. Values keep the payload's unit (`Reading.unit`); `schemas.units.normalize` converts.
"""

from schemas.decoders import flat_json, ngsi, openaq, senml, sensor_community, ttn
from schemas.decoders._registry import DECODERS, get_decoder, register
from schemas.decoders.openaq import iter_openaq_csv
from schemas.decoders.sensor_community import iter_sensor_community_csv

__all__ = [
    "DECODERS",
    "flat_json",
    "get_decoder",
    "iter_openaq_csv",
    "iter_sensor_community_csv",
    "ngsi",
    "openaq",
    "register",
    "senml",
    "sensor_community",
    "ttn",
]
