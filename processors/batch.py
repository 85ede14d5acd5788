"""The columnar batch the kernels work on: one NumPy array per field, one row per reading."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    """Readings as columns; `series` indexes a (device, metric) pair in the caller's registry.

    `ts_us` is epoch microseconds UTC, `flags` a bitmask of `processors.kernels.FLAG_*`.
    Build it with `from_columns`, which checks lengths and fixes dtypes once for every kernel.
    """

    series: npt.NDArray[np.int64]
    ts_us: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    flags: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return int(self.series.shape[0])

    @classmethod
    def from_columns(
        cls,
        series: npt.ArrayLike,
        ts_us: npt.ArrayLike,
        value: npt.ArrayLike,
        flags: npt.ArrayLike | None = None,
    ) -> ReadingBatch:
        """Contiguous, correctly typed columns of equal length; flags default to 0.

        Integer columns must already be integers (a float series index or timestamp is a bug
        upstream, not something to round); `ts_us` may also be datetime64, converted to µs.
        """
        s = _integer_column("series", series)
        t_raw = np.asarray(ts_us)
        if t_raw.dtype.kind == "M":
            t_raw = t_raw.astype("datetime64[us]").view(np.int64)
        t = _integer_column("ts_us", t_raw)
        v = np.asarray(value)
        if v.dtype.kind not in "fiub":
            raise TypeError(f"value must be numeric, got dtype {v.dtype}")
        v = np.ascontiguousarray(v, dtype=np.float64)
        f = np.zeros(s.shape[0], dtype=np.uint8) if flags is None else np.asarray(flags)
        if f.dtype.kind not in "iub":
            raise TypeError(f"flags must be integers, got dtype {f.dtype}")
        if f.size and (int(f.min()) < 0 or int(f.max()) > 255):
            raise ValueError("flags must lie in [0, 255] (a uint8 bitmask)")
        f = np.ascontiguousarray(f, dtype=np.uint8)
        for name, col in (("value", v), ("flags", f)):
            if col.ndim != 1:
                raise ValueError(f"{name} must be 1-D, got shape {col.shape}")
        lengths = {"series": len(s), "ts_us": len(t), "value": len(v), "flags": len(f)}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"column lengths differ: {lengths}")
        return cls(series=s, ts_us=t, value=v, flags=f)


def _integer_column(name: str, data: npt.ArrayLike) -> npt.NDArray[np.int64]:
    arr = np.asarray(data)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} does not fit in int64")
    return np.ascontiguousarray(arr, dtype=np.int64)
