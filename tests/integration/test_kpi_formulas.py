"""Every KPI on a small hand-built city in the real TimescaleDB, compared with hand-worked values.

Readings go through the real writer (processors.writer), which stores them and produces the
rollups the formulas read. The city 'a' (Europe/Paris, CEST = UTC+2 in June) has hourly readings
at hh:30 local time for the whole local day 2025-06-10 (a Tuesday); each device is registered with
expected_interval_s = 3600, so a full day is 100 % coverage.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from kpi_rollups.refresh import refresh_kpis
from kpi_rollups.registry import import_registry_file
from kpi_rollups.values import LABEL_ACCURATE, LABEL_NOT_COMPUTABLE, LABEL_PARTIAL, KpiOptions, KpiValue
from processors.writer import TimescaleWriter, WriteBatch

pytestmark = pytest.mark.integration

TZ = "Europe/Paris"
DAY = date(2025, 6, 10)
NOW = datetime(2025, 7, 1, tzinfo=UTC)  # the day (and June) are over

REGISTRY_A = """
city_id = "a"
valid_from = 2025-01-01

[[cities]]
city_id = "a"
name = "City A"
timezone = "Europe/Paris"

[[areas]]
area_id = "centre"
population = 600
[[areas]]
area_id = "park"
population = 400

[[facts]]
key = "population"
value = 1000
[[facts]]
key = "water_meters_total"
value = 2
[[facts]]
key = "electricity_meters_total"
value = 4
[[facts]]
key = "major_street_km"
value = 10
[[facts]]
key = "drainage_km"
value = 16
[[facts]]
key = "signalised_intersections"
value = 4

[[devices]]
device_ids = ["air-1", "air-2", "water-1", "water-2", "electricity-1", "electricity-2", "drain-1", "ctrl-1"]
expected_interval_s = 3600

[[devices]]
device_id = "inflow-1"
expected_interval_s = 3600
role = "district_inflow"

[[devices]]
device_id = "noise-1"
area_id = "centre"
expected_interval_s = 3600
[[devices]]
device_id = "noise-2"
area_id = "park"
expected_interval_s = 3600

