"""Windowed partial aggregates (count, sum, min, max, sum of squares per series and bucket), merged."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

from processors import _kernels as K
from processors.kernels._checks import F64, I64, _float64_1d, _int64_1d, _same_length


@dataclass(frozen=True, slots=True)
class PartialAggregates:
    """Mergeable per-(series, bucket) state, one row per group present, sorted by (series, bucket).

    We keep `sum` and `sumsq` rather than Welford's M2: they merge by plain addition (what the SQL
    upsert does); mean = sum/count, variance = (sumsq - sum²/count)/(count - 1). The price is
    cancellation when |mean| ≫ std (fine for sensor values, not for e.g. raw epoch numbers).
    `first_*`/`last_*` are the earliest/latest reading; on equal timestamps the reading seen first
    (input order; in a merge, `a`) wins, as the upsert keeps the stored row.
    `energy_sum` is Σ10^(v/10) for decibel series (else 0), so Leq = 10·log10(energy_sum/count).
    """

    series: I64
    bucket_start_us: I64
    count: I64
    sum: F64
    sumsq: F64
    min: F64
    max: F64
    first_ts_us: I64
    first_value: F64
    last_ts_us: I64
    last_value: F64
    energy_sum: F64

    def __len__(self) -> int:
        return int(self.series.shape[0])

    @classmethod
    def _from_kernel(cls, series: I64, bucket: I64, acc: tuple[np.ndarray, ...]) -> PartialAggregates:
        count, total, sumsq, vmin, vmax, first_ts, first_v, last_ts, last_v, energy = acc
        return cls(
            series, bucket, count, total, sumsq, vmin, vmax, first_ts, first_v, last_ts, last_v, energy
        )

    @classmethod
    def empty(cls) -> PartialAggregates:
        ints = {"series", "bucket_start_us", "count", "first_ts_us", "last_ts_us"}
        columns: dict[str, np.ndarray] = {
            f.name: np.zeros(0, np.int64 if f.name in ints else np.float64) for f in fields(cls)
        }
        return cls(**columns)

    def _accumulators(self) -> tuple[np.ndarray, ...]:
        return (
            self.count,
            self.sum,
            self.sumsq,
            self.min,
            self.max,
            self.first_ts_us,
            self.first_value,
            self.last_ts_us,
            self.last_value,
            self.energy_sum,
        )


def _dense_cell_limit(n_valid: int) -> int:
    # The id table costs 4 B per cell; allow a few cells per reading (plus a fixed 16 MiB).
    return 4 * n_valid + (1 << 22)


def _staged_cell_limit(n_valid: int) -> int:
    # Per-cell accumulators cost 81 B a cell (only touched cells are written, but a sparse grid
    # touches pages for few groups); allow two cells per reading, as the id-table path's
    # accumulators cost 80 B per reading.
    return 2 * n_valid + 4096


# PartialAggregates' fields in order: series, bucket_start_us, count | sum, sumsq, min, max |
# first_ts_us, first_value, last_ts_us, last_value, energy_sum.
_I, _F = np.int64, np.float64
_OUT_DTYPES = (_I, _I, _I, _F, _F, _F, _F, _I, _F, _I, _F, _F)


def partial_aggregates(
    series: npt.ArrayLike,
    ts_us: npt.ArrayLike,
    value: npt.ArrayLike,
    bucket_us: int,
    decibel_mask_per_series: npt.ArrayLike | None = None,
) -> PartialAggregates:
    """Per (series, bucket_start) partial aggregates of unsorted readings; NaN values are skipped.

    Buckets are epoch-aligned: bucket_start = floor(ts / bucket_us) · bucket_us. When the
    (series x present-bucket) grid has at most about two cells per reading (the usual case, even
    with a few very late readings: empty buckets are compacted away), readings accumulate straight
    into per-cell accumulators; a sparser grid that is still small goes through a dense group-id
    table; else a stable argsort.
    `decibel_mask_per_series[s]` says whether series s is in dB (fills `energy_sum`).
    """
    s = _int64_1d("series", series)
    t = _int64_1d("ts_us", ts_us)
    v = _float64_1d("value", value)
    _same_length(series=s, ts_us=t, value=v)
    bucket = int(bucket_us)
    if bucket <= 0:
        raise ValueError(f"bucket_us must be > 0, got {bucket_us}")
    if decibel_mask_per_series is None:
        has_db = False
        mask = np.zeros(1, dtype=np.bool_)
    else:
        mask_arr = np.asarray(decibel_mask_per_series)
        if mask_arr.ndim != 1 or mask_arr.dtype != np.bool_:
            raise TypeError(f"decibel_mask_per_series must be a 1-D bool array, got {mask_arr.dtype}")
        has_db = True
        mask = np.ascontiguousarray(mask_arr)
    n_valid, smin, smax, tmin, tmax = K.span_stats(s, t, v)
    if n_valid == 0:
        return PartialAggregates.empty()
    if smin < 0:
        raise ValueError(f"series indices must be >= 0, got {smin}")
    if has_db and smax >= mask.shape[0]:
        raise ValueError(f"decibel_mask_per_series has {mask.shape[0]} entries but series reaches {smax}")
    first_bucket = (int(tmin) // bucket) * bucket
    n_bucket_span = int(tmax) // bucket - int(tmin) // bucket + 1
    n_series_span = int(smax) - int(smin) + 1
    limit = _dense_cell_limit(int(n_valid))
    # Dense path limits: int64 offsets, int32 group ids.
    dense_possible = (
        int(tmax) - first_bucket < 2**63 and n_series_span * n_bucket_span < 2**62 and n_valid < 2**31
    )
    n_cols = n_bucket_span
    use_compact = False
    compact = np.zeros(1, dtype=np.int64)
    if dense_possible and n_series_span * n_bucket_span > limit and n_bucket_span <= limit:
        compact, n_cols = K.mark_present_buckets(t, v, bucket, first_bucket, n_bucket_span)
        use_compact = True
    n_cells = n_series_span * int(n_cols)
    if dense_possible and n_cells <= limit and n_cells <= _staged_cell_limit(int(n_valid)):
        # Accumulators per (bucket, series) cell, then one ordered pass writes each output once.
        # Large buffers come from NumPy (transparent huge pages: fewer page faults, TLB misses).
        present = np.zeros(n_cells, dtype=np.uint8)
        cell_ints = np.empty(3 * n_cells, dtype=np.int64)
        cell_floats = np.empty(7 * n_cells, dtype=np.float64)
        n_groups = K.accumulate_cells(
            s, t, v, bucket, first_bucket, int(smin), n_series_span, compact, use_compact, mask, has_db,
            present, cell_ints, cell_floats,
        )  # fmt: skip
        if use_compact:
            cols = np.flatnonzero(compact >= 0).astype(np.int64)
        else:
            cols = np.arange(n_cols, dtype=np.int64)
        bucket_start_of_col = first_bucket + cols * bucket
        outs = tuple(np.empty(n_groups, dtype=dt) for dt in _OUT_DTYPES)
        K.emit_cells(
            present, cell_ints, cell_floats, n_series_span, int(n_cols), int(smin), bucket_start_of_col, *outs
        )
        return PartialAggregates(*outs)
    if dense_possible and n_cells <= limit:
        out = K.accumulate_dense(
            s,
            t,
            v,
            bucket,
            first_bucket,
            int(smin),
            n_series_span,
            int(n_cols),
            compact,
            use_compact,
            mask,
            has_db,
            min(n_series_span * int(n_cols), int(n_valid)),
        )
    else:
        if dense_possible:
            order = np.argsort((s - smin) * n_bucket_span + (t - first_bucket) // bucket, kind="stable")
        else:
            order = np.lexsort((t // bucket, s))
        out = K.accumulate_sorted(order.astype(np.int64, copy=False), s, t, v, bucket, mask, has_db)
    return PartialAggregates._from_kernel(*out)


def merge_partial_aggregates(a: PartialAggregates, b: PartialAggregates) -> PartialAggregates:
    """Merge two partials the way the SQL upsert merges a new partial (`b`) into a stored one (`a`)."""
    series = np.concatenate([a.series, b.series])
    bucket = np.concatenate([a.bucket_start_us, b.bucket_start_us])
    acc = tuple(
        np.concatenate([np.asarray(x), np.asarray(y)])
        for x, y in zip(a._accumulators(), b._accumulators(), strict=True)
    )
    order = np.lexsort((bucket, series)).astype(np.int64, copy=False)
    out = K.merge_sorted_partials(order, series, bucket, acc)
    return PartialAggregates._from_kernel(*out)
