"""SDG progress: indicator 11.6.2 end to end (`citykpi replay` -> `citykpi kpi refresh` -> kpi_values)
on a UTC city on Wednesday 2025-06-11, and the catalog's SDG links."""

from __future__ import annotations

import asyncpg
import pytest

from kpi_rollups.formulas import checked_catalog
from tests.integration.test_kpi_meters_e2e import DAY, at, details, registry, replay_and_refresh, senml

pytestmark = pytest.mark.integration

AIR = "EN:EN:AQ:1C"
AREAS = """
[[areas]]
area_id = "north"
population = 1000
[[areas]]
area_id = "south"
population = 3000
[[areas]]
area_id = "east"
population = 500
"""


def station(device: str, area: str | None) -> str:
    area_line = f'area_id = "{area}"\n' if area else ""
    return f'[[devices]]\ndevice_id = "{device}"\n{area_line}expected_interval_s = 3600\n'


async def component_row(dsn: str, name: str) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchrow(
            "SELECT * FROM kpi_values WHERE city_id = 'm' AND kpi_code = $1 AND component = $2 "
            "AND period_kind = 'day' AND period_start = $3",
            AIR,
            name,
            DAY,
        )
    finally:
        await conn.close()


async def test_sdg_11_6_2_is_the_population_weighted_mean_of_area_levels(tsdb, tmp_path) -> None:
    """SDG 11.6.2 (UN metadata): mean PM2.5 in the city, population-weighted.
    Areas: north 1000 inhabitants, south 3000, east 500 (4500 in all). Hourly PM2.5 all day:
    n1 (north) 10 µg/m³, n2 (north) 20, s1 (south) 5; e1 (east) 40 but only 6 of 24 hours
    (capture 25 % < 75 % of the best station's 100 %: it does not count, east is unmonitored);
    x1 (no area) 100 all day (counted by the air KPI, but it stands for no population).
    Areas: north = (10 + 20) / 2 = 15, south = 5.
    City: (1000 x 15 + 3000 x 5) / (1000 + 3000) = 30000 / 4000 = 7.5 µg/m³.
    Coverage: monitored population 4000 / 4500 x mean capture of the counted stations (1.0)
    = 0.889 >= 0.75: valid. Score vs the WHO guideline 5: 5 / 7.5 = 66.7 % (band 66-95 %).
    The air KPI's PM2.5 (mean of all station means) says (10 + 20 + 5 + 40 + 100) / 5 = 35.
    """
    devices = (
        AREAS
        + station("n1", "north")
        + station("n2", "north")
        + station("s1", "south")
        + station("e1", "east")
        + station("x1", None)
    )
    levels = {"n1": 10.0, "n2": 20.0, "s1": 5.0, "e1": 40.0, "x1": 100.0}
    lines = [
        senml(dev, "pm25", "ug/m3", at(h + 0.5), v)
        for dev, v in levels.items()
        for h in (range(6) if dev == "e1" else range(24))
    ]
    await replay_and_refresh(tsdb, tmp_path, registry(4500, 1, 1, devices), lines)
    sdg = await component_row(tsdb, "sdg_11_6_2")
    assert sdg["value"] == pytest.approx(7.5)
    assert sdg["coverage"] == pytest.approx(4000 / 4500)
    assert sdg["valid"] is True and sdg["target"] == 5.0
    assert sdg["score"] == pytest.approx(5 / 7.5 * 100) and sdg["band"] == "66-95%"
    assert sdg["n_devices"] == 3 and sdg["n_readings"] == 72
    d = details(sdg)
    assert d["pm25_by_area"] == {"north": pytest.approx(15.0), "south": pytest.approx(5.0)}
    assert d["stations_below_capture_rule"] == ["e1"]
    assert d["stations_without_area"] == ["x1"]
    pm25 = await component_row(tsdb, "pm25")
    assert pm25["value"] == pytest.approx(35.0)


async def test_sdg_11_6_2_is_not_valid_when_too_little_population_is_monitored(tsdb, tmp_path) -> None:
    """Only north (1000 of 4500 inhabitants) has a station: value 12 µg/m³ (its station), coverage
    1000 / 4500 = 0.222 < 0.75, so it is stored but not valid; no station in an area with a
    population at all makes it not computable."""
    devices = AREAS + station("n1", "north")
    lines = [senml("n1", "pm25", "ug/m3", at(h + 0.5), 12.0) for h in range(24)]
    await replay_and_refresh(tsdb, tmp_path, registry(4500, 1, 1, devices), lines)
    sdg = await component_row(tsdb, "sdg_11_6_2")
    assert sdg["value"] == pytest.approx(12.0)
    assert sdg["coverage"] == pytest.approx(1000 / 4500)
    assert sdg["valid"] is False


def test_every_kpi_names_its_sdg_targets_and_unconfirmed_links_say_so() -> None:
    catalog = checked_catalog()
    for kpi in catalog.kpi:
        assert kpi.sdg, kpi.code
        for link in kpi.sdg:
            assert link.target in catalog.sdg_targets and link.goal in catalog.sdg_goals
            assert kpi.has_component(link.component)
            if not link.confirmed:
                assert "not found" in link.source
    air = catalog.get(AIR).sdg[0]
    assert (air.target, air.indicator, air.component, air.confirmed) == ("11.6", "11.6.2", "sdg_11_6_2", True)