[[devices]]
device_id = "traffic-1"
expected_interval_s = 3600
street_km = 1.5
segment_id = "s1"
[[devices]]
device_id = "traffic-2"
expected_interval_s = 3600
street_km = 2.0
segment_id = "s1"
free_flow_kmh = 60
[[devices]]
device_id = "traffic-3"
expected_interval_s = 3600
street_km = 3.0
segment_id = "s2"
"""


def at(hour: int, day: date = DAY, tz: str = TZ, minute: int = 30) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=ZoneInfo(tz)).astimezone(UTC)


def noise_level(hour: int) -> float:
    """Ld = 65 (07-19), Le = 60 (19-23), Ln = 55 (23-07)."""
    return 65.0 if 7 <= hour < 19 else 60.0 if 19 <= hour < 23 else 55.0


def speed(device: str, hour: int) -> float:
    peak = hour in (7, 8, 17, 18)
    if device == "traffic-1":
        return 25.0 if peak else 50.0 if hour in (22, 23, 0, 1, 2, 3, 4) else 40.0
    return 40.0 if peak else 60.0


def city_a_batch(hours: range = range(24), day: date = DAY) -> WriteBatch:
    b = WriteBatch(source="test")
    for h in hours:
        t = at(h, day)
        n = (day - DAY).days * 24 + h  # hours since DAY 00:30: meter indexes keep counting across days
        for dev, pm25, pm10, no2, o3, so2 in (("air-1", 10, 20, 30, 60, 5), ("air-2", 20, 40, 50, 80, 15)):
            for metric, v in (("pm25", pm25), ("pm10", pm10), ("no2", no2), ("o3", o3), ("so2", so2)):
                b.add("a", dev, metric, t, float(v))
        b.add("a", "noise-1", "laeq", t, noise_level(h))
        b.add("a", "noise-2", "laeq", t, 45.0)
        b.add("a", "water-1", "water_volume_total", t, 100.0 + 0.3 / 24 * n)
        b.add("a", "water-2", "water_volume_total", t, 7.0 + 0.3 / 24 * n)
        b.add("a", "inflow-1", "water_volume_total", t, 5000.0 + 1.0 / 24 * n)
        b.add("a", "electricity-1", "energy_total", t, 1000.0 + 0.5 * n)
        b.add("a", "electricity-2", "energy_total", t, 20.0 + 0.5 * n)
        for dev in ("traffic-1", "traffic-2"):
            b.add("a", dev, "vehicle_speed", t, speed(dev, h))
            b.add("a", dev, "vehicle_count", t, 10.0)
        b.add("a", "drain-1", "water_level", t, 0.4)
        b.add("a", "ctrl-1", "power", t, 1.0)
    return b


async def write(dsn: str, *batches: WriteBatch) -> None:
    async with TimescaleWriter(dsn) as w:
        for b in batches:
            await w.write(b)


async def import_text(dsn: str, tmp_path: Path, text: str, name: str = "reg.toml") -> None:
    f = tmp_path / name
    f.write_text(text)
    await import_registry_file(dsn, f)


async def city_a(dsn: str, tmp_path: Path) -> None:
    await import_text(dsn, tmp_path, REGISTRY_A)
    await write(dsn, city_a_batch())


def by_key(values: list[KpiValue]) -> dict[tuple[str, str, str], KpiValue]:
    return {(v.kpi_code, v.component, v.area_id): v for v in values}


async def test_every_kpi_matches_the_hand_computed_values(tsdb: str, tmp_path: Path) -> None:
    await city_a(tsdb, tmp_path)
    v = by_key(await refresh_kpis(tsdb, "a", "day", DAY, now=NOW))

    # Air pollution: mean of station means
    for comp, expected in (("pm25", 15.0), ("pm10", 30.0), ("no2", 40.0), ("o3", 70.0), ("so2", 10.0)):
        row = v[("EN:EN:AQ:1C", comp, "")]
        assert row.value == pytest.approx(expected)
        assert row.unit == "µg/m³"
        assert (row.n_devices, row.n_readings) == (2, 48)
        assert row.coverage == pytest.approx(1.0)
        assert row.valid and row.quality_label == LABEL_ACCURATE
    pm25 = v[("EN:EN:AQ:1C", "pm25", "")]
    assert pm25.target == 5.0  # WHO annual guideline (catalog default)
    assert pm25.score == pytest.approx(5.0 / 15.0 * 100)  # lower is better: target / value
    assert pm25.band == "33-66%"
    # WHO 24-h PM2.5 guideline 15: air-2 (20) exceeds on the day, air-1 (10) doesn't
    assert pm25.details["who_exceedance_days_worst_station"] == 1
    assert pm25.details["who_worst_station"] == "air-2"
    assert v[("EN:EN:AQ:1C", "pm10", "")].details["eu_exceedance_days_worst_station"] == 0  # 40 < 50
    # EPA AQI: worst station air-2, PM2.5 20 µg/m³: (100-51)/(35.4-9.1)·(20-9.1)+51 = 71.3
    aqi = v[("EN:EN:AQ:1C", "aqi_epa", "")]
    assert aqi.value == pytest.approx(round(49 / 26.3 * (20.0 - 9.1) + 51), abs=0.5)
    assert aqi.details["days_by_category"] == {"Moderate": 1}
    assert aqi.target is None and aqi.score is None
    # O3 and SO2 are scored on the statistics WHO defines targets for, not on their means:
    # O3: mean of the daily max 8-h means (60 at air-1, 80 at air-2) = 70 against the peak-season
    # guideline 60 -> 60/70; SO2: 99th percentile of daily means at the worst station (15) against 40
    assert v[("EN:EN:AQ:1C", "o3", "")].target is None and v[("EN:EN:AQ:1C", "so2", "")].score is None
    o3 = v[("EN:EN:AQ:1C", "o3_peak_season", "")]
    assert (o3.value, o3.target) == (pytest.approx(70.0), 60.0)
    assert o3.score == pytest.approx(60 / 70 * 100)
    so2 = v[("EN:EN:AQ:1C", "so2_24h_p99", "")]
    assert (so2.value, so2.target, so2.score) == (pytest.approx(15.0), 40.0, 100.0)
    # European AQI: air-2 PM10 40 µg/m³ is Moderate (35-50), the worst band of any pollutant
    assert v[("EN:EN:AQ:1C", "aqi_eu", "")].value == 3

    # Noise: Lden(65, 60, 55) = 65.0 dB; constant 45 dB -> 51.4 dB
    centre = v[("EN:EN:EQ:2A", "lden", "centre")]
    assert centre.value == pytest.approx(65.0, abs=1e-6)
    assert centre.details["lday"] == pytest.approx(65.0)
    assert centre.details["levening"] == pytest.approx(60.0)
    assert centre.details["lnight"] == pytest.approx(55.0)
    park = v[("EN:EN:EQ:2A", "lden", "park")]
    e = 10**4.5
    assert park.value == pytest.approx(10 * math.log10((12 * e + 4 * e * 10**0.5 + 8 * e * 10) / 24))
    exposure = v[("EN:EN:EQ:2A", "", "")]
    assert exposure.value == pytest.approx(60.0)  # centre (600 of 1000 inhabitants) is above 55 dB
    assert exposure.unit == "%"
    assert exposure.valid

    # Water: 2 meters x 0.3 m3/day for 1000 inhabitants -> 0.6 L/inhabitant/day
    water = v[("EN:EN:WS:2C", "", "")]
    assert water.value == pytest.approx(0.6)
    assert (water.n_devices, water.n_readings, water.valid) == (2, 48, True)
    assert water.quality_label == LABEL_ACCURATE  # all registered meters report: no extrapolation
    # Supply loss: inflow 1.0 m3/day, customers 0.6 m3/day -> 40 %
    loss = v[("EC:I:WS:3C", "", "")]
    assert loss.value == pytest.approx(40.0)
    assert loss.target == 10.0 and loss.score == pytest.approx(25.0) and loss.band == "0-33%"

    # Electricity: 2 meters x 12 kWh/day, 4 meters in the registry -> x2, x365 days / 1000 inhabitants
    elec = v[("EN:E:E:2C", "", "")]
    assert elec.value == pytest.approx(24.0 * 2 * 365 / 1000)
    assert "extrapolated from 2 of 4 meters" in (elec.quality_label or "")
    assert elec.target is None and elec.score is None  # no default target for electricity

    # Coverage KPIs: reporting devices / registry totals
    assert v[("EC:ICT:WS:1C", "", "")].value == pytest.approx(100.0)  # 2 of 2 (inflow meter excluded)
    assert v[("EC:ICT:WS:1C", "", "")].band == ">95%"
    assert v[("EC:ICT:ES:1C", "", "")].value == pytest.approx(50.0)  # 2 of 4
    traffic = v[("EC:ICT:T:2C", "", "")]
    assert traffic.value == pytest.approx(20.0)  # segment s1 once (2.0 km) of 10 km; traffic-3 silent
    assert traffic.n_devices == 2 and traffic.coverage is None
    assert v[("EC:ICT:D:1A", "", "")].value == pytest.approx(0.0)  # drain-1 has no drainage_km
    assert v[("EC:ICT:T:3A", "", "")].value == pytest.approx(0.0)  # ctrl-1 is not an adaptive controller

    # Travel time index: traffic-1 (1.5 km) free flow p85(night) 50, peak 25 km/h: 0.06 h against
    # 0.03 h (2.0); traffic-2 (2 km) 60 and 40 km/h: 0.05 h against 1/30 h (1.5); the city's travel
    # times: (0.06 + 0.05) / (0.03 + 1/30) = 0.33 / 0.19 = 33/19
    tti = v[("EC:I:T:5A", "", "")]
    assert tti.value == pytest.approx(33 / 19)
    sensors = {s["device_id"]: s for s in tti.details["sensors"]}
    assert sensors["traffic-1"]["free_flow_kmh"] == pytest.approx(50.0)
    assert sensors["traffic-2"]["free_flow_source"] == "devices.metadata.free_flow_kmh"


async def test_drainage_and_intersection_control_count_what_reports(tsdb: str, tmp_path: Path) -> None:
    await city_a(tsdb, tmp_path)
    await import_text(
        tsdb,
        tmp_path,
        """
