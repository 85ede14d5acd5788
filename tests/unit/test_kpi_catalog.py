"""KPI catalog, scoring, periods, registry validation and report helpers, without a database."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from kpi_rollups.catalog import CatalogError, normalize_code, parse_catalog
from kpi_rollups.city_rollups import window_segments
from kpi_rollups.formulas import FORMULAS, checked_catalog
from kpi_rollups.periods import Period, parse_period, periods_in
from kpi_rollups.registry import RegistryImportError, parse_csv, parse_registry, parse_toml
from kpi_rollups.report import Row, annual_chart_svg, monthly_chart_svg, sparkline_text
from kpi_rollups.values import band_label, fmt_value, score

CATALOG = Path(__file__).resolve().parents[2] / "kpi_rollups" / "catalog.toml"


def test_catalog_has_the_required_kpis_with_registered_formulas() -> None:
    catalog = checked_catalog()
    assert set(catalog.codes) >= {
        "EN:EN:AQ:1C",
        "EN:EN:EQ:2A",
        "EN:EN:WS:2C",
        "EC:I:WS:3C",
        "EN:E:E:2C",
        "EC:ICT:WS:1C",
        "EC:ICT:ES:1C",
        "EC:ICT:D:1A",
        "EC:ICT:T:2C",
        "EC:I:T:5A",
    }
    for kpi in catalog.kpi:
        assert kpi.formula in FORMULAS
    air = catalog.get("EN: EN: AQ: 1C")
    assert [c.name for c in air.components][:5] == ["pm25", "pm10", "no2", "o3", "so2"]
    assert air.display_code == "EN: EN: AQ: 1C"
    assert catalog.get("air_pollution") is air


def test_unconfirmed_codes_and_definitions_are_marked_as_in_the_reference() -> None:
    catalog = checked_catalog()
    unconfirmed = {k.code for k in catalog.kpi if not k.confirmed}
    assert unconfirmed == {
        "EN:EN:EQ:2A",
        "EN:EN:WS:2C",
        "EC:I:WS:3C",
        "EN:E:E:2C",
        "EC:ICT:WS:1C",
        "EC:I:T:5A",
    }
    assert all(catalog.get(c).confirmation_note for c in unconfirmed)


def test_adding_a_kpi_is_a_catalog_entry() -> None:
    text = (
        CATALOG.read_text()
        + """
[[kpi]]
code = "EC:ICT:WS:2C"
slug = "water_supply_monitoring"
name = "Water supply ICT monitoring"
dimension = "Economy"
sub_dimension = "ICT"
category = "Water and Sanitation"
level = "core"
definition = "Km of water supply network monitored by ICT / total km x 100."
unit = "%"
formula = "ict_share"
direction = "higher"
confirmed = false
  [[kpi.components]]
  label = "Water supply network monitored"
  unit = "%"
  target = 100.0
  [kpi.params]
  metrics = ["water_flow"]
  weight_key = "pipe_km"
  total_fact = "water_network_km"
