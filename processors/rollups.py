"""Newly stored readings -> mergeable rollup rows at 1 minute, 1 hour and 1 day.

The writer calls `rollup_rows` inside the transaction that stored the readings, with exactly the
rows the insert reported as new, so a redelivered batch adds nothing twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from processors.kernels import partial_aggregates

ROLLUP_LEVELS: dict[int, tuple[str, int]] = {
    1: ("rollup_1m", 60_000_000),
    2: ("rollup_1h", 3_600_000_000),
    3: ("rollup_1d", 86_400_000_000),
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _as_datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def rollup_rows(
    device_key: npt.NDArray[np.int64],
    metric_id: npt.NDArray[np.int64],
    ts_us: npt.NDArray[np.int64],
    value: npt.NDArray[np.float64],
    decibel_metric_ids: frozenset[int],
) -> list[tuple[object, ...]]:
    """Rows for `staging_rollup` (level first), one per (level, device, metric, bucket)."""
    if len(ts_us) == 0:
        return []
    key = (device_key.astype(np.int64) << 16) | metric_id.astype(np.int64)
    uniq, series = np.unique(key, return_inverse=True)
    uniq_metric = uniq & 0xFFFF
    decibel = np.isin(
        uniq_metric, np.fromiter(decibel_metric_ids, dtype=np.int64, count=len(decibel_metric_ids))
    )
    rows: list[tuple[object, ...]] = []
    for level, (_table, bucket_us) in ROLLUP_LEVELS.items():
        agg = partial_aggregates(series.astype(np.int64), ts_us, value, bucket_us, decibel)
        keys = uniq[agg.series]
        for i in range(len(agg.series)):
            k = int(keys[i])
            rows.append(
                (
                    level,
                    _as_datetime(int(agg.bucket_start_us[i])),
                    k >> 16,
                    k & 0xFFFF,
                    int(agg.count[i]),
                    float(agg.sum[i]),
                    float(agg.sumsq[i]),
                    float(agg.min[i]),
                    float(agg.max[i]),
                    _as_datetime(int(agg.first_ts_us[i])),
                    float(agg.first_value[i]),
                    _as_datetime(int(agg.last_ts_us[i])),
                    float(agg.last_value[i]),
                    float(agg.energy_sum[i]),
                )
            )
    return rows
