"""Argument checks shared by the kernel wrappers, and the array type aliases."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from processors import _kernels as K

I64 = npt.NDArray[np.int64]


F64 = npt.NDArray[np.float64]


U8 = npt.NDArray[np.uint8]


HOUR_US = 3_600_000_000


DAY_US = 86_400_000_000


def _int64_1d(name: str, data: npt.ArrayLike) -> I64:
    arr = np.asarray(data)
    if arr.dtype.kind == "M":
        arr = arr.astype("datetime64[us]").view(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} does not fit in int64")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _float64_1d(name: str, data: npt.ArrayLike) -> F64:
    arr = np.asarray(data)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: int(a.shape[0]) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays must have equal lengths, got {lengths}")
    return next(iter(lengths.values()))


def _group_index(name: str, data: npt.ArrayLike, n_groups: int) -> I64:
    idx = _int64_1d(name, data)
    if n_groups < 0:
        raise ValueError(f"n_groups must be >= 0, got {n_groups}")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n_groups):
        raise ValueError(f"{name} values must lie in [0, {n_groups}), got [{idx.min()}, {idx.max()}]")
    return idx


def _series_time_order(series: I64, ts_us: I64) -> I64:
    """Row order sorted by (series, ts), stable so equal timestamps keep their input order."""
    if series.size == 0:
        return np.zeros(0, dtype=np.int64)
    smin, smax = int(series.min()), int(series.max())
    if smax - smin + 1 <= 2 * series.size + (1 << 16):
        return K.series_time_order(series, ts_us, smin, smax - smin + 1)
    return np.lexsort((ts_us, series)).astype(np.int64, copy=False)
