"""Payload decoders, one module per format, registered by name in `DECODERS`.

Each decoder is `decode(payload: bytes, ctx: DecodeContext) -> Decoded` (its readings and the parts
it rejected) and raises only `DecodeError` (a payload it cannot read at all). Values keep the
payload's unit (`Reading.unit`); `schemas.units.normalize` converts.
"""

from schemas.decoders import flat_json, ngsi, openaq, senml, sensor_community, sparkplug, ttn
from schemas.decoders._common import check_field_map
from schemas.decoders._registry import DECODERS, get_decoder, register
from schemas.decoders.openaq import iter_openaq_csv
from schemas.decoders.sensor_community import iter_sensor_community_csv

__all__ = [
    "DECODERS",
    "check_field_map",
    "flat_json",
    "get_decoder",
    "iter_openaq_csv",
    "iter_sensor_community_csv",
    "ngsi",
    "openaq",
    "register",
    "senml",
    "sensor_community",
    "sparkplug",
    "ttn",
]
