"""Noise: energy means (Leq), Lden from hourly levels in a city's local time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from processors import _kernels as K
from processors.kernels._checks import (
    DAY_US,
    F64,
    HOUR_US,
    I64,
    _float64_1d,
    _group_index,
    _int64_1d,
    _same_length,
)


def leq(levels_db: npt.ArrayLike) -> float:
    """Energy-average level 10·log10(mean(10^(L/10))) of the non-NaN levels; NaN if none."""
    return float(K.leq_energy_average(_float64_1d("levels_db", levels_db)))


def leq_by_group(group_idx: npt.ArrayLike, levels_db: npt.ArrayLike, n_groups: int) -> F64:
    """Energy-average level per group index in [0, n_groups); NaN for groups without a level."""
    lv = _float64_1d("levels_db", levels_db)
    g = _group_index("group_idx", group_idx, n_groups)
    _same_length(group_idx=g, levels_db=lv)
    return K.leq_energy_average_by_group(g, lv, int(n_groups))


@dataclass(frozen=True, slots=True)
class LdenByDay:
    """Noise indicators per local Lden day (sorted), energy averages in dB, NaN when absent.

    `lden` is NaN unless all three periods have at least one hour: apply completeness rules
    (e.g. a minimum share of hours per period) with the `hours_*` counts.
    """

    local_date: npt.NDArray[np.datetime64]
    lday: F64
    levening: F64
    lnight: F64
    lden: F64
    hours_day: I64
    hours_evening: I64
    hours_night: I64

    def __len__(self) -> int:
        return int(self.local_date.shape[0])


def _utc_offset_at(second: int, tz: ZoneInfo) -> int:
    off = datetime.fromtimestamp(second, tz).utcoffset()  # ~1 µs; offsets change on whole seconds
    return 0 if off is None else off // timedelta(microseconds=1)


def _utc_offsets_us(ts_us: I64, tz: ZoneInfo) -> I64:
    """UTC offset (µs) of each instant in `tz`.

    Looked up once per UTC midnight: of every day of the span when that is short (no sort), else of
    each day present and the day after. Only a day whose offset differs from the next midnight's
    (a DST or zone change inside it) is resolved instant by instant. Assumes at most one change per day.
    """
    if ts_us.size == 0:
        return np.zeros(0, dtype=np.int64)
    day = ts_us // DAY_US
    first, last = int(day.min()), int(day.max())
    if last - first <= ts_us.size + 366:
        midnights = np.arange(first, last + 2, dtype=np.int64)
        pos = day - first
    else:
        present = np.unique(day)
        midnights = np.union1d(present, present + 1)
        pos = np.searchsorted(midnights, day)
    offset = np.array([_utc_offset_at(d * 86_400, tz) for d in midnights.tolist()], dtype=np.int64)
    offsets = offset[pos]
    changes = (offset[:-1] != offset[1:]) & (midnights[1:] == midnights[:-1] + 1)
    for k in np.flatnonzero(changes).tolist():
        rows = np.flatnonzero(pos == k)
        offsets[rows] = [_utc_offset_at(u // 1_000_000, tz) for u in ts_us[rows].tolist()]
    return offsets


def lden_from_hourly_leq(
    hour_start_us: npt.ArrayLike,
    leq_db: npt.ArrayLike,
    tz: str,
    *,
    day_start_hour: int = 7,
    evening_start_hour: int = 19,
    night_start_hour: int = 23,
    evening_penalty_db: float = 5.0,
    night_penalty_db: float = 10.0,
) -> LdenByDay:
    """Lday, Levening, Lnight and Lden per local day from hourly Leq with their UTC hour starts.

    Periods are local time in zone `tz` (zoneinfo name): day [day_start, evening_start), evening
    [evening_start, night_start), night [night_start, 24) + [0, day_start). An "Lden day" runs
    from day_start to the next day_start, so the night belongs to the day it starts in: the
    hours 00–07 of 2 June count in the Lden day of 1 June. DST days therefore have a 7- or
    9-hour night (a 23- or 25-hour Lden day). Each hour goes to the period of its local start.
    Lden = 10·log10((Td·10^(Ld/10) + Te·10^((Le+5)/10) + Tn·10^((Ln+10)/10))/24) with the
    nominal period lengths Td, Te, Tn (12, 4, 8 by default).
    """
    if not 0 <= day_start_hour < evening_start_hour < night_start_hour <= 24:
        raise ValueError("need 0 <= day_start_hour < evening_start_hour < night_start_hour <= 24")
    t = _int64_1d("hour_start_us", hour_start_us)
    lv = _float64_1d("leq_db", leq_db)
    _same_length(hour_start_us=t, leq_db=lv)
    if t.size > 1 and not (np.diff(t) > 0).all():  # sorted input needs no sort
        ordered = np.sort(t, kind="stable")
        if (ordered[1:] == ordered[:-1]).any():
            raise ValueError("hour_start_us has duplicate hours")
    local_us = t + _utc_offsets_us(t, ZoneInfo(tz))
    local_day = local_us // DAY_US
    local_hour = (local_us - local_day * DAY_US) // HOUR_US
    owning_day = local_day - (local_hour < day_start_hour)
    period = np.where(
        (local_hour >= day_start_hour) & (local_hour < evening_start_hour),
        0,
        np.where((local_hour >= evening_start_hour) & (local_hour < night_start_hour), 1, 2),
    ).astype(np.int64)
    days, day_idx = np.unique(owning_day, return_inverse=True)
    period_hours = np.array(
        [
            evening_start_hour - day_start_hour,
            night_start_hour - evening_start_hour,
            24 - night_start_hour + day_start_hour,
        ],
        dtype=np.float64,
    )
    penalty = np.array([0.0, evening_penalty_db, night_penalty_db])
    levels, hours, lden = K.lden_by_day(
        day_idx.reshape(-1).astype(np.int64), period, lv, int(days.size), period_hours, penalty
    )
    return LdenByDay(
        local_date=days.astype("datetime64[D]"),
        lday=np.ascontiguousarray(levels[:, 0]),
        levening=np.ascontiguousarray(levels[:, 1]),
        lnight=np.ascontiguousarray(levels[:, 2]),
        lden=lden,
        hours_day=np.ascontiguousarray(hours[:, 0]),
        hours_evening=np.ascontiguousarray(hours[:, 1]),
        hours_night=np.ascontiguousarray(hours[:, 2]),
    )
