"""The columnar batch the kernels work on: one NumPy array per field, one row per reading."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from processors.kernels._checks import _float64_1d, _int64_1d


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
        s = _int64_1d("series", series)
        t = _int64_1d("ts_us", ts_us)
        v = _float64_1d("value", value)
        f = np.zeros(s.shape[0], dtype=np.uint8) if flags is None else np.asarray(flags)
        if f.dtype.kind not in "iub":
            raise TypeError(f"flags must be integers, got dtype {f.dtype}")
        if f.size and (int(f.min()) < 0 or int(f.max()) > 255):
            raise ValueError("flags must lie in [0, 255] (a uint8 bitmask)")
        f = np.ascontiguousarray(f, dtype=np.uint8)
        if f.ndim != 1:
            raise ValueError(f"flags must be 1-D, got shape {f.shape}")
        lengths = {"series": len(s), "ts_us": len(t), "value": len(v), "flags": len(f)}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"column lengths differ: {lengths}")
        return cls(series=s, ts_us=t, value=v, flags=f)