city_id = "a"
[[devices]]
device_id = "drain-1"
drainage_km = 4.0
[[devices]]
device_id = "ctrl-1"
role = "adaptive_signal"
intersection_id = "x1"
[[devices]]
device_id = "ctrl-2"
role = "adaptive_signal"
intersection_id = "x2"
""",
        "more.toml",
    )
    v = by_key(await refresh_kpis(tsdb, "a", "day", DAY, now=NOW))
    assert v[("EC:ICT:D:1A", "", "")].value == pytest.approx(25.0)  # 4 of 16 km
    assert v[("EC:ICT:T:3A", "", "")].value == pytest.approx(25.0)  # 1 of 4 intersections (ctrl-2 silent)


async def test_validity_follows_coverage_and_the_threshold_is_configurable(tsdb: str, tmp_path: Path) -> None:
    await import_text(tsdb, tmp_path, REGISTRY_A)
    await write(tsdb, city_a_batch(range(0, 24, 2)))  # every other hour: 12 of 24 expected readings
    v = by_key(await refresh_kpis(tsdb, "a", "day", DAY, now=NOW, codes=["EN:EN:AQ:1C"]))
    pm25 = v[("EN:EN:AQ:1C", "pm25", "")]
    assert pm25.value == pytest.approx(15.0)
    assert pm25.coverage == pytest.approx(0.5)
    assert not pm25.valid
    assert pm25.quality_label == LABEL_PARTIAL
    # 12 hours is below 75 % of the day: no valid daily mean, hence no daily AQI
    assert v[("EN:EN:AQ:1C", "aqi_epa", "")].quality_label == LABEL_NOT_COMPUTABLE
    relaxed = KpiOptions(min_coverage={"day": 0.5})
    v = by_key(await refresh_kpis(tsdb, "a", "day", DAY, now=NOW, options=relaxed, codes=["EN:EN:AQ:1C"]))
    assert v[("EN:EN:AQ:1C", "pm25", "")].valid
    assert v[("EN:EN:AQ:1C", "aqi_epa", "")].value is not None


async def test_an_ongoing_period_is_marked_in_progress(tsdb: str, tmp_path: Path) -> None:
    await import_text(tsdb, tmp_path, REGISTRY_A)
    await write(tsdb, city_a_batch(range(12)))  # up to 11:30 local
    noon = at(12, minute=0)
    v = by_key(await refresh_kpis(tsdb, "a", "day", DAY, now=noon, codes=["EN:EN:AQ:1C"]))
    pm25 = v[("EN:EN:AQ:1C", "pm25", "")]
    assert not pm25.valid
    assert pm25.quality_label == "Partial measurements (period in progress)"
    assert pm25.details["period_elapsed"] == pytest.approx(0.5)
    assert pm25.coverage == pytest.approx(0.5)  # of the whole day
    assert pm25.details["coverage_so_far"] == pytest.approx(1.0)


async def test_city_b_never_changes_city_a(tsdb: str, tmp_path: Path) -> None:
    await city_a(tsdb, tmp_path)
    before = by_key(await refresh_kpis(tsdb, "a", "day", DAY, now=NOW))
    # city b: same device ids, other values, other registry, same local day in UTC
    await import_text(
        tsdb,
        tmp_path,
        REGISTRY_A.replace('"a"', '"b"')
        .replace("Europe/Paris", "UTC")
        .replace("value = 1000", "value = 10")
        .replace("population = 600", "population = 5")
        .replace("value = 16", "value = 1"),
        "b.toml",
    )
    b = WriteBatch(source="test")
    for h in range(24):
        t = at(h, tz="UTC")
        for dev in ("air-1", "air-2", "air-9"):
            b.add("b", dev, "pm25", t, 500.0)
        b.add("b", "noise-1", "laeq", t, 90.0)
        b.add("b", "noise-7", "laeq", t, 90.0)
        b.add("b", "water-1", "water_volume_total", t, 1e6 + 1000.0 * h)
        b.add("b", "electricity-3", "energy_total", t, 5e5 + 1000.0 * h)
        b.add("b", "traffic-3", "vehicle_speed", t, 5.0)
        b.add("b", "drain-1", "water_level", t, 1.0)
    await write(tsdb, b)
    after_b = by_key(await refresh_kpis(tsdb, "b", "day", DAY, now=NOW))
    assert after_b[("EN:EN:AQ:1C", "pm25", "")].value == pytest.approx(500.0)
    after = by_key(await refresh_kpis(tsdb, "a", "day", DAY, now=NOW))
    assert after.keys() == before.keys()
    for key, row in before.items():
        assert after[key].value == row.value, key
        assert (after[key].n_readings, after[key].n_devices) == (row.n_readings, row.n_devices), key


async def test_refresh_is_idempotent_and_updates_computed_at(tsdb: str, tmp_path: Path) -> None:
    await city_a(tsdb, tmp_path)
    await refresh_kpis(tsdb, "a", "day", DAY, now=NOW)
    conn = await asyncpg.connect(tsdb)
    try:
        sql = """SELECT kpi_code, component, area_id, value, valid, score, band, details
                 FROM kpi_values WHERE city_id = 'a' ORDER BY 1, 2, 3"""
        first = [tuple(r) for r in await conn.fetch(sql)]
        t1 = await conn.fetchval("SELECT max(computed_at) FROM kpi_values")
        await refresh_kpis(tsdb, "a", "day", DAY, now=NOW)
        second = [tuple(r) for r in await conn.fetch(sql)]
        t2 = await conn.fetchval("SELECT min(computed_at) FROM kpi_values")
        assert first == second
        assert len(first) == 10 + 3 + 9  # air components, noise (2 areas + headline), 9 single-valued KPIs
        assert t2 > t1
        # an area removed from the registry disappears on the next refresh (no stale rows)
        await conn.execute("UPDATE devices SET area_id = NULL WHERE device_id = 'noise-2'")
        await refresh_kpis(tsdb, "a", "day", DAY, now=NOW)
        areas = {
            r[0]
            for r in await conn.fetch(
                "SELECT area_id FROM kpi_values WHERE kpi_code = 'EN:EN:EQ:2A' AND component = 'lden'"
            )
        }
        assert areas == {"centre"}
    finally:
        await conn.close()


async def test_meter_resets_inside_a_daily_rollup_are_handled_from_raw_readings(
    tsdb: str, tmp_path: Path
) -> None:
    """June as a month: whole UTC days come from rollup_1d; a reset inside one is re-read raw."""
    await import_text(tsdb, tmp_path, REGISTRY_A)
    b = WriteBatch(source="test")
    index, step = 500.0, 0.3 / 24  # 0.3 m3/day
    for d in (date(2025, 6, 10), date(2025, 6, 11), date(2025, 6, 12)):
        for h in range(24):
            if d == date(2025, 6, 11) and h == 12:
                index = step  # the meter restarted from 0 right after the previous reading
            elif (d, h) != (date(2025, 6, 10), 0):
                index += step
            b.add("a", "water-1", "water_volume_total", at(h, d), index)
    await write(tsdb, b)
    conn = await asyncpg.connect(tsdb)
    try:
        drops = await conn.fetchval("SELECT count(*) FROM rollup_1d WHERE min < first_value")
    finally:
        await conn.close()
    assert drops == 1
    v = by_key(await refresh_kpis(tsdb, "a", "month", date(2025, 6, 1), now=NOW, codes=["EN:EN:WS:2C"]))
    water = v[("EN:EN:WS:2C", "", "")]
    # one meter at 0.3 m3/day, registry total 2 -> x2, 1000 inhabitants -> 0.6 L/inhabitant/day
    assert water.value == pytest.approx(0.6)
    assert water.details["resets_handled"] == 1
    assert water.coverage == pytest.approx(72 / (30 * 24))
    assert not water.valid and water.quality_label.startswith(LABEL_PARTIAL)


async def test_registry_versions_pick_the_population_of_the_period(tsdb: str, tmp_path: Path) -> None:
    await city_a(tsdb, tmp_path)
    await import_text(
        tsdb,
        tmp_path,
        """
