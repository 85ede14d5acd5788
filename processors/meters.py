"""Cumulative meters: each new register reading becomes a consumption step, merged into the rollups.

`merge_rollups` calls `meter_steps_of_batch` in the writer's transaction. A meter series continues
from its stored reference (`meter_state`) when its new readings are all later than the last one
folded in: its steps are summed into the same rollup upsert as the readings. Otherwise (a late
reading, or a series without state) it is recomputed from its stored readings, starting one UTC day
before the earliest new reading to rebuild the reference, and its meter columns from that day on
are rewritten after the upsert (`rewrite_redone`). So a bucket always holds exactly the steps
ending in it, and any period is the sum of its buckets.

How a meter may count comes from the registry (`devices.metadata`), with defaults per metric:
`rollover_at` (register size, e.g. 100000 for a five-digit register), `max_rate_per_h`, or for
water the nominal size `meter_dn` (ISO 4064 Q3 by DN, overload Q4 = 1.25·Q3), for electricity
`max_current_a` and `phases` (230 V a phase), and `noise_tolerance` (register jitter, in the
metric's unit).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from processors.batch import ReadingBatch
from processors.kernels import (
    FLAG_IMPLAUSIBLE,
    FLAG_RESET,
    FLAG_ROLLOVER,
    MeterState,
    MeterSteps,
    meter_steps,
)
from schemas import statements as sql

DAY_US = 86_400_000_000
METER_LOCK_BUCKETS = 512  # advisory locks a writer's transaction takes at most for its meters
VOLTS_PER_PHASE = 230.0
Q4_OVER_Q3 = 1.25  # ISO 4064-1: overload flow rate / permanent flow rate
# ISO 4064 permanent flow rate Q3 (m3/h) of the usual meter per nominal diameter (DN, mm).
WATER_Q3_BY_DN = {
    15: 2.5,
    20: 4.0,
    25: 6.3,
    32: 10.0,
    40: 16.0,
    50: 25.0,
    65: 40.0,
    80: 63.0,
    100: 100.0,
    125: 160.0,
    150: 250.0,
    200: 400.0,
    250: 630.0,
    300: 1000.0,
}


@dataclass(frozen=True, slots=True)
class MeterSpec:
    """How a meter can count: register size and most per hour (NaN: unknown), register noise."""

    rollover_at: float
    max_rate_per_h: float
    noise_tolerance: float


def _number(meta: Mapping[str, Any], key: str) -> float | None:
    try:
        v = float(meta[key])
    except (KeyError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def meter_spec(metric: str, meta: Mapping[str, Any]) -> MeterSpec:
    """The registry's attributes of a meter, else the defaults of its metric: a DN20 water meter
    (Q4 = 5 m3/h, 5 L noise), a three-phase 63 A electricity meter (43.47 kW, 0.1 kWh noise)."""
    rate = _number(meta, "max_rate_per_h")
    if metric == "water_volume_total":
        dn = _number(meta, "meter_dn")
        q3 = WATER_Q3_BY_DN.get(int(dn)) if dn is not None else None
        rate = rate or Q4_OVER_Q3 * (q3 or WATER_Q3_BY_DN[20])
        tolerance = 0.005
    elif metric == "energy_total":
        amps = _number(meta, "max_current_a") or 63.0
        phases = _number(meta, "phases") or 3.0
        rate = rate or amps * phases * VOLTS_PER_PHASE / 1000.0
        tolerance = 0.1
    else:
        tolerance = 0.0
    return MeterSpec(
        rollover_at=_number(meta, "rollover_at") or math.nan,
        max_rate_per_h=rate or math.nan,
        noise_tolerance=_number(meta, "noise_tolerance") or tolerance,
    )


@functools.lru_cache(maxsize=4096)
def _spec_of(metric: str, spec_json: str) -> MeterSpec:
    """`meter_spec` of the registry fields as METER_SPECS returns them (most meters share them)."""
    loaded = json.loads(spec_json)
    return meter_spec(metric, loaded if isinstance(loaded, dict) else {})


@dataclass(frozen=True, slots=True)
class BucketSteps:
    """Meter steps summed per (series key, bucket start): the columns of the rollup update."""

    bucket_us: npt.NDArray[np.int64]
    key: npt.NDArray[np.int64]
    consumption: npt.NDArray[np.float64]
    covered_s: npt.NDArray[np.float64]
    excluded_s: npt.NDArray[np.float64]
    resets: npt.NDArray[np.int64]
    rollovers: npt.NDArray[np.int64]
    rejected: npt.NDArray[np.int64]
    noise: npt.NDArray[np.int64]

    def values(self) -> list[npt.NDArray[np.generic]]:
        """The seven meter columns, in the rollup tables' order."""
        return [
            self.consumption,
            self.covered_s,
            self.excluded_s,
            self.resets,
            self.rollovers,
            self.rejected,
            self.noise,
        ]

    def columns(self) -> list[list[object]]:
        """ADD_METER_STEPS's parameters: bucket, device_key, metric_id, then the meter columns."""
        return [
            self.bucket_us.tolist(),
            (self.key >> 16).tolist(),
            (self.key & 0xFFFF).tolist(),
            *(v.tolist() for v in self.values()),
        ]


