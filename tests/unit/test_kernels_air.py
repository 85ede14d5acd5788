"""EPA AQI, European AQI, rolling and daily means, exceedance days."""

from __future__ import annotations

import math

import numpy as np
import pytest
from kernel_reference import daily_means_ref, epa_subindex_ref, european_band_ref, rolling_mean_ref

from processors.kernels import (
    EPA_POLLUTANTS,
    EUROPEAN_AQI_POLLUTANTS,
    daily_means,
    epa_aqi,
    epa_aqi_subindex,
    european_aqi_band,
    exceedance_days,
    rolling_mean_hours,
)

HOUR = 3_600_000_000


@pytest.mark.parametrize(
    ("pollutant", "conc", "aqi"),
    [
        ("pm25", 35.9, 102),  # 24-h PM2.5 (2024 breakpoints)
        ("pm25", 9.0, 50),
        ("pm25", 9.09, 50),  # truncated to 9.0
        ("pm25", 9.1, 51),
        ("pm25", 12.0, 56),  # 49/26.3 * 2.9 + 51 = 56.4
        ("pm25", 0.0, 0),
        ("pm10", 155, 101),
        ("pm10", 154.9, 100),  # truncated to 154
        ("o3", 0.071 * 1.96 * 1000, 101),  # 139.16 µg/m³ = 0.071 ppm
        ("o3", 0.070 * 1.96 * 1000, 100),
        ("co", 9.5 * 1.145, 101),  # 10.8775 mg/m³ = 9.5 ppm
        ("no2", 101 * 1.9, 101),  # 191.9 µg/m³ = 101 ppb
        ("so2", 36 * 2.62, 51),
        ("pm25", 325.4, 500),
        ("pm25", 1000.0, 500),  # capped above the top breakpoint
        ("o3", 0.3 * 1960, 300),  # 8-h O3 beyond its table: 300 ("at least")
    ],
)
def test_epa_hand_values(pollutant, conc, aqi):
    assert epa_aqi_subindex(pollutant, [conc]).tolist() == [aqi]
    assert epa_subindex_ref(pollutant, conc) == aqi


@pytest.mark.parametrize("pollutant", EPA_POLLUTANTS)
def test_epa_matches_decimal_reference(pollutant):
    rng = np.random.default_rng(EPA_POLLUTANTS.index(pollutant))
    top = {"pm25": 400, "pm10": 700, "o3": 450, "co": 65, "so2": 2900, "no2": 4300}[pollutant]
    conc = np.concatenate([rng.uniform(0, top, 400), [np.nan, -1.0, 0.0]])
    got = epa_aqi_subindex(pollutant, conc)
    want = np.array([epa_subindex_ref(pollutant, c) for c in conc])
    np.testing.assert_array_equal(got, want)


def test_epa_aqi_is_max_over_pollutants_and_keeps_shape():
    pm25 = np.array([[35.9, np.nan], [5.0, np.nan]])
    pm10 = np.array([[10.0, 155.0], [np.nan, np.nan]])
    out = epa_aqi({"pm25": pm25, "pm10": pm10})
    assert out.shape == (2, 2)
    assert out[0, 0] == 102 and out[0, 1] == 101 and out[1, 0] == epa_aqi_subindex("pm25", [5.0])[0]
    assert math.isnan(out[1, 1])
    with pytest.raises(ValueError, match="unknown EPA pollutant"):
        epa_aqi_subindex("pm1", [1.0])
    with pytest.raises(ValueError, match="at least one"):
        epa_aqi({})


def test_european_bands():
    assert european_aqi_band("no2", [45.0]).tolist() == [2]
    assert european_aqi_band("pm25", [0.0, 10.0, 10.01, 25.0, 49.9, 800.0, 900.0, np.nan, -1.0]).tolist() == [
        1,
        1,
        2,
        3,
        4,
        5,
        5,
        0,
        0,
    ]
    rng = np.random.default_rng(5)
    for p in EUROPEAN_AQI_POLLUTANTS:
        c = rng.uniform(0, 700, 300)
        assert european_aqi_band(p, c).tolist() == [european_band_ref(p, x) for x in c]
    with pytest.raises(ValueError, match="unknown pollutant"):
        european_aqi_band("co", [1.0])


@pytest.mark.parametrize("seed", range(3))
def test_rolling_mean_matches_reference(seed):
    rng = np.random.default_rng(seed)
    hours = np.sort(rng.choice(200, 150, replace=False)).astype(np.int64) * HOUR  # with gaps
    values = rng.uniform(0, 100, hours.size)
    values[rng.random(hours.size) < 0.15] = np.nan
    perm = rng.permutation(hours.size)
    for window, min_valid in ((8, 6), (24, 18), (1, 1)):
        got = rolling_mean_hours(hours[perm], values[perm], window, min_valid)
        want = rolling_mean_ref(hours[perm], values[perm], window, min_valid)
        np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


def test_rolling_mean_edges():
    assert rolling_mean_hours([], []).shape == (0,)
    hours = np.arange(8, dtype=np.int64) * HOUR
    out = rolling_mean_hours(hours, np.arange(8.0))
    assert np.isnan(out[:5]).all() and out[5] == pytest.approx(2.5) and out[7] == pytest.approx(3.5)
    with pytest.raises(ValueError, match="duplicate"):
        rolling_mean_hours([0, 0], [1.0, 2.0])
    with pytest.raises(ValueError, match=">= 1"):
        rolling_mean_hours([0], [1.0], window_hours=0)


def test_daily_means_and_exceedances():
    rng = np.random.default_rng(9)
    day = rng.integers(0, 5, 100)
    values = rng.uniform(0, 80, 100)
    values[rng.random(100) < 0.2] = np.nan
    got = daily_means(day, values, 6, min_valid=12)
    want_mean, want_count = daily_means_ref(day, values, 6, 12)
    np.testing.assert_allclose(got.mean, want_mean, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(got.n_valid, want_count)
    assert np.isnan(got.mean[5]) and got.n_valid[5] == 0
    assert exceedance_days([50.0, 50.1, np.nan, 80.0, 10.0], 50.0) == 2
    assert exceedance_days([], 50.0) == 0
    with pytest.raises(ValueError, match="local_day_idx"):
        daily_means([0, 7], [1.0, 2.0], 3)