city_id = "a"
[[facts]]
key = "population"
value = 2000
valid_from = 2026-01-01
[[targets]]
kpi_code = "EN: EN: WS: 2C"
target = 0.3
valid_from = 2025-01-01
""",
        "v2.toml",
    )
    v = by_key(await refresh_kpis(tsdb, "a", "day", DAY, now=NOW, codes=["EN:EN:WS:2C"]))
    water = v[("EN:EN:WS:2C", "", "")]
    assert water.value == pytest.approx(0.6)  # 2025 uses the 2025 population (1000), not 2026's
    assert water.target == 0.3 and water.score == pytest.approx(50.0)  # per-city target


async def test_missing_reference_data_makes_kpis_not_computable(tsdb: str) -> None:
    b = WriteBatch(source="test")
    for h in range(24):
        b.add("demo", "water-1", "water_volume_total", at(h), 1.0 + h * 0.01)
    await write(tsdb, b)
    v = by_key(await refresh_kpis(tsdb, "demo", "day", DAY, now=NOW))
    for code in ("EN:EN:WS:2C", "EC:ICT:WS:1C", "EC:I:WS:3C", "EC:I:T:5A"):
        row = v[(code, "", "")]
        assert row.value is None and not row.valid and row.quality_label == LABEL_NOT_COMPUTABLE, code
        assert row.details["not_computable"], code


async def test_any_kpi_on_plain_postgresql_too(any_db: str, tmp_path: Path) -> None:
    await city_a(any_db, tmp_path)
    v = by_key(await refresh_kpis(any_db, "a", "day", DAY, now=NOW))
    assert v[("EN:EN:AQ:1C", "pm25", "")].value == pytest.approx(15.0)
    assert v[("EN:EN:WS:2C", "", "")].value == pytest.approx(0.6)


def test_hours_helper_is_local_time() -> None:
    assert at(0) == datetime(2025, 6, 9, 22, 30, tzinfo=UTC)
    assert at(0) + timedelta(hours=24) == at(0, date(2025, 6, 11))


async def test_a_drop_to_a_high_index_is_an_implausible_step_not_a_reset_from_zero(
    tsdb: str, tmp_path: Path
) -> None:
    """A meter swapped for one reading 3,000 m3 (or a gateway replaying an old index) is no 3,000 m3 use."""
    await import_text(tsdb, tmp_path, REGISTRY_A)
    b = WriteBatch(source="test")
    index, step = 5000.0, 0.3 / 24
    for h in range(24):
        if h == 12:
            index = 3000.0  # drops, but far from zero: counting it "from 0" would add 3,000 m3
        elif h:
            index += step
        b.add("a", "water-1", "water_volume_total", at(h), index)
    await write(tsdb, b)
    v = by_key(await refresh_kpis(tsdb, "a", "day", DAY, now=NOW, codes=["EN:EN:WS:2C"]))
    water = v[("EN:EN:WS:2C", "", "")]
    # 22 plausible hourly steps of 0.0125 m3 over 22 h -> 0.3 m3/day; x2 (registry) / 1000 inhabitants
    assert water.value == pytest.approx(0.6)
    assert water.details["rejected_steps"] == 1
