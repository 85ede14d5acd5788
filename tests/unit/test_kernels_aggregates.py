"""partial_aggregates / merge_partial_aggregates / ReadingBatch against the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_reference import partial_aggregates_ref

from processors import _kernels, kernels
from processors.batch import ReadingBatch
from processors.kernels import PartialAggregates, merge_partial_aggregates, partial_aggregates

MINUTE = 60_000_000
HOUR = 3_600_000_000
FIELDS = ("count", "sum", "sumsq", "min", "max", "first_ts_us", "first_value", "last_ts_us", "last_value")


def as_dict(agg: PartialAggregates) -> dict[tuple[int, int], dict]:
    out = {}
    for i in range(len(agg)):
        row = {f: getattr(agg, f)[i].item() for f in (*FIELDS, "energy_sum")}
        out[(int(agg.series[i]), int(agg.bucket_start_us[i]))] = row
    return out


def assert_same(agg: PartialAggregates, ref: dict, exact: bool = False) -> None:
    keys = list(zip(agg.series.tolist(), agg.bucket_start_us.tolist(), strict=True))
    assert keys == sorted(keys), "output must be sorted by (series, bucket)"
    got = as_dict(agg)
    assert list(got) == list(ref)
    for key, row in ref.items():
        for f, expected in row.items():
            if exact or f in (
                "count",
                "min",
                "max",
                "first_ts_us",
                "last_ts_us",
                "first_value",
                "last_value",
            ):
                assert got[key][f] == expected, (key, f)
            else:
                assert math.isclose(got[key][f], expected, rel_tol=1e-9, abs_tol=1e-9), (key, f)


def random_readings(rng: np.random.Generator, n: int, n_series: int, span_us: int, nan_share: float = 0.05):
    series = rng.integers(0, n_series, n)
    ts = 1_750_000_000_000_000 + rng.integers(-span_us // 10, span_us, n)
    value = rng.normal(60.0, 15.0, n)
    value[rng.random(n) < nan_share] = np.nan
    ts[rng.random(n) < 0.1] = ts[0]  # same-timestamp ties
    return series, ts, value


@pytest.fixture(params=["cells", "dense", "sorted"])
def path(request, monkeypatch):
    """Force one grouping path: per-cell accumulators, the dense group-id table, or the argsort."""
    calls = []
    if request.param == "cells":
        monkeypatch.setattr(kernels.aggregates, "_staged_cell_limit", lambda n: 1 << 40)
        real = _kernels.accumulate_cells
        monkeypatch.setattr(_kernels, "accumulate_cells", lambda *a: calls.append(1) or real(*a))
    elif request.param == "dense":
        monkeypatch.setattr(kernels.aggregates, "_staged_cell_limit", lambda n: 0)
        real = _kernels.accumulate_dense
        monkeypatch.setattr(_kernels, "accumulate_dense", lambda *a: calls.append(1) or real(*a))
    else:
        monkeypatch.setattr(kernels.aggregates, "_dense_cell_limit", lambda n: 0)
        real = _kernels.accumulate_sorted
        monkeypatch.setattr(_kernels, "accumulate_sorted", lambda *a: calls.append(1) or real(*a))
    yield request.param
    # Every test that finds readings must have gone through the forced path.
    assert calls or request.node.name.startswith("test_empty_and_all_nan")


@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_on_random_unsorted_data(seed, path):
    rng = np.random.default_rng(seed)
    series, ts, value = random_readings(rng, 1500, 40, 3 * HOUR)
    mask = rng.random(40) < 0.3
    for bucket in (MINUTE, 15 * MINUTE, HOUR):
        agg = partial_aggregates(series, ts, value, bucket, mask)
        assert_same(agg, partial_aggregates_ref(series, ts, value, bucket, mask))


@pytest.mark.parametrize("staged", [True, False])
def test_sparse_bucket_span_is_compacted(monkeypatch, staged):
    # A reading years late makes the (series x bucket) grid huge; only present buckets get columns,
    # in the per-cell accumulators as in the group-id table.
    if not staged:
        monkeypatch.setattr(kernels.aggregates, "_staged_cell_limit", lambda n: 0)
    calls = []
    real = _kernels.mark_present_buckets
    monkeypatch.setattr(_kernels, "mark_present_buckets", lambda *a: calls.append(1) or real(*a))
    kernel = "accumulate_cells" if staged else "accumulate_dense"
    real_acc = getattr(_kernels, kernel)
    monkeypatch.setattr(_kernels, kernel, lambda *a: calls.append(2) or real_acc(*a))
    rng = np.random.default_rng(7)
    series, ts, value = random_readings(rng, 500, 5, HOUR)
    ts[:3] -= 6 * 365 * 24 * HOUR
    mask = np.array([True, False, False, True, False])
    agg = partial_aggregates(series, ts, value, MINUTE, mask)
    assert calls == [1, 2]
    assert_same(agg, partial_aggregates_ref(series, ts, value, MINUTE, mask))


def arrival_stream(rng: np.random.Generator, n_rounds: int, series_ids: np.ndarray):
    """Like bench.kernels' stream: every series every 10 s (jittered) in arrival order, 5 % of
    readings up to an hour late, 2 % NaN."""
    n = n_rounds * series_ids.size
    series = np.tile(series_ids, n_rounds).astype(np.int64)
    ts = 1_750_000_000_000_000 + np.repeat(np.arange(n_rounds), series_ids.size) * 10_000_000
    ts = ts + rng.integers(0, 10_000_000, n)
    late = rng.random(n) < 0.05
    ts[late] -= rng.integers(0, HOUR, int(late.sum()))
    value = rng.normal(60.0, 10.0, n)
    value[rng.random(n) < 0.02] = np.nan
    return series, ts, value


@pytest.mark.parametrize("seed", range(3))
def test_arrival_order_stream_with_late_readings(seed, path):
    # Time-ordered input, late readings (some before the stream's first minute, some into groups
    # already seen), NaNs, series indices with gaps and not starting at 0, dB series.
    rng = np.random.default_rng(200 + seed)
    ids = np.array([3, 4, 9, 10, 11, 40, 41, 97])
    series, ts, value = arrival_stream(rng, 400, ids)
    mask = np.zeros(98, dtype=bool)
    mask[[4, 11, 97]] = True
    # 10 s buckets: 760 columns, most of them holding one reading per series.
    for bucket in (10_000_000, MINUTE, 15 * MINUTE, HOUR):
        agg = partial_aggregates(series, ts, value, bucket, mask)
        assert_same(agg, partial_aggregates_ref(series, ts, value, bucket, mask))
    one = series == 9
    agg = partial_aggregates(series[one], ts[one], value[one], MINUTE)
    assert_same(agg, partial_aggregates_ref(series[one], ts[one], value[one], MINUTE))


def test_arrival_order_stream_uses_cell_accumulators(monkeypatch):
    # The benchmark's shape (many series, 1-minute buckets, a few readings per group) takes the
    # per-cell path by default, and at 1 h too.
    calls = []
    real = _kernels.accumulate_cells
    monkeypatch.setattr(_kernels, "accumulate_cells", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(5)
    series, ts, value = arrival_stream(rng, 200, np.arange(50))
    for bucket in (MINUTE, HOUR):
        agg = partial_aggregates(series, ts, value, bucket)
        assert_same(agg, partial_aggregates_ref(series, ts, value, bucket))
    assert calls == [1, 1]


def test_timestamps_before_epoch_floor_to_bucket_start(path):
    ts = np.array([-1, -MINUTE, -MINUTE - 1, 0], dtype=np.int64)
    agg = partial_aggregates(np.zeros(4, np.int64), ts, np.arange(4.0), MINUTE)
    assert agg.bucket_start_us.tolist() == [-2 * MINUTE, -MINUTE, 0]
    assert agg.count.tolist() == [1, 2, 1]


def test_empty_and_all_nan(path):
    empty = partial_aggregates(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), MINUTE)
    assert len(empty) == 0
    assert empty.sum.dtype == np.float64
    nan = partial_aggregates(np.zeros(3, np.int64), np.arange(3), np.full(3, np.nan), MINUTE)
    assert len(nan) == 0


def test_one_row_and_all_equal(path):
    one = partial_aggregates(np.array([3]), np.array([5 * MINUTE + 7]), np.array([42.0]), MINUTE)
    assert as_dict(one) == {
        (3, 5 * MINUTE): {
            "count": 1,
            "sum": 42.0,
            "sumsq": 1764.0,
            "min": 42.0,
            "max": 42.0,
            "first_ts_us": 5 * MINUTE + 7,
            "first_value": 42.0,
            "last_ts_us": 5 * MINUTE + 7,
            "last_value": 42.0,
            "energy_sum": 0.0,
        }
    }
    same = partial_aggregates(np.zeros(10, np.int64), np.arange(10)[::-1] * 1000, np.full(10, 7.5), MINUTE)
    assert same.count.tolist() == [10]
    assert same.first_ts_us.tolist() == [0] and same.last_ts_us.tolist() == [9000]
    assert same.sum.tolist() == [75.0] and same.min.tolist() == same.max.tolist() == [7.5]


def test_first_and_last_ties_keep_first_seen(path):
    ts = np.array([10, 10, 20, 20], dtype=np.int64)
    agg = partial_aggregates(np.zeros(4, np.int64), ts, np.array([1.0, 2.0, 3.0, 4.0]), MINUTE)
    assert agg.first_value.tolist() == [1.0]
    assert agg.last_value.tolist() == [3.0]


def test_energy_sum_gives_leq():
    levels = np.array([60.0, 70.0, np.nan, 65.0])
    agg = partial_aggregates(np.zeros(4, np.int64), np.arange(4), levels, HOUR, np.array([True]))
    leq = 10 * np.log10(agg.energy_sum[0] / agg.count[0])
    assert leq == pytest.approx(kernels.leq(levels), abs=1e-9)
    not_db = partial_aggregates(np.zeros(4, np.int64), np.arange(4), levels, HOUR, np.array([False]))
    assert not_db.energy_sum.tolist() == [0.0]


def test_input_checks():
    with pytest.raises(TypeError, match="ts_us must be integers"):
        partial_aggregates(np.zeros(2, np.int64), np.zeros(2), np.zeros(2), MINUTE)
    with pytest.raises(ValueError, match="equal lengths"):
        partial_aggregates(np.zeros(2, np.int64), np.zeros(3, np.int64), np.zeros(2), MINUTE)
    with pytest.raises(ValueError, match="bucket_us"):
        partial_aggregates(np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(2), 0)
    with pytest.raises(ValueError, match=">= 0"):
        partial_aggregates(np.array([-1, 0]), np.zeros(2, np.int64), np.zeros(2), MINUTE)
    with pytest.raises(ValueError, match="decibel_mask_per_series has 1"):
        partial_aggregates(np.array([0, 1]), np.zeros(2, np.int64), np.zeros(2), MINUTE, np.array([True]))
    with pytest.raises(TypeError, match="bool"):
        partial_aggregates(np.array([0, 1]), np.zeros(2, np.int64), np.zeros(2), MINUTE, np.array([1, 0]))
    with pytest.raises(ValueError, match="1-D"):
        partial_aggregates(np.zeros((2, 2), np.int64), np.zeros(4, np.int64), np.zeros(4), MINUTE)


def test_accepts_datetime64_and_small_int_dtypes():
    ts = np.array(["2025-01-01T00:00:30", "2025-01-01T00:01:30"], dtype="datetime64[s]")
    agg = partial_aggregates(np.array([1, 1], np.int16), ts, np.array([1, 2], np.int32), MINUTE)
    assert agg.bucket_start_us.tolist() == [1735689600_000_000, 1735689660_000_000]


@pytest.mark.parametrize("seed", range(3))
def test_merge_of_partials_equals_partial_of_union(seed, path):
    rng = np.random.default_rng(100 + seed)
    series, ts, _ = random_readings(rng, 1200, 30, 2 * HOUR)
    value = np.round(rng.normal(60, 15, ts.size) * 4) / 4  # quarter steps: sums are exact
    value[rng.random(ts.size) < 0.05] = np.nan
    mask = np.zeros(30, bool)
    cut = 700
    a = partial_aggregates(series[:cut], ts[:cut], value[:cut], 15 * MINUTE, mask)
    b = partial_aggregates(series[cut:], ts[cut:], value[cut:], 15 * MINUTE, mask)
    whole = partial_aggregates(series, ts, value, 15 * MINUTE, mask)
    assert_same(merge_partial_aggregates(a, b), as_dict(whole), exact=True)
    assert_same(merge_partial_aggregates(a, PartialAggregates.empty()), as_dict(a), exact=True)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.integers(-5, 300), st.integers(-20, 20) | st.just(None)),
        max_size=60,
    ),
    st.integers(0, 60),
    st.sampled_from([1, 7, 60]),
)
def test_merge_property(rows, cut, bucket):
    series = np.array([r[0] for r in rows], dtype=np.int64)
    ts = np.array([r[1] for r in rows], dtype=np.int64)
    value = np.array([np.nan if r[2] is None else r[2] / 2 for r in rows], dtype=np.float64)
    mask = np.array([True, False, True, False, False])
    whole = partial_aggregates(series, ts, value, bucket, mask)
    assert_same(whole, partial_aggregates_ref(series, ts, value, bucket, mask))
    merged = merge_partial_aggregates(
        partial_aggregates(series[:cut], ts[:cut], value[:cut], bucket, mask),
        partial_aggregates(series[cut:], ts[cut:], value[cut:], bucket, mask),
    )
    got, want = as_dict(merged), as_dict(whole)
    assert list(got) == list(want)
    for key in want:
        for f in FIELDS:
            assert got[key][f] == want[key][f]
        assert math.isclose(got[key]["energy_sum"], want[key]["energy_sum"], rel_tol=1e-12)


def test_reading_batch_from_columns():
    batch = ReadingBatch.from_columns([0, 1], np.array([1, 2], np.int32), [1.5, 2])
    assert len(batch) == 2
    assert batch.series.dtype == np.int64 and batch.ts_us.dtype == np.int64
    assert batch.value.dtype == np.float64 and batch.flags.tolist() == [0, 0]
    ts = np.array(["2025-01-01T00:00:00"], dtype="datetime64[ms]")
    assert ReadingBatch.from_columns([0], ts, [1.0], [3]).ts_us.tolist() == [1735689600_000_000]
    with pytest.raises(ValueError, match="lengths differ"):
        ReadingBatch.from_columns([0, 1], [1, 2], [1.0])
    with pytest.raises(TypeError, match="series must be integers"):
        ReadingBatch.from_columns([0.5], [1], [1.0])
    with pytest.raises(ValueError, match="flags"):
        ReadingBatch.from_columns([0], [1], [1.0], [-1])
    with pytest.raises(TypeError, match="flags"):
        ReadingBatch.from_columns([0], [1], [1.0], [0.5])
    with pytest.raises(TypeError, match="value must be real numbers"):
        ReadingBatch.from_columns([0], [1], ["x"])


def test_warm_up_returns_seconds():
    assert 0.0 <= kernels.warm_up() < 120.0
