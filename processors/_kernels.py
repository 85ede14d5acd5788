"""Private Numba kernels: pure array math, no I/O, no logging, no Python objects.

Every function here trusts its inputs (dtypes, shapes, index ranges): the checked public wrappers in
`processors.kernels` are the only callers. Timestamps are int64 epoch microseconds (UTC).

One module of about 1,100 lines, in sections by domain (as `processors.kernels` and the tests), on
purpose: Numba's on-disk cache (`cache=True`) tracks only a kernel's own source file, so kernels that
call each other must live in one file, or a change to a callee leaves its callers' cached code stale.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Reading quality flags, a uint8 bitmask. Defined once here (kernels need them as compile-time
# constants) and re-exported by `processors.kernels`.
FLAG_STUCK = 1  # part of a run of >= min_run identical consecutive values
FLAG_SPIKE = 2  # Hampel outlier (MAD-based)
FLAG_RESET = 4  # cumulative meter index dropped: counted from 0 since the reset
FLAG_ROLLOVER = 8  # cumulative meter index wrapped at its rollover value
FLAG_DUPLICATE = 16  # same series and timestamp as an earlier reading
FLAG_IMPLAUSIBLE = 32  # value outside the plausible range (e.g. a meter rising faster than it can)
FLAG_FIRST = 64  # first reading of its series: nothing to difference against
FLAG_MISSING = 128  # value is NaN

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min
_DB_TO_LN = math.log(10.0) / 10.0  # 10**(L/10) == exp(L * _DB_TO_LN)

# --------------------------------------------------------------------------------------------------
# Windowed partial aggregates
# --------------------------------------------------------------------------------------------------


@njit(cache=True)
def span_stats(series, ts_us, value):
    """(n_valid, series min, series max, ts min, ts max) over the non-NaN readings."""
    n_valid = 0
    smin = INT64_MAX
    smax = INT64_MIN
    tmin = INT64_MAX
    tmax = INT64_MIN
    for i in range(series.shape[0]):
        v = value[i]
        if v != v:
            continue
        n_valid += 1
        s = series[i]
        t = ts_us[i]
        smin = min(smin, s)
        smax = max(smax, s)
        tmin = min(tmin, t)
        tmax = max(tmax, t)
    return n_valid, smin, smax, tmin, tmax


@njit(cache=True, inline="always")
def _bucket_offset(d, bucket_us, inv_bucket):
    """floor(d / bucket_us) for 0 <= d < 2**50 · bucket_us, via a float reciprocal (int64 division
    costs ~4 ns a reading, a quarter of the whole kernel); the estimate is off by at most one."""
    q = np.int64(d * inv_bucket)
    r = d - q * bucket_us
    while r < 0:
        q -= 1
        r += bucket_us
    while r >= bucket_us:
        q += 1
        r -= bucket_us
    return q


@njit(cache=True)
def mark_present_buckets(ts_us, value, bucket_us, first_bucket_us, n_bucket_span):
    """Compact index for each bucket that holds a non-NaN reading, -1 elsewhere (ascending order)."""
    present = np.zeros(n_bucket_span, dtype=np.bool_)
    inv = 1.0 / bucket_us
    for i in range(ts_us.shape[0]):
        if value[i] != value[i]:
            continue
        present[_bucket_offset(ts_us[i] - first_bucket_us, bucket_us, inv)] = True
    compact = np.full(n_bucket_span, -1, dtype=np.int64)
    k = 0
    for b in range(n_bucket_span):
        if present[b]:
            compact[b] = k
            k += 1
    return compact, k


@njit(cache=True)
def _new_accumulators(n):
    """count, sum, sumsq, min, max, first_ts, first_value, last_ts, last_value, energy (one array each)."""
    return (
        np.empty(n, dtype=np.int64),
        np.empty(n),
        np.empty(n),
        np.empty(n),
        np.empty(n),
        np.empty(n, dtype=np.int64),
        np.empty(n),
        np.empty(n, dtype=np.int64),
        np.empty(n),
        np.empty(n),
    )


@njit(cache=True)
def _gather(acc, rows):
    count, total, sumsq, vmin, vmax, first_ts, first_v, last_ts, last_v, energy_sum = acc
    return (
        count[rows],
        total[rows],
        sumsq[rows],
        vmin[rows],
        vmax[rows],
        first_ts[rows],
        first_v[rows],
        last_ts[rows],
        last_v[rows],
        energy_sum[rows],
    )


@njit(cache=True)
def accumulate_dense(
    series,
    ts_us,
    value,
    bucket_us,
    first_bucket_us,
    series_min,
    n_series_span,
    n_cols,
    bucket_compact,
    use_compact,
    is_decibel,
    has_decibel,
    max_groups,
):
    """Group readings through a dense (series x bucket) -> group-id table; sort-free.

    Group rows are allocated on first touch (compact, cache friendly for time-ordered input); the
    output is emitted by scanning the id table, so it comes out sorted by (series, bucket).
    """
    n_cells = n_series_span * n_cols
    cell_group = np.full(n_cells, -1, dtype=np.int32)
    acc = _new_accumulators(max_groups)
    # Unpacked once: the hot loop calls no helper that takes arrays (NRT refcounting per call
    # would triple its cost), hence the update code written out here and in accumulate_sorted.
    count, total, sumsq, vmin, vmax, first_ts, first_v, last_ts, last_v, energy_sum = acc
    inv = 1.0 / bucket_us
    n_groups = 0
    for i in range(series.shape[0]):
        v = value[i]
        if v != v:
            continue
        s = series[i]
        t = ts_us[i]
        b = _bucket_offset(t - first_bucket_us, bucket_us, inv)
        if use_compact:
            b = bucket_compact[b]
        cell = (s - series_min) * n_cols + b
        energy = 0.0
        if has_decibel and is_decibel[s]:
            energy = math.exp(v * _DB_TO_LN)
        g = cell_group[cell]
        if g < 0:
            g = n_groups
            cell_group[cell] = g
            n_groups += 1
            count[g] = 1
            total[g] = v
            sumsq[g] = v * v
            vmin[g] = v
            vmax[g] = v
            first_ts[g] = t
            first_v[g] = v
            last_ts[g] = t
            last_v[g] = v
            energy_sum[g] = energy
            continue
        # Ties on timestamp keep the reading seen first, as the SQL upsert keeps the stored row.
        count[g] += 1
        total[g] += v
        sumsq[g] += v * v
        vmin[g] = min(vmin[g], v)
        vmax[g] = max(vmax[g], v)
        if t < first_ts[g]:
            first_ts[g] = t
            first_v[g] = v
        if t > last_ts[g]:
            last_ts[g] = t
            last_v[g] = v
        energy_sum[g] += energy
    # Emit in (series, bucket) order.
    bucket_of_col = np.empty(n_cols, dtype=np.int64)
    if use_compact:
        for b in range(bucket_compact.shape[0]):
            if bucket_compact[b] >= 0:
                bucket_of_col[bucket_compact[b]] = b
    else:
        for b in range(n_cols):
            bucket_of_col[b] = b
    out_series = np.empty(n_groups, dtype=np.int64)
    out_bucket = np.empty(n_groups, dtype=np.int64)
    rows = np.empty(n_groups, dtype=np.int64)
    k = 0
    for cell in range(n_cells):
        g = cell_group[cell]
        if g < 0:
            continue
        out_series[k] = cell // n_cols + series_min
        out_bucket[k] = first_bucket_us + bucket_of_col[cell % n_cols] * bucket_us
        rows[k] = g
        k += 1
    return out_series, out_bucket, _gather(acc, rows)


@njit(cache=True)
def accumulate_cells(
    series,
    ts_us,
    value,
    bucket_us,
    first_bucket_us,
    series_min,
    n_series_span,
    bucket_compact,
    use_compact,
    is_decibel,
    has_decibel,
    present,
    cell_ints,
    cell_floats,
):
    """Accumulate each reading straight into its (bucket, series) cell; returns the number of groups.

    Cells are bucket-major (cell = column · n_series_span + series offset), so readings in time
    order touch one compact band of cells (the current minutes of every series) and no group-id
    table or gather is needed. `present` (zeros) marks touched cells; the accumulators are
    array-of-structs, one cell's fields adjacent: `cell_ints[3·cell:]` count, first_ts, last_ts,
    `cell_floats[7·cell:]` sum, sumsq, min, max, first_value, last_value, energy_sum. Only touched
    cells are written (the caller allocates them with np.empty). Readings are added in input order,
    so every field equals the one-by-one reference bit for bit.
    """
    inv = 1.0 / bucket_us
    n_groups = 0
    for i in range(series.shape[0]):
        v = value[i]
        if v != v:
            continue
        s = series[i]
        t = ts_us[i]
        c = _bucket_offset(t - first_bucket_us, bucket_us, inv)
        if use_compact:
            c = bucket_compact[c]
        energy = 0.0
        if has_decibel and is_decibel[s]:
            energy = math.exp(v * _DB_TO_LN)
        cell = c * n_series_span + (s - series_min)
        gi = 3 * cell
        gf = 7 * cell
        if present[cell] == 0:
            present[cell] = 1
            n_groups += 1
            cell_ints[gi] = 1
            cell_ints[gi + 1] = t
            cell_ints[gi + 2] = t
            cell_floats[gf] = v
            cell_floats[gf + 1] = v * v
            cell_floats[gf + 2] = v
            cell_floats[gf + 3] = v
            cell_floats[gf + 4] = v
            cell_floats[gf + 5] = v
            cell_floats[gf + 6] = energy
            continue
        # Ties on timestamp keep the reading seen first, as the SQL upsert keeps the stored row.
        cell_ints[gi] += 1
        cell_floats[gf] += v
        cell_floats[gf + 1] += v * v
        cell_floats[gf + 2] = min(cell_floats[gf + 2], v)
        cell_floats[gf + 3] = max(cell_floats[gf + 3], v)
        if t < cell_ints[gi + 1]:
            cell_ints[gi + 1] = t
            cell_floats[gf + 4] = v
        if t > cell_ints[gi + 2]:
            cell_ints[gi + 2] = t
            cell_floats[gf + 5] = v
        cell_floats[gf + 6] += energy
    return n_groups


@njit(cache=True)
def emit_cells(
    present,
    cell_ints,
    cell_floats,
    n_series_span,
    n_cols,
    series_min,
    bucket_start_of_col,
    out_series,
    out_bucket,
    count,
    total,
    sumsq,
    vmin,
    vmax,
    first_ts,
    first_v,
    last_ts,
    last_v,
    energy_sum,
):
    """Write the touched cells of `accumulate_cells` in (series, bucket) order, each output cell once.

    The reads stride over the bucket-major cells, but consecutive series share cache lines, so each
    line is fetched once; the twelve outputs are written sequentially.
    """
    k = 0
    for s in range(n_series_span):
        for c in range(n_cols):
            cell = c * n_series_span + s
            if present[cell] == 0:
                continue
            gi = 3 * cell
            gf = 7 * cell
            out_series[k] = s + series_min
            out_bucket[k] = bucket_start_of_col[c]
            count[k] = cell_ints[gi]
            first_ts[k] = cell_ints[gi + 1]
            last_ts[k] = cell_ints[gi + 2]
            total[k] = cell_floats[gf]
            sumsq[k] = cell_floats[gf + 1]
            vmin[k] = cell_floats[gf + 2]
            vmax[k] = cell_floats[gf + 3]
            first_v[k] = cell_floats[gf + 4]
            last_v[k] = cell_floats[gf + 5]
            energy_sum[k] = cell_floats[gf + 6]
            k += 1


@njit(cache=True)
def accumulate_sorted(order, series, ts_us, value, bucket_us, is_decibel, has_decibel):
    """Group readings visited in `order` (stable-sorted by (series, bucket)); NaN values skipped."""
    n = order.shape[0]
    acc = _new_accumulators(n)
    count, total, sumsq, vmin, vmax, first_ts, first_v, last_ts, last_v, energy_sum = acc
    out_series = np.empty(n, dtype=np.int64)
    out_bucket = np.empty(n, dtype=np.int64)
    g = -1
    for k in range(n):
        i = order[k]
        v = value[i]
        if v != v:
            continue
        s = series[i]
        t = ts_us[i]
        b = (t // bucket_us) * bucket_us
        energy = 0.0
        if has_decibel and is_decibel[s]:
            energy = math.exp(v * _DB_TO_LN)
        if g < 0 or s != out_series[g] or b != out_bucket[g]:
            g += 1
            out_series[g] = s
            out_bucket[g] = b
            count[g] = 1
            total[g] = v
            sumsq[g] = v * v
            vmin[g] = v
            vmax[g] = v
            first_ts[g] = t
            first_v[g] = v
            last_ts[g] = t
            last_v[g] = v
            energy_sum[g] = energy
            continue
        # Ties on timestamp keep the reading seen first, as the SQL upsert keeps the stored row.
        count[g] += 1
        total[g] += v
        sumsq[g] += v * v
        vmin[g] = min(vmin[g], v)
        vmax[g] = max(vmax[g], v)
        if t < first_ts[g]:
            first_ts[g] = t
            first_v[g] = v
        if t > last_ts[g]:
            last_ts[g] = t
            last_v[g] = v
        energy_sum[g] += energy
    rows = np.arange(g + 1)
    return out_series[: g + 1].copy(), out_bucket[: g + 1].copy(), _gather(acc, rows)


@njit(cache=True)
def merge_sorted_partials(order, series, bucket, acc):
    """Merge partial rows visited in `order` (stable by (series, bucket)) exactly like the SQL upsert."""
    count, total, sumsq, vmin, vmax, first_ts, first_v, last_ts, last_v, energy_sum = acc
    n = order.shape[0]
    out = _new_accumulators(n)
    o_count, o_total, o_sumsq, o_min, o_max, o_first_ts, o_first_v, o_last_ts, o_last_v, o_energy = out
    out_series = np.empty(n, dtype=np.int64)
    out_bucket = np.empty(n, dtype=np.int64)
    g = -1
    for k in range(n):
        r = order[k]
        if g < 0 or series[r] != out_series[g] or bucket[r] != out_bucket[g]:
            g += 1
            out_series[g] = series[r]
            out_bucket[g] = bucket[r]
            o_count[g] = count[r]
            o_total[g] = total[r]
            o_sumsq[g] = sumsq[r]
            o_min[g] = vmin[r]
            o_max[g] = vmax[r]
            o_first_ts[g] = first_ts[r]
            o_first_v[g] = first_v[r]
            o_last_ts[g] = last_ts[r]
            o_last_v[g] = last_v[r]
            o_energy[g] = energy_sum[r]
            continue
        o_count[g] += count[r]
        o_total[g] += total[r]
        o_sumsq[g] += sumsq[r]
        o_min[g] = min(o_min[g], vmin[r])
        o_max[g] = max(o_max[g], vmax[r])
        if first_ts[r] < o_first_ts[g]:
            o_first_ts[g] = first_ts[r]
            o_first_v[g] = first_v[r]
        if last_ts[r] > o_last_ts[g]:
            o_last_ts[g] = last_ts[r]
            o_last_v[g] = last_v[r]
        o_energy[g] += energy_sum[r]
    rows = np.arange(g + 1)
    return out_series[: g + 1].copy(), out_bucket[: g + 1].copy(), _gather(out, rows)


# --------------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------------


@njit(cache=True)
def leq_energy_average(levels_db):
    """10·log10(mean(10^(L/10))) over non-NaN levels, shifted by the maximum so it never overflows."""
    lmax = -np.inf
    n = 0
    for x in levels_db:
        if x == x:
            n += 1
            if x > lmax:
                lmax = x
    if n == 0:
        return np.nan
    if lmax == np.inf or lmax == -np.inf:
        return lmax
    acc = 0.0
    for x in levels_db:
        if x == x:
            acc += math.exp((x - lmax) * _DB_TO_LN)
    return lmax + 10.0 * math.log10(acc / n)


@njit(cache=True)
def leq_energy_average_by_group(group_idx, levels_db, n_groups):
    """Per-group energy average (NaN for groups without a level); same shift as `leq_energy_average`."""
    lmax = np.full(n_groups, -np.inf)
    count = np.zeros(n_groups, dtype=np.int64)
    for i in range(group_idx.shape[0]):
        x = levels_db[i]
        if x == x:
            g = group_idx[i]
            count[g] += 1
            if x > lmax[g]:
                lmax[g] = x
    acc = np.zeros(n_groups)
    for i in range(group_idx.shape[0]):
        x = levels_db[i]
        g = group_idx[i]
        if x == x and lmax[g] != np.inf and lmax[g] != -np.inf:
            acc[g] += math.exp((x - lmax[g]) * _DB_TO_LN)
    out = np.empty(n_groups)
    for g in range(n_groups):
        if count[g] == 0:
            out[g] = np.nan
        elif lmax[g] == np.inf or lmax[g] == -np.inf:
            out[g] = lmax[g]
        else:
            out[g] = lmax[g] + 10.0 * math.log10(acc[g] / count[g])
    return out


@njit(cache=True)
def lden_by_day(day_idx, period, leq_db, n_days, period_hours, penalty_db):
    """Per local day: energy average per period (0 day, 1 evening, 2 night), hours present, Lden.

    Lden weights each period by its nominal length (`period_hours`), not by the hours present, so
    a 25-hour day's 9-hour night is still an energy average weighted 8/24.
    """
    energy = np.zeros((n_days, 3))
    hours = np.zeros((n_days, 3), dtype=np.int64)
    for i in range(day_idx.shape[0]):
        x = leq_db[i]
        if x == x:
            d = day_idx[i]
            p = period[i]
            energy[d, p] += math.exp(x * _DB_TO_LN)
            hours[d, p] += 1
    levels = np.full((n_days, 3), np.nan)
    lden = np.full(n_days, np.nan)
    total_hours = period_hours[0] + period_hours[1] + period_hours[2]
    for d in range(n_days):
        complete = True
        acc = 0.0
        for p in range(3):
            if hours[d, p] > 0:
                levels[d, p] = 10.0 * math.log10(energy[d, p] / hours[d, p])
                acc += period_hours[p] * math.exp((levels[d, p] + penalty_db[p]) * _DB_TO_LN)
            else:
                complete = False
        if complete:
            lden[d] = 10.0 * math.log10(acc / total_hours)
    return levels, hours, lden


# --------------------------------------------------------------------------------------------------
# Air quality
# --------------------------------------------------------------------------------------------------


@njit(cache=True)
def epa_subindex_from_table(conc, quanta_per_unit, bp_lo_q, bp_hi_q, idx_lo, idx_hi, cap):
    """EPA sub-index: truncate to the pollutant's precision, interpolate within the breakpoint row.

    Concentrations are in the table's unit; breakpoints are given in truncation quanta (integers)
    so a truncated value is compared exactly. Above the top row the index is `cap`; negative or
    NaN concentrations give NaN. The result is rounded half up to an integer, as EPA reports it.
    """
    n_rows = bp_lo_q.shape[0]
    out = np.empty(conc.shape[0])
    for i in range(conc.shape[0]):
        c = conc[i]
        if c != c or c < 0.0:
            out[i] = np.nan
            continue
        # 1e-6 quantum guards against 0.07 * 1000 == 69.99999999999999 style losses.
        q = math.floor(c * quanta_per_unit + 1e-6)
        if q > bp_hi_q[n_rows - 1]:
            out[i] = cap
            continue
        r = 0
        while r < n_rows - 1 and q > bp_hi_q[r]:
            r += 1
        lo = bp_lo_q[r]
        hi = bp_hi_q[r]
        value = (idx_hi[r] - idx_lo[r]) / (hi - lo) * (q - lo) + idx_lo[r]
        out[i] = math.floor(value + 0.5)
    return out


@njit(cache=True)
def band_from_upper_bounds(conc, upper_bounds):
    """Band 1 + number of band upper bounds the value exceeds (bound inclusive); 0 for NaN/negative."""
    out = np.zeros(conc.shape[0], dtype=np.int8)
    for i in range(conc.shape[0]):
        c = conc[i]
        if c != c or c < 0.0:
            continue
        band = 1
        for ub in upper_bounds:
            if c > ub:
                band += 1
        out[i] = band
    return out


@njit(cache=True)
def rolling_mean_sorted(ts_us, values, window_us, min_valid):
    """Trailing mean over readings with ts in (t - window, t]; NaN when fewer than min_valid valid."""
    n = ts_us.shape[0]
    out = np.full(n, np.nan)
    left = 0
    for i in range(n):
        t = ts_us[i]
        while ts_us[left] <= t - window_us:
            left += 1
        acc = 0.0
        cnt = 0
        for j in range(left, i + 1):
            x = values[j]
            if x == x:
                acc += x
                cnt += 1
        if cnt >= min_valid and cnt > 0:
            out[i] = acc / cnt
    return out


@njit(cache=True)
def group_means(group_idx, values, n_groups, min_valid):
    """Per-group arithmetic mean of non-NaN values; NaN below min_valid. Also the valid counts."""
    acc = np.zeros(n_groups)
    cnt = np.zeros(n_groups, dtype=np.int64)
    for i in range(group_idx.shape[0]):
        x = values[i]
        if x == x:
            acc[group_idx[i]] += x
            cnt[group_idx[i]] += 1
    out = np.full(n_groups, np.nan)
    for g in range(n_groups):
        if cnt[g] >= min_valid and cnt[g] > 0:
            out[g] = acc[g] / cnt[g]
    return out, cnt


# --------------------------------------------------------------------------------------------------
# Ordering by (series, time)
# --------------------------------------------------------------------------------------------------


@njit(cache=True)
def series_time_order(series, ts_us, series_min, n_series_span):
    """Row order by (series, ts), ties in input order: np.lexsort((ts, series)) in O(n) for the
    usual case (counting sort on the series, then a stable sort only of segments not yet in order)."""
    n = series.shape[0]
    start = np.zeros(n_series_span + 1, dtype=np.int64)
    for i in range(n):
        start[series[i] - series_min + 1] += 1
    for k in range(n_series_span):
        start[k + 1] += start[k]
    fill = start[:-1].copy()
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        k = series[i] - series_min
        order[fill[k]] = i
        fill[k] += 1
    longest = 0
    for k in range(n_series_span):
        longest = max(longest, start[k + 1] - start[k])
    seg_ts = np.empty(longest, dtype=np.int64)
    seg_rows = np.empty(longest, dtype=np.int64)
    for k in range(n_series_span):
        a = start[k]
        m = start[k + 1] - a
        for j in range(m):
            seg_rows[j] = order[a + j]
            seg_ts[j] = ts_us[seg_rows[j]]
        # Stable insertion sort: linear for data in arrival order with a few late readings; too many
        # moves (really shuffled input) -> stable argsort of what is left.
        moves = 0
        budget = 32 * m + 64
        for j in range(1, m):
            tx = seg_ts[j]
            rx = seg_rows[j]
            p = j - 1
            while p >= 0 and seg_ts[p] > tx:
                seg_ts[p + 1] = seg_ts[p]
                seg_rows[p + 1] = seg_rows[p]
                p -= 1
            moves += j - 1 - p
            seg_ts[p + 1] = tx
            seg_rows[p + 1] = rx
            if moves > budget:
                local = np.argsort(seg_ts[:m], kind="mergesort")
                rows = seg_rows[:m][local]
                seg_rows[:m] = rows
                break
        for j in range(m):
            order[a + j] = seg_rows[j]
    return order


# --------------------------------------------------------------------------------------------------
# Meters
# --------------------------------------------------------------------------------------------------


@njit(cache=True)
def meter_steps_sorted(
    order,
    series,
    ts_us,
    value,
    rollover_at,
    max_rate_per_us,
    tolerance,
    has_ref,
    ref_t,
    ref_v,
    prev_v,
    has_pend,
    pend_t,
    pend_v,
):
    """Accepted consumption per reading of cumulative registers, visiting rows in (series, ts) order.

    Per-series parameters (`rollover_at`, `max_rate_per_us`: NaN when unknown; `tolerance` >= 0)
    and per-series state (reference reading: the last accepted time and the register's high-water
    value; the previous reading that was not a rejected rise; pending: a rejected rise waiting for
    confirmation) are indexed by series. The state arrays are updated in place so a caller can
    continue with the next batch. A step ending at a reading is: accepted (rise above the high-water
    value within max_rate * dt + tolerance), noise (a reading below the high-water value but not
    more than the tolerance below the previous reading: 0, the reference keeps its value, so
    jitter neither adds up nor drifts into a reset), a rollover (larger fall consistent with a wrap
    at rollover_at), a reset (other fall: counted from 0 when plausible, else a re-base whose
    interval is excluded), or a rejected rise (FLAG_IMPLAUSIBLE; confirmed by the next reading it is
    a re-base, FLAG_RESET, and the time from the reference to the rejected reading is excluded).
    """
    n = order.shape[0]
    consumption = np.full(n, np.nan)
    covered = np.zeros(n, dtype=np.int64)
    excluded = np.zeros(n, dtype=np.int64)
    flags = np.zeros(n, dtype=np.uint8)
    noise = np.zeros(n, dtype=np.bool_)
    for k in range(n):
        i = order[k]
        s = series[i]
        t = ts_us[i]
        v = value[i]
        if v != v:
            flags[i] = FLAG_MISSING
            continue
        if not has_ref[s]:
            flags[i] = FLAG_FIRST
            has_ref[s] = True
            ref_t[s] = t
            ref_v[s] = v
            prev_v[s] = v
            has_pend[s] = False
            continue
        rate = max_rate_per_us[s]
        tol = tolerance[s]
        dt = t - ref_t[s]
        allowed = rate * dt + tol if rate == rate else np.inf
        d = v - ref_v[s]
        if d <= allowed and (d >= -tol or v >= prev_v[s] - tol):
            prev_v[s] = v
            if d > 0.0:
                consumption[i] = d
                ref_v[s] = v
            else:
                consumption[i] = 0.0
                noise[i] = d < 0.0
            covered[i] = dt
            ref_t[s] = t
            has_pend[s] = False
            continue
        if d > 0.0:
            if has_pend[s]:
                dp = v - pend_v[s]
                dtp = t - pend_t[s]
                if dp >= -tol and (rate != rate or dp <= rate * dtp + tol):
                    consumption[i] = max(dp, 0.0)
                    covered[i] = dtp
                    excluded[i] = pend_t[s] - ref_t[s]
                    flags[i] = FLAG_RESET
                    ref_t[s] = t
                    ref_v[s] = max(v, pend_v[s])
                    prev_v[s] = v
                    has_pend[s] = False
                    continue
            flags[i] = FLAG_IMPLAUSIBLE
            has_pend[s] = True
            pend_t[s] = t
            pend_v[s] = v
            continue
        r = rollover_at[s]
        wrapped = r - ref_v[s] + v if r == r and ref_v[s] <= r and v >= 0.0 else np.nan
        if wrapped == wrapped and (wrapped <= allowed if rate == rate else wrapped < 0.5 * r):
            consumption[i] = wrapped
            covered[i] = dt
            flags[i] = FLAG_ROLLOVER
        elif 0.0 <= v <= allowed:
            consumption[i] = v
            covered[i] = dt
            flags[i] = FLAG_RESET
        else:
            excluded[i] = dt
            flags[i] = FLAG_RESET | FLAG_IMPLAUSIBLE
        ref_t[s] = t
        ref_v[s] = v
        prev_v[s] = v
        has_pend[s] = False
    return consumption, covered, excluded, flags, noise


# --------------------------------------------------------------------------------------------------
# Traffic
# --------------------------------------------------------------------------------------------------


@njit(cache=True)
def _weighted_quantile_inplace(x, w, lo, hi, q):
    """Smallest x[lo:hi] whose cumulative weight share reaches q (permutes x and w in that range).

    Quickselect with a three-way partition, O(m) expected; same comparison as numpy's weighted
    'inverted_cdf' (cumulative weight / total >= q), exact for integer weights.
    """
    total = 0.0
    for j in range(lo, hi):
        total += w[j]
    before = 0.0
    while hi - lo > 16:
        a = x[lo]
        b = x[(lo + hi) // 2]
        c = x[hi - 1]
        pivot = max(min(a, b), min(max(a, b), c))
        lt = lo
        i = lo
        gt = hi
        while i < gt:
            if x[i] < pivot:
                x[i], x[lt] = x[lt], x[i]
                w[i], w[lt] = w[lt], w[i]
                lt += 1
                i += 1
            elif x[i] > pivot:
                gt -= 1
                x[i], x[gt] = x[gt], x[i]
                w[i], w[gt] = w[gt], w[i]
            else:
                i += 1
        w_less = 0.0
        for j in range(lo, lt):
            w_less += w[j]
        w_equal = 0.0
        for j in range(lt, gt):
            w_equal += w[j]
        if (before + w_less) / total >= q:
            hi = lt
        elif (before + w_less + w_equal) / total >= q:
            return pivot
        else:
            before += w_less + w_equal
            lo = gt
    for k in range(lo + 1, hi):
        xk = x[k]
        wk = w[k]
        j = k - 1
        while j >= lo and x[j] > xk:
            x[j + 1] = x[j]
            w[j + 1] = w[j]
            j -= 1
        x[j + 1] = xk
        w[j + 1] = wk
    cum = before
    for j in range(lo, hi):
        cum += w[j]
        if cum / total >= q:
            return x[j]
    return x[hi - 1]


@njit(cache=True)
def traffic_by_group(group_idx, counts, speeds, n_groups, has_counts, has_speeds, quantile):
    """Flow (sum of counts, or rows), count-weighted mean speed, weighted nearest-rank speed quantile,
    and the count-weighted harmonic mean speed (the speed of the mean travel time; speeds <= 0 skip).

    The quantile is the smallest speed whose cumulative weight share reaches `quantile`
    (numpy's 'inverted_cdf'; with integer counts the same as nearest-rank over single vehicles).
    """
    n = group_idx.shape[0]
    flow = np.zeros(n_groups)
    wsum = np.zeros(n_groups)
    wspeed = np.zeros(n_groups)
    wmoving = np.zeros(n_groups)
    wpace = np.zeros(n_groups)
    n_speed = np.zeros(n_groups + 1, dtype=np.int64)
    for i in range(n):
        g = group_idx[i]
        w = counts[i] if has_counts else 1.0
        if w == w:
            flow[g] += w
        if has_speeds:
            sp = speeds[i]
            if sp == sp and w == w and w > 0.0:
                wsum[g] += w
                wspeed[g] += w * sp
                n_speed[g + 1] += 1
                if sp > 0.0:
                    wmoving[g] += w
                    wpace[g] += w / sp
    mean_speed = np.full(n_groups, np.nan)
    quant = np.full(n_groups, np.nan)
    harmonic = np.full(n_groups, np.nan)
    if not has_speeds:
        return flow, mean_speed, quant, harmonic
    for g in range(n_groups):
        if wsum[g] > 0.0:
            mean_speed[g] = wspeed[g] / wsum[g]
        if wmoving[g] > 0.0:
            harmonic[g] = wmoving[g] / wpace[g]
        n_speed[g + 1] += n_speed[g]
    # Counting sort of the speed rows by group, then a sort inside each group.
    fill = n_speed[:-1].copy()
    sp_sorted = np.empty(n_speed[n_groups])
    w_sorted = np.empty(n_speed[n_groups])
    for i in range(n):
        g = group_idx[i]
        w = counts[i] if has_counts else 1.0
        sp = speeds[i]
        if sp == sp and w == w and w > 0.0:
            sp_sorted[fill[g]] = sp
            w_sorted[fill[g]] = w
            fill[g] += 1
    for g in range(n_groups):
        if n_speed[g + 1] > n_speed[g]:
            quant[g] = _weighted_quantile_inplace(sp_sorted, w_sorted, n_speed[g], n_speed[g + 1], quantile)
    return flow, mean_speed, quant, harmonic


# --------------------------------------------------------------------------------------------------
# Data quality
# --------------------------------------------------------------------------------------------------


@njit(cache=True)
def stuck_runs_sorted(order, series, value, min_run):
    """FLAG_STUCK on every row of a run of >= min_run equal consecutive values (NaN breaks runs)."""
    n = order.shape[0]
    flags = np.zeros(n, dtype=np.uint8)
    start = 0
    for k in range(1, n + 1):
        if k < n:
            i = order[k]
            j = order[k - 1]
            v = value[i]
            if series[i] == series[j] and v == value[j]:
                continue
        # run is order[start:k]
        if k - start >= min_run and value[order[start]] == value[order[start]]:
            for r in range(start, k):
                flags[order[r]] = FLAG_STUCK
        start = k
    return flags


@njit(cache=True)
def _median_and_mad_of_sorted(win, cnt):
    """Median and MAD of the sorted win[:cnt]: the deviations either side of the median are two
    sorted runs, so their median comes from a short merge instead of a sort."""
    h = cnt // 2
    med = win[h] if cnt % 2 == 1 else 0.5 * (win[h - 1] + win[h])
    r = 0
    while r < cnt and win[r] < med:
        r += 1
    left = r - 1
    prev = 0.0
    cur = 0.0
    for _ in range(h + 1):
        if left < 0 or (r < cnt and win[r] - med <= med - win[left]):
            d = win[r] - med
            r += 1
        else:
            d = med - win[left]
            left -= 1
        prev = cur
        cur = d
    mad = cur if cnt % 2 == 1 else 0.5 * (prev + cur)
    return med, mad


@njit(cache=True)
def hampel_sorted(order, series, value, half_window, n_sigmas):
    """FLAG_SPIKE where |x - median| > n_sigmas·1.4826·MAD over the centred window of its series.

    The window holds up to half_window readings each side within the same series (truncated at
    the series ends); NaNs are ignored; fewer than 3 valid values in a window: no flag. The window
    is kept sorted while it slides (one removal, one insertion per step).
    """
    n = order.shape[0]
    flags = np.zeros(n, dtype=np.uint8)
    win = np.empty(2 * half_window + 1)
    seg = np.empty(n)
    seg_start = 0
    for k in range(n + 1):
        if k < n and (k == 0 or series[order[k]] == series[order[k - 1]]):
            continue
        m = k - seg_start  # series segment order[seg_start:k], values gathered once
        for j in range(m):
            seg[j] = value[order[seg_start + j]]
        cnt = 0
        for c in range(-half_window - 1, m):
            leaving = c - half_window - 1
            if leaving >= 0 and seg[leaving] == seg[leaving]:
                y = seg[leaving]
                p = 0
                while win[p] != y:
                    p += 1
                for j in range(p, cnt - 1):
                    win[j] = win[j + 1]
                cnt -= 1
            entering = c + half_window
            if 0 <= entering < m and seg[entering] == seg[entering]:
                y = seg[entering]
                p = cnt - 1
                while p >= 0 and win[p] > y:
                    win[p + 1] = win[p]
                    p -= 1
                win[p + 1] = y
                cnt += 1
            if c < 0:
                continue
            x = seg[c]
            if x != x or cnt < 3:
                continue
            med, mad = _median_and_mad_of_sorted(win, cnt)
            if abs(x - med) > n_sigmas * 1.4826 * mad:
                flags[order[seg_start + c]] = FLAG_SPIKE
        seg_start = k
    return flags


# --------------------------------------------------------------------------------------------------
# Threshold alerts
# --------------------------------------------------------------------------------------------------

ALERT_OPENED = 1  # 0: no event on that row
ALERT_UPDATED = 2
ALERT_CLOSED = 3


@njit(cache=True)
def threshold_events_sorted(order, series, value, threshold, hysteresis, is_open, peak):
    """Per row (in `order`, sorted by series then time): opened / updated (a new peak, by at least
    `hysteresis` when that is > 0) / closed, for an alert that opens above `threshold` and closes
    below `threshold - hysteresis`. `is_open` and `peak` (per series) are the state before the first
    row and are updated in place; NaN rows are skipped."""
    n = order.shape[0]
    events = np.zeros(n, dtype=np.int8)
    for k in range(n):
        i = order[k]
        v = value[i]
        if v != v:
            continue
        s = series[i]
        if is_open[s]:
            if v < threshold - hysteresis:
                events[i] = ALERT_CLOSED
                is_open[s] = 0
            elif v > peak[s] and (hysteresis <= 0.0 or v >= peak[s] + hysteresis):
                events[i] = ALERT_UPDATED
                peak[s] = v
        elif v > threshold:
            events[i] = ALERT_OPENED
            is_open[s] = 1
            peak[s] = v
    return events


@njit(cache=True)
def rolling_bucket_means_sorted(order, series, bucket_us, count, total, width_us, window_us, min_buckets):
    """Per bucket row (in `order`, sorted by series then bucket): the mean total/count over the
    buckets of its series that start within `window_us` before its end (bucket + width), NaN when
    fewer than `min_buckets` of them hold readings."""
    n = order.shape[0]
    out = np.full(n, np.nan)
    lo = 0
    sum_total = 0.0
    sum_count = 0.0
    filled = 0
    for k in range(n):
        i = order[k]
        if k == 0 or series[i] != series[order[k - 1]]:
            lo = k
            sum_total = 0.0
            sum_count = 0.0
            filled = 0
        sum_total += total[i]
        sum_count += count[i]
        if count[i] > 0:
            filled += 1
        start = bucket_us[i] + width_us - window_us
        while bucket_us[order[lo]] < start:
            j = order[lo]
            sum_total -= total[j]
            sum_count -= count[j]
            if count[j] > 0:
                filled -= 1
            lo += 1
        if filled >= min_buckets and sum_count > 0:
            out[i] = sum_total / sum_count
    return out
