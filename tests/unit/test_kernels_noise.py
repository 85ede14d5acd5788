"""leq, leq_by_group, lden_from_hourly_leq against the reference, including DST days."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import numpy as np
import pytest
from kernel_reference import lden_ref, leq_by_group_ref, leq_ref

from processors.kernels import lden_from_hourly_leq, leq, leq_by_group

HOUR = 3_600_000_000


def utc_hours(start: datetime, n: int) -> np.ndarray:
    t0 = int(start.timestamp()) * 1_000_000
    return t0 + np.arange(n, dtype=np.int64) * HOUR


def test_leq_random_and_edges():
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = rng.uniform(30, 110, rng.integers(1, 200))
        assert leq(x) == pytest.approx(leq_ref(x), abs=1e-9)
    assert leq([70.0, 70.0, 70.0]) == pytest.approx(70.0, abs=1e-12)
    assert leq([60.0, 70.0]) == pytest.approx(10 * math.log10((1e6 + 1e7) / 2), abs=1e-12)
    assert math.isnan(leq([]))
    assert math.isnan(leq([np.nan, np.nan]))
    assert leq([np.nan, 50.0]) == pytest.approx(50.0)
    assert leq([5000.0, 5000.0]) == pytest.approx(5000.0)  # no overflow: shifted by the maximum
    assert leq([np.inf, 50.0]) == np.inf


def test_leq_by_group_matches_reference():
    rng = np.random.default_rng(2)
    g = rng.integers(0, 7, 300)
    x = rng.uniform(40, 90, 300)
    x[rng.random(300) < 0.1] = np.nan
    np.testing.assert_allclose(leq_by_group(g, x, 9), leq_by_group_ref(g, x, 9), atol=1e-9, equal_nan=True)
    assert np.isnan(leq_by_group(g, x, 9)[7:]).all()
    with pytest.raises(ValueError, match=r"group_idx values must lie in \[0, 3\)"):
        leq_by_group([0, 3], [1.0, 2.0], 3)
    assert leq_by_group([], [], 2).shape == (2,)


def test_lden_hand_value_65():
    # 2025-06-10 local day in UTC: 07:00 local Paris = 05:00 UTC.
    hours = utc_hours(datetime(2025, 6, 10, 5, tzinfo=UTC), 24)
    h = (np.arange(24) + 7) % 24  # local (CEST) hour of each UTC hour
    levels = np.select([(h >= 7) & (h < 19), (h >= 19) & (h < 23)], [65.0, 60.0], 55.0)
    r = lden_from_hourly_leq(hours, levels, "Europe/Paris")
    assert r.local_date.tolist() == [date(2025, 6, 10)]
    assert r.lday[0] == pytest.approx(65.0) and r.levening[0] == pytest.approx(60.0)
    assert r.lnight[0] == pytest.approx(55.0)
    assert r.lden[0] == pytest.approx(65.0, abs=0.05)
    assert (r.hours_day[0], r.hours_evening[0], r.hours_night[0]) == (12, 4, 8)


@pytest.mark.parametrize(
    ("first_utc", "dst_day", "night_hours"),
    [
        (datetime(2025, 3, 27, 0, tzinfo=UTC), date(2025, 3, 29), 7),  # spring forward: 23-h Lden day
        (datetime(2025, 10, 23, 0, tzinfo=UTC), date(2025, 10, 25), 9),  # fall back: 25-h Lden day
    ],
)
def test_lden_dst_days_in_paris(first_utc, dst_day, night_hours):
    rng = np.random.default_rng(3)
    hours = utc_hours(first_utc, 24 * 6)
    levels = rng.uniform(45, 75, hours.size)
    levels[5] = np.nan
    r = lden_from_hourly_leq(hours[::-1], levels[::-1], "Europe/Paris")  # unsorted input
    ref = lden_ref(hours, levels, "Europe/Paris")
    assert r.local_date.tolist() == list(ref)
    for k, (ld, le, ln, lden, hd, he, hn) in enumerate(ref.values()):
        np.testing.assert_allclose(
            [r.lday[k], r.levening[k], r.lnight[k], r.lden[k]], [ld, le, ln, lden], atol=1e-9, equal_nan=True
        )
        assert (r.hours_day[k], r.hours_evening[k], r.hours_night[k]) == (hd, he, hn)
    k = r.local_date.tolist().index(dst_day)
    assert r.hours_night[k] == night_hours
    assert r.hours_day[k] + r.hours_evening[k] + r.hours_night[k] == 16 + night_hours
    # Constant levels per period give the same Lden on a DST day as on any other day.
    const = np.full(hours.size, 60.0)
    assert np.allclose(lden_from_hourly_leq(hours, const, "Europe/Paris").lnight, 60.0, equal_nan=True)


def test_lden_configurable_periods_and_incomplete_days():
    hours = utc_hours(datetime(2025, 1, 6, 0, tzinfo=UTC), 30)
    levels = np.linspace(50, 70, 30)
    r = lden_from_hourly_leq(
        hours, levels, "UTC", day_start_hour=6, evening_start_hour=18, night_start_hour=22
    )
    ref = lden_ref(hours, levels, "UTC", day=6, evening=18, night=22)
    assert r.local_date.tolist() == list(ref)
    np.testing.assert_allclose(r.lden, [v[3] for v in ref.values()], atol=1e-9, equal_nan=True)
    # 00-05 on 6 Jan belong to the Lden day of 5 Jan, which has no day/evening hours: Lden NaN.
    assert r.local_date[0] == np.datetime64("2025-01-05") and np.isnan(r.lden[0])
    assert r.hours_night[0] == 6 and r.hours_day[0] == 0


def test_lden_edges():
    empty = lden_from_hourly_leq([], [], "Europe/Paris")
    assert len(empty) == 0
    with pytest.raises(ValueError, match="duplicate"):
        lden_from_hourly_leq([0, 0], [50.0, 50.0], "UTC")
    with pytest.raises(ValueError, match="duplicate"):
        lden_from_hourly_leq([2 * HOUR, 0, 2 * HOUR], [50.0, 50.0, 50.0], "UTC")  # unsorted
    with pytest.raises(ValueError, match="day_start_hour"):
        lden_from_hourly_leq([0], [50.0], "UTC", day_start_hour=20)
    one = lden_from_hourly_leq([12 * HOUR], [50.0], "UTC")
    assert one.lday.tolist() == [50.0] and np.isnan(one.lden[0])


def test_lden_far_apart_days_and_southern_dst():
    """Days decades apart (offsets looked up only for the days present) and DST in both directions
    in a southern-hemisphere zone (Sydney: clocks go back in April, forward in October)."""
    rng = np.random.default_rng(4)
    hours = np.concatenate(
        [
            utc_hours(datetime(1995, 3, 24, 0, tzinfo=UTC), 24 * 4),
            utc_hours(datetime(2025, 4, 3, 0, tzinfo=UTC), 24 * 4),
            utc_hours(datetime(2025, 10, 2, 0, tzinfo=UTC), 24 * 4),
        ]
    )
    levels = rng.uniform(45, 75, hours.size)
    for tz in ("Australia/Sydney", "Europe/Paris"):
        r = lden_from_hourly_leq(hours, levels, tz)
        ref = lden_ref(hours, levels, tz)
        assert r.local_date.tolist() == list(ref)
        for k, (ld, le, ln, lden, hd, he, hn) in enumerate(ref.values()):
            np.testing.assert_allclose(
                [r.lday[k], r.levening[k], r.lnight[k], r.lden[k]],
                [ld, le, ln, lden],
                atol=1e-9,
                equal_nan=True,
            )
            assert (r.hours_day[k], r.hours_evening[k], r.hours_night[k]) == (hd, he, hn)
    sydney = lden_from_hourly_leq(hours, levels, "Australia/Sydney")
    day_lengths = (sydney.hours_day + sydney.hours_evening + sydney.hours_night).tolist()
    assert 25 in day_lengths and 23 in day_lengths  # 6 April and 5 October 2025