"""
    )
    catalog = parse_catalog(text, "extended.toml", FORMULAS)
    assert catalog.get("EC:ICT:WS:2C").formula == "ict_share"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('code = "EC:I:T:5A"', 'code = "EC-I-T-5A"'), "must look like"),
        (('formula = "travel_time_index"', 'formula = "nope"'), "not registered"),
        (('code = "EC:I:T:5A"', 'code = "EC:I:T:5C"'), "ends in C but level is 'advanced'"),
        (('slug = "travel_time_index"', 'slug = "air_pollution"'), "duplicate KPI slugs"),
        (
            ('source_metrics = ["vehicle_speed", "vehicle_count"]', 'source_metrics = ["speed"]'),
            "unknown metrics",
        ),
    ],
)
def test_catalog_errors_are_clear(change: tuple[str, str], message: str) -> None:
    text = CATALOG.read_text()
    assert change[0] in text
    with pytest.raises(CatalogError, match=message):
        parse_catalog(text.replace(change[0], change[1]), "broken.toml", FORMULAS)


def test_code_normalisation() -> None:
    assert normalize_code("en: en: aq: 1c") == "EN:EN:AQ:1C"


def test_scores_and_bands() -> None:
    assert score(15.0, 5.0, "lower") == pytest.approx(100 / 3)
    assert score(4.0, 5.0, "lower") == 100.0  # better than target: capped
    assert score(0.0, 5.0, "lower") == 100.0
    assert score(50.0, 100.0, "higher") == 50.0
    assert score(150.0, 100.0, "higher") == 100.0
    assert score(None, 5.0, "lower") is None and score(5.0, None, "lower") is None
    assert [band_label(s) for s in (0, 33, 33.1, 66, 95, 95.01, None)] == [
        "0-33%",
        "0-33%",
        "33-66%",
        "33-66%",
        "66-95%",
        ">95%",
        None,
    ]
    assert band_label(50, (25, 50, 75)) == "25-50%"


def test_value_formatting() -> None:
    assert fmt_value(15.0, "µg/m³") == "15.00 µg/m³"
    assert fmt_value(0.006, "%") == "0.006 %"
    assert fmt_value(1234.5, "kWh/inhabitant/year") == "1,234 kWh/inhabitant/year"
    assert fmt_value(71.0, "AQI") == "71"
    assert fmt_value(None, "%") == "–"


def test_periods_in_a_time_zone_with_dst() -> None:
    spring = Period("day", date(2025, 3, 30), "Europe/Paris")  # clocks go forward: 23 hours
    assert spring.seconds == 23 * 3600
    assert spring.start_utc == datetime(2025, 3, 29, 23, tzinfo=UTC)
    year = Period("year", date(2025, 1, 1), "Europe/Paris")
    assert year.end == date(2026, 1, 1) and year.n_days == 365
    assert Period("month", date(2024, 2, 1), "UTC").n_days == 29
    with pytest.raises(ValueError, match="starts on 2025-06-01"):
        Period("month", date(2025, 6, 10), "UTC")
    now = datetime(2025, 6, 10, 12, tzinfo=UTC)
    assert Period("day", date(2025, 6, 10), "UTC").elapsed_fraction(now) == 0.5
    assert not Period("day", date(2025, 6, 10), "UTC").complete(now)


def test_period_parsing() -> None:
    assert parse_period("2026") == ("year", date(2026, 1, 1))
    assert parse_period("2026-03") == ("month", date(2026, 3, 1))
    assert parse_period("2026-03-15") == ("day", date(2026, 3, 15))
    with pytest.raises(ValueError, match="YYYY, YYYY-MM or YYYY-MM-DD"):
        parse_period("March")
    with pytest.raises(ValueError, match=r"month must be in 1\.\.12"):
        parse_period("2026-13")
    now = datetime(2026, 3, 15, tzinfo=UTC)
    months = periods_in("2026", "month", "UTC", now)
    assert [p.start for p in months] == [date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)]
    assert len(periods_in("2026-02", "day", "UTC", now)) == 28
    assert periods_in("2026-02-10", "year", "UTC", now)[0].start == date(2026, 1, 1)


def test_window_segments_cover_the_window_with_the_coarsest_rollups() -> None:
    start = datetime(2025, 5, 31, 22, tzinfo=UTC)  # June in Paris
    end = datetime(2025, 6, 30, 22, tzinfo=UTC)
    segs = window_segments(start, end)
    assert [s[0] for s in segs] == ["rollup_1h", "rollup_1d", "rollup_1h"]
    assert segs[0][1] == start and segs[-1][2] == end
    assert all(a[2] == b[1] for a, b in itertools.pairwise(segs))
    india = window_segments(
        datetime(2025, 5, 31, 18, 30, tzinfo=UTC), datetime(2025, 6, 1, 18, 30, tzinfo=UTC)
    )
    assert [s[0] for s in india] == ["rollup_15m", "rollup_1h", "rollup_15m"]  # midnight at :30
    total = sum(((b - a) for _, a, b in india), timedelta())
    assert total == timedelta(days=1)
    odd = window_segments(datetime(2025, 6, 1, 0, 7, tzinfo=UTC), datetime(2025, 6, 1, 2, 50, tzinfo=UTC))
    assert [s[0] for s in odd] == ["rollup_1m", "rollup_15m", "rollup_1h", "rollup_15m", "rollup_1m"]
    assert all(a[2] == b[1] for a, b in itertools.pairwise(odd))


def test_registry_toml_errors_name_section_row_and_field() -> None:
    text = """
