"""Newly stored readings -> mergeable rollup state at 1 minute, 15 minutes, 1 hour and 1 day.

The writer calls `merge_rollups` inside the transaction that stored the readings, with exactly the
rows the insert reported as new, so a redelivered batch adds nothing twice. The Numba kernel
aggregates; PostgreSQL receives every level's partials in one binary COPY built by NumPy (no
per-value Python work) into the connection's `staging_rollups` (the writer creates it), and
merges them into each rollup table with the same merge as `merge_partial_aggregates`.
"""

from __future__ import annotations

import io

import asyncpg
import numpy as np
import numpy.typing as npt

from processors.batch import ReadingBatch
from processors.kernels import PartialAggregates, partial_aggregates
from processors.meters import BucketSteps, meter_steps_of_batch, rewrite_redone
from schemas import statements as sql

ROLLUP_TABLES: dict[str, int] = {
    "rollup_1m": 60_000_000,
    "rollup_15m": 900_000_000,
    "rollup_1h": 3_600_000_000,
    "rollup_1d": 86_400_000_000,
}


def series_of(
    device_key: npt.NDArray[np.int64], metric_id: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Dense series index per reading, and the (device_key << 16 | metric_id) key of each series."""
    key = (device_key.astype(np.int64) << 16) | metric_id.astype(np.int64)
    uniq, series = np.unique(key, return_inverse=True)
    return series.astype(np.int64), uniq


# meter_consumption, meter_covered_s, meter_excluded_s, then the counts of resets, rollovers,
# rejected and noise steps
METER_COLUMN_DTYPES = (np.float64, np.float64, np.float64, np.int64, np.int64, np.int64, np.int64)


def rollup_arrays(
    agg: PartialAggregates, keys: npt.NDArray[np.int64], meter: BucketSteps | None = None
) -> list[npt.NDArray[np.generic]]:
    """The rollup rows as columns (bucket, device_key, metric_id, the state, the meter columns):
    the meter columns are `meter`'s sums on their (series, bucket) rows, 0 elsewhere."""
    k = keys[agg.series]
    n = len(agg)
    columns: list[npt.NDArray[np.generic]] = [np.zeros(n, dtype=t) for t in METER_COLUMN_DTYPES]
    if meter is not None and meter.key.size:
        # every step ends at a new reading, so its (series, bucket) is one of this batch's rows
        row_of = {kb: i for i, kb in enumerate(zip(k.tolist(), agg.bucket_start_us.tolist(), strict=True))}
        wanted = zip(meter.key.tolist(), meter.bucket_us.tolist(), strict=True)
        at = np.fromiter((row_of[kb] for kb in wanted), np.int64, meter.key.size)
        for col, values in zip(columns, meter.values(), strict=True):
            col[at] = values
    return [
        agg.bucket_start_us,
        k >> 16,
        k & 0xFFFF,
        agg.count,
        agg.sum,
        agg.sumsq,
        agg.min,
        agg.max,
        agg.first_ts_us,
        agg.first_value,
        agg.last_ts_us,
        agg.last_value,
        agg.energy_sum,
        *columns,
    ]


def rollup_columns(
    agg: PartialAggregates, keys: npt.NDArray[np.int64], meter: BucketSteps | None = None
) -> list[list[object]]:
    """`rollup_arrays` as the unnest statements' parameters (numpy's tolist is a single C loop)."""
    return [c.tolist() for c in rollup_arrays(agg, keys, meter)]


# staging_rollups' columns (schemas/statements.py STAGING_ROLLUPS) in PostgreSQL's binary COPY
# encoding: width, then rollup_arrays' columns.
STAGING_ROLLUP_TYPES = (">i8", ">i8", ">i4", ">i2", ">i8", *[">f8"] * 4, ">i8", ">f8", ">i8", ">f8", ">f8")
STAGING_ROLLUP_TYPES += (">f8", ">f8", ">f8", ">i4", ">i4", ">i4", ">i4")
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no header extension
COPY_TRAILER = b"\xff\xff"


def binary_copy(columns: list[npt.NDArray[np.generic]], types: tuple[str, ...]) -> bytes:
    """Non-null fixed-width columns as one binary COPY stream, built by NumPy without a Python loop
    per value (asyncpg's array parameters and COPY records encode value by value)."""
    n = columns[0].shape[0]
    fields: list[tuple[str, str]] = [("nf", ">i2")]
    for i, t in enumerate(types):
        fields += [(f"len{i}", ">i4"), (f"v{i}", t)]
    rows = np.empty(n, dtype=np.dtype(fields))
    rows["nf"] = len(types)
    for i, (col, t) in enumerate(zip(columns, types, strict=True)):
        rows[f"len{i}"] = np.dtype(t).itemsize
        rows[f"v{i}"] = col
    return COPY_HEADER + rows.tobytes() + COPY_TRAILER


async def merge_rollups(
    conn: asyncpg.Connection,
    batch: ReadingBatch,
    keys: npt.NDArray[np.int64],
    decibel_metric_ids: frozenset[int],
    cumulative_metric_ids: frozenset[int] = frozenset(),
) -> int:
    """Aggregate the new readings and merge them into every rollup table; returns rows upserted.

    `batch.series` indexes `keys` (device_key << 16 | metric_id), as `series_of` returns them.
    Readings of cumulative metrics also become meter steps (processors.meters).
    """
    if len(batch) == 0:
        return 0
    decibel = np.isin(keys & 0xFFFF, np.array(sorted(decibel_metric_ids), dtype=np.int64))
    meters = await meter_steps_of_batch(conn, batch, keys, cumulative_metric_ids)
    levels = []
    for bucket_us in ROLLUP_TABLES.values():
        agg = partial_aggregates(batch.series, batch.ts_us, batch.value, bucket_us, decibel)
        steps = meters.sums(bucket_us, redone=False) if meters is not None else None
        levels.append([np.full(len(agg), bucket_us, np.int64), *rollup_arrays(agg, keys, steps)])
    staged = [np.concatenate(c) for c in zip(*levels, strict=True)]
    await conn.copy_to_table(
        "staging_rollups", source=io.BytesIO(binary_copy(staged, STAGING_ROLLUP_TYPES)), format="binary"
    )
    for table, bucket_us in ROLLUP_TABLES.items():
        await conn.execute(sql.MERGE_STAGED_ROLLUP.format(table=table), bucket_us)
    n = staged[0].shape[0]
    if meters is not None:
        await rewrite_redone(conn, meters, ROLLUP_TABLES)
    return n


async def rebuild_rollups(
    conn: asyncpg.Connection,
    device_key: npt.NDArray[np.int64],
    metric_id: npt.NDArray[np.int64],
    ts_us: npt.NDArray[np.int64],
    excluded_flags: int,
) -> int:
    """Recompute, from the stored readings without `excluded_flags`, every rollup bucket holding one
    of the given readings (a bucket left without readings is deleted: it counts as missing). The
    owner's `citykpi_delete_empty_rollup_buckets` deletes, after checking the readings itself, so
    the ingest login holds no DELETE on the rollups; it accepts only the quality bits as
    `excluded_flags`.

    Run in the caller's transaction after the flags changed. The bucket rows are locked first, so a
    concurrent writer's merge lands either before (and is read back here) or after (and adds to
    the rebuilt row). Meter columns are left alone (the quality bits only concern averaged metrics).
    Returns rows rewritten or deleted.
    """
    if device_key.size == 0:
        return 0
    series, keys = series_of(device_key, metric_id)
    decibel_ids = {r["metric_id"] for r in await conn.fetch(sql.DECIBEL_METRICS)}
    decibel = np.isin(keys & 0xFFFF, np.array(sorted(decibel_ids), dtype=np.int64))
    n = 0
    for table, bucket_us in ROLLUP_TABLES.items():
        pairs = np.unique(np.stack([keys[series], (ts_us // bucket_us) * bucket_us]), axis=1)
        dk, mid, start = (pairs[0] >> 16).tolist(), (pairs[0] & 0xFFFF).tolist(), pairs[1].tolist()
        await conn.execute(sql.LOCK_ROLLUP_BUCKETS.format(table=table), dk, mid, start)
        rows = await conn.fetch(sql.READINGS_IN_BUCKETS, dk, mid, start, bucket_us, excluded_flags)
        kept_key = np.fromiter(((r[0] << 16) | r[1] for r in rows), np.int64, len(rows))
        kept = ReadingBatch.from_columns(
            np.searchsorted(keys, kept_key),
            np.fromiter((r[2] for r in rows), np.int64, len(rows)),
            np.fromiter((r[3] for r in rows), np.float64, len(rows)),
        )
        agg = partial_aggregates(kept.series, kept.ts_us, kept.value, bucket_us, decibel)
        await conn.execute(sql.REPLACE_ROLLUP.format(table=table), *rollup_columns(agg, keys))
        filled = set(zip(keys[agg.series].tolist(), agg.bucket_start_us.tolist(), strict=True))
        empty = [i for i, k in enumerate(pairs[0].tolist()) if (k, start[i]) not in filled]
        deleted = await conn.fetchval(
            sql.DELETE_EMPTY_ROLLUP_BUCKETS,
            table,
            [dk[i] for i in empty],
            [mid[i] for i in empty],
            [start[i] for i in empty],
            excluded_flags,
        )
        n += len(agg) + deleted
    return n