def bucket_steps(
    key: npt.NDArray[np.int64], ts_us: npt.NDArray[np.int64], steps: MeterSteps, bucket_us: int
) -> BucketSteps:
    """Sum each step into the bucket of the reading it ends at."""
    bucket = (ts_us // bucket_us) * bucket_us
    pairs, group = np.unique(np.stack([key, bucket]), axis=1, return_inverse=True)
    group = group.reshape(-1)
    n = pairs.shape[1]

    def total(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return np.bincount(group, weights=np.asarray(x, dtype=np.float64), minlength=n).astype(np.float64)

    def count(flag: int) -> npt.NDArray[np.int64]:
        return np.bincount(group, weights=(steps.flags & flag) != 0, minlength=n).astype(np.int64)

    return BucketSteps(
        bucket_us=pairs[1],
        key=pairs[0],
        consumption=total(np.nan_to_num(steps.consumption, nan=0.0)),
        covered_s=total(steps.covered_us) / 1e6,
        excluded_s=total(steps.excluded_us) / 1e6,
        resets=count(FLAG_RESET),
        rollovers=count(FLAG_ROLLOVER),
        rejected=count(FLAG_IMPLAUSIBLE),
        noise=np.bincount(group, weights=steps.noise, minlength=n).astype(np.int64),
    )


@dataclass(frozen=True, slots=True)
class BatchMeterSteps:
    """A batch's meter steps, each with its series key and time: those of series that continued
    from their stored state go into the rollup upsert (`sums`); those of series re-read from the
    stored readings (`redone`) overwrite the meter columns from `redo_from` on (`rewrite_redone`)."""

    key: npt.NDArray[np.int64]
    ts_us: npt.NDArray[np.int64]
    steps: MeterSteps
    redone: npt.NDArray[np.bool_]
    redo_keys: npt.NDArray[np.int64]
    redo_from: npt.NDArray[np.int64]

    def sums(self, bucket_us: int, redone: bool) -> BucketSteps:
        pick = self.redone == redone
        st = self.steps
        picked = MeterSteps(
            st.consumption[pick],
            st.covered_us[pick],
            st.excluded_us[pick],
            st.flags[pick],
            st.noise[pick],
            st.state,
        )
        return bucket_steps(self.key[pick], self.ts_us[pick], picked, bucket_us)


async def meter_steps_of_batch(
    conn: asyncpg.Connection,
    batch: ReadingBatch,
    keys: npt.NDArray[np.int64],
    cumulative_metric_ids: frozenset[int],
) -> BatchMeterSteps | None:
    """Step the batch's new cumulative readings from each meter's stored state, or re-read the meter
    from one UTC day before its earliest new reading when that is not later than the last one folded
    in (a late reading) or it has no state; save the new state. Each meter is locked first, so a
    concurrent writer's transaction on it has committed before its state and readings are read."""
    if not cumulative_metric_ids or len(batch) == 0:
        return None
    is_meter = np.isin(keys & 0xFFFF, np.array(sorted(cumulative_metric_ids), dtype=np.int64))
    rows = is_meter[batch.series] & np.isfinite(batch.value)
    if not rows.any():
        return None
    new_key = keys[batch.series[rows]]
    new_ts = batch.ts_us[rows]
    new_value = batch.value[rows]
    meters, dense = np.unique(new_key, return_inverse=True)
    dense = dense.reshape(-1)
    first_new = np.full(meters.shape[0], np.iinfo(np.int64).max)
    np.minimum.at(first_new, dense, new_ts)
    dk, mid = (meters >> 16).tolist(), (meters & 0xFFFF).tolist()
    await conn.execute(sql.LOCK_METERS, np.unique(meters % METER_LOCK_BUCKETS).tolist())
    specs = {
        (r["device_key"], r["metric_id"]): _spec_of(r["name"], r["spec"])
        for r in await conn.fetch(sql.METER_SPECS, dk, mid)
    }
    stored = {(r["device_key"], r["metric_id"]): r for r in await conn.fetch(sql.LOCK_METER_STATE, dk, mid)}
    spec = [specs.get((d, m), meter_spec("", {})) for d, m in zip(dk, mid, strict=True)]
    state = MeterState.empty(meters.shape[0])
    recompute = np.ones(meters.shape[0], dtype=np.bool_)
    for i, (d, m) in enumerate(zip(dk, mid, strict=True)):
        r = stored.get((d, m))
        if r is not None and first_new[i] > r["last_us"]:
            recompute[i] = False
            state.has_ref[i], state.ref_t_us[i], state.ref_value[i] = True, r["ref_us"], r["ref_value"]
            state.prev_value[i] = r["prev_value"]
            if r["pending_us"] is not None:
                state.has_pending[i] = True
                state.pending_t_us[i], state.pending_value[i] = r["pending_us"], r["pending_value"]
    take = ~recompute[dense]
    series, ts, value = dense[take], new_ts[take], new_value[take]
    redo_from = (first_new[recompute] // DAY_US) * DAY_US
    if recompute.any():
        stored_rows = await conn.fetch(
            sql.METER_READINGS,
            (meters[recompute] >> 16).tolist(),
            (meters[recompute] & 0xFFFF).tolist(),
            (redo_from - DAY_US).tolist(),
        )
        index_of = {int(k): i for i, k in enumerate(meters.tolist())}
        series = np.r_[series, [index_of[(r["device_key"] << 16) | r["metric_id"]] for r in stored_rows]]
        ts = np.r_[ts, [r["us"] for r in stored_rows]].astype(np.int64)
        value = np.r_[value, [r["value"] for r in stored_rows]].astype(np.float64)
        series = series.astype(np.int64)
    steps = meter_steps(
        series,
        ts,
        value,
        rollover_at=[s.rollover_at for s in spec],
        max_rate_per_h=[s.max_rate_per_h for s in spec],
        tolerance=[s.noise_tolerance for s in spec],
        state=state,
    )
    await _save_state(conn, dk, mid, series, ts, steps.state)
    # warm-up readings (the day before a recompute) only rebuild the reference
    start = np.full(meters.shape[0], np.iinfo(np.int64).min)
    start[recompute] = redo_from
    keep = (ts >= start[series]) & np.isfinite(value)
    return BatchMeterSteps(
        key=meters[series[keep]],
        ts_us=ts[keep],
        steps=MeterSteps(
            steps.consumption[keep],
            steps.covered_us[keep],
            steps.excluded_us[keep],
            steps.flags[keep],
            steps.noise[keep],
            steps.state,
        ),
        redone=recompute[series[keep]],
        redo_keys=meters[recompute],
        redo_from=redo_from,
    )


async def _save_state(
    conn: asyncpg.Connection,
    dk: list[int],
    mid: list[int],
    series: npt.NDArray[np.int64],
    ts: npt.NDArray[np.int64],
    st: MeterState,
) -> None:
    last = np.full(len(st), np.iinfo(np.int64).min)
    np.maximum.at(last, series, ts)
    has = st.has_ref
    await conn.execute(
        sql.SAVE_METER_STATE,
        [d for d, h in zip(dk, has, strict=True) if h],
        [m for m, h in zip(mid, has, strict=True) if h],
        last[has].tolist(),
        st.ref_t_us[has].tolist(),
        st.ref_value[has].tolist(),
        st.prev_value[has].tolist(),
        [int(t) if p else None for t, p in zip(st.pending_t_us[has], st.has_pending[has], strict=True)],
        [float(v) if p else None for v, p in zip(st.pending_value[has], st.has_pending[has], strict=True)],
    )


async def rewrite_redone(
    conn: asyncpg.Connection, ms: BatchMeterSteps, rollup_tables: Mapping[str, int]
) -> None:
    """Overwrite the meter columns of the re-read series from their `redo_from` on (after the
    rollup upsert, so this batch's new buckets exist)."""
    if ms.redo_keys.size == 0:
        return
    redo_dk, redo_mid = (ms.redo_keys >> 16).tolist(), (ms.redo_keys & 0xFFFF).tolist()
    for table, bucket_us in rollup_tables.items():
        await conn.execute(
            sql.CLEAR_METER_STEPS.format(table=table), redo_dk, redo_mid, ms.redo_from.tolist()
        )
        await conn.execute(
            sql.ADD_METER_STEPS.format(table=table), *ms.sums(bucket_us, redone=True).columns()
        )