city_id = "demo"
valid_from = 2025-01-01
colour = "blue"
[[cities]]
city_id = "x"
name = "X"
timezone = "Mars/Olympus"
[[areas]]
area_id = "centre"
population = -1
[[areas]]
area_id = "north"
populaton = 5
[[targets]]
kpi_code = "EN:EN:AQ:9C"
target = 1
[[targets]]
kpi_code = "EN:EN:AQ:1C"
component = "pm1"
target = 1
[[devices]]
device_ids = ["a-1", "a-2"]
expected_interval_s = 0
"""
    with pytest.raises(RegistryImportError) as e:
        parse_toml(text, "r.toml")
    errors = e.value.errors
    assert any("unknown top-level keys ['colour']" in x for x in errors)
    assert any(
        x.startswith("cities #1 (city_id='x'): timezone: unknown time zone 'Mars/Olympus'") for x in errors
    )
    assert any(
        x.startswith("areas #1 (area_id='centre'): population: Input should be greater than or equal to 0")
        for x in errors
    )
    assert any(
        x.startswith("areas #2 (area_id='north'): populaton: Extra inputs are not permitted") for x in errors
    )
    assert any(x.startswith("targets #1 (kpi_code='EN:EN:AQ:9C'): (row): unknown KPI") for x in errors)
    assert any("has no component 'pm1'" in x for x in errors)
    assert sum("expected_interval_s: Input should be greater than 0" in x for x in errors) == 2  # both ids
    assert str(e.value).startswith("r.toml: ")


def test_registry_csv_errors_name_the_line() -> None:
    with pytest.raises(RegistryImportError) as e:
        parse_csv("key,value,valid_from\npopulation,12x,2025-01-01\n", "facts.csv", default_city="demo")
    assert e.value.errors == [
        "facts line 2 (key='population'): value: Input should be a valid number, unable to parse string as a "
        "number (got '12x')"
    ]
    with pytest.raises(RegistryImportError, match="cannot tell the section"):
        parse_csv("foo,bar\n1,2\n")
    ok = parse_csv(
        "kpi_code,component,target,band_edges,valid_from\nEN:EN:AQ:1C,pm25,10,25 50 90,2025-01-01\n",
        default_city="demo",
    )
    assert ok.targets[0].band_edges == [25.0, 50.0, 90.0]


def test_registry_file_types(tmp_path: Path) -> None:
    with pytest.raises(RegistryImportError, match="file not found"):
        parse_registry(tmp_path / "missing.toml")
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(RegistryImportError, match=r"use \.toml or \.csv"):
        parse_registry(tmp_path / "r.json")
    demo = parse_registry(Path(__file__).resolve().parents[2] / "kpi_rollups" / "demo_registry.toml")
    assert sum(a.population or 0 for a in demo.areas) == 120_000
    assert {d.device_id for d in demo.devices} >= {"air-0008", "noise-0012", "water-0040", "electricity-0040"}


def chart_row(**kw: object) -> Row:
    fields: dict[str, object] = dict(
        component="",
        label="x",
        area_id="",
        value=3.0,
        unit="µg/m³",
        target=5.0,
        score=None,
        band=None,
        coverage=None,
        valid=False,
        quality_label="",
        n_devices=0,
        n_readings=0,
        note="",
    )
    return Row(**(fields | kw))  # type: ignore[arg-type]


def test_trend_charts_draw_one_line_per_year_with_gaps_and_the_target() -> None:
    months_2025 = [1.0, None, 3.0, 2.0] + [None] * 8
    months_2024 = [None] * 10 + [4.0, 6.0]
    svg = monthly_chart_svg(chart_row(months_by_year={2024: months_2024, 2025: months_2025}), "t")
    paths = [p.split('"')[0] for p in svg.split('<path d="')[1:]]
    assert len(paths) == 2 and paths[0].count("M") == 2 and paths[1].count("M") == 1  # Feb 2025 missing
    assert svg.index(">2025</text>") < svg.index(">2024</text>")  # newest year first in the legend
    assert "<title>2025 M: 3.00</title>" in svg and "<title>2024 D: 6.00</title>" in svg
    assert 'class="target"' in svg and ">6</text>" in svg and ">1</text>" in svg  # y range 1..6
    assert svg.count('class="tick" text-anchor="middle"') == 12  # J F M ... D
    assert "no values stored" in monthly_chart_svg(chart_row(), "t")
    yearly = annual_chart_svg(chart_row(annual=[(2024, 1500.0), (2025, None), (2026, 900.0)]), "t")
    assert ">2024</text>" in yearly and ">2026</text>" in yearly and ">1.5k</text>" in yearly
    assert sparkline_text([("a", 1.0), ("b", None), ("c", 8.0)]) == "▁ █"


def test_the_checked_catalog_rejects_a_kpi_whose_formula_is_not_registered(tmp_path: Path) -> None:
    broken = tmp_path / "catalog.toml"
    broken.write_text(CATALOG.read_text().replace('formula = "travel_time_index"', 'formula = "nope"'))
    with pytest.raises(CatalogError, match="not registered"):
        checked_catalog(str(broken))
