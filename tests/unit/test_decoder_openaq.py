"""OpenAQ (schemas/decoders/openaq.py): API v3 measurements and archive CSV."""

from __future__ import annotations

import json

import pytest

from schemas.decoders import DECODERS, iter_openaq_csv
from schemas.readings import DecodeError, Reading
from schemas.units import normalize
from tests.unit.decoder_cases import ctx, sample, utc


def test_openaq_api_v3_measurements() -> None:
    readings = DECODERS["openaq"](sample("openaq/measurements-api-v3.json"), ctx(device_id="openaq-7117"))
    assert [(r.device_id, r.metric, r.value, r.unit, r.time) for r in readings] == [
        ("openaq-7117", "pm25", 6.0, "µg/m³", utc(2023, 10, 16, 12)),  # period.datetimeFrom
        ("openaq-7117", "pm25", 7.5, "µg/m³", utc(2023, 10, 16, 13)),
    ]
    assert normalize("pm25", readings[1].value, readings[1].unit) == 7.5


def test_openaq_needs_a_device() -> None:
    decoded = DECODERS["openaq"](sample("openaq/measurements-api-v3.json"), ctx())
    assert not decoded and {p.reason for p in decoded.rejected} == {"missing_device"}
    assert [p.path for p in decoded.rejected] == ["results[0]", "results[1]"]


def test_openaq_latest_shape() -> None:
    doc = {"results": [{"datetime": {"utc": "2024-01-01T00:00:00Z"}, "value": 0.02, "sensorsId": 9,
                        "parameter": {"name": "no2", "units": "ppm"}}]}  # fmt: skip
    (r,) = DECODERS["openaq"](json.dumps(doc).encode(), ctx())
    assert (r.device_id, r.metric, r.time) == ("openaq-9", "no2", utc(2024, 1, 1))
    assert normalize(r.metric, r.value, r.unit) == pytest.approx(38.0)


def test_openaq_archive_csv() -> None:
    lines = [
        "location_id,sensors_id,location,datetime,lat,lon,parameter,units,value",
        '2178,3917,"Del Norte, NM",2023-10-16T06:00:00-06:00,35.13,-106.58,pm25,µg/m³,6.0',
        "2178,3918,Del Norte,2023-10-16T06:00:00-06:00,35.13,-106.58,no2,ppb,10",
        "2178,3919,Del Norte,2023-10-16T06:00:00-06:00,35.13,-106.58,co,ppm,1",
        "2178,3920,Del Norte,2023-10-16T06:00:00-06:00,35.13,-106.58,bc,µg/m³,1",
        "2178,3921,Del Norte,2023-10-16T06:00:00-06:00,35.13,-106.58,o3,ppm,",
        "2178,3922,Del Norte,yesterday,35.13,-106.58,o3,ppm,0.03",
    ]
    items = list(iter_openaq_csv(lines))
    assert isinstance(items[-1], DecodeError) and items[-1].reason == "bad_time"
    readings = [x for x in items if isinstance(x, Reading)]
    assert [(r.device_id, r.metric, r.time) for r in readings] == [
        ("openaq-3917", "pm25", utc(2023, 10, 16, 12)),
        ("openaq-3918", "no2", utc(2023, 10, 16, 12)),
        ("openaq-3919", "co", utc(2023, 10, 16, 12)),
    ]
    assert [normalize(r.metric, r.value, r.unit) for r in readings] == pytest.approx([6.0, 19.0, 1.145])
