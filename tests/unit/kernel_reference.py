"""Plain NumPy / pure-Python reference implementations of the kernels in `processors.kernels`.

Written for obviousness, not speed: loops and dicts, no shared code with the kernels. Each test
compares a kernel with its reference on random data and edge cases.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

FLAG_STUCK, FLAG_SPIKE, FLAG_RESET, FLAG_ROLLOVER = 1, 2, 4, 8
FLAG_DUPLICATE, FLAG_IMPLAUSIBLE, FLAG_FIRST, FLAG_MISSING = 16, 32, 64, 128


def partial_aggregates_ref(series, ts_us, value, bucket_us, decibel_mask=None) -> dict[tuple[int, int], dict]:
    """{(series, bucket_start): {count, sum, ...}} in input order; ties keep the first seen."""
    groups: dict[tuple[int, int], dict] = {}
    for s, t, v in zip(series.tolist(), ts_us.tolist(), value.tolist(), strict=True):
        if math.isnan(v):
            continue
        key = (s, (t // bucket_us) * bucket_us)
        e = 10.0 ** (v / 10.0) if decibel_mask is not None and decibel_mask[s] else 0.0
        g = groups.get(key)
        if g is None:
            groups[key] = {
                "count": 1,
                "sum": v,
                "sumsq": v * v,
                "min": v,
                "max": v,
                "first_ts_us": t,
                "first_value": v,
                "last_ts_us": t,
                "last_value": v,
                "energy_sum": e,
            }
            continue
        g["count"] += 1
        g["sum"] += v
        g["sumsq"] += v * v
        g["min"] = min(g["min"], v)
        g["max"] = max(g["max"], v)
        if t < g["first_ts_us"]:
            g["first_ts_us"], g["first_value"] = t, v
        if t > g["last_ts_us"]:
            g["last_ts_us"], g["last_value"] = t, v
        g["energy_sum"] += e
    return dict(sorted(groups.items()))


def leq_ref(levels) -> float:
    x = np.asarray(levels, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan
    return float(10.0 * np.log10(np.mean(10.0 ** (x / 10.0))))


def leq_by_group_ref(group_idx, levels, n_groups) -> np.ndarray:
    return np.array([leq_ref(np.asarray(levels)[np.asarray(group_idx) == g]) for g in range(n_groups)])


def lden_ref(hour_start_us, leq_db, tz: str, day=7, evening=19, night=23) -> dict:
    """{local date: (Ld, Le, Ln, Lden, hours_d, hours_e, hours_n)} via datetime arithmetic."""
    zone = ZoneInfo(tz)
    by_day: dict = defaultdict(lambda: ([], [], []))
    for t, v in zip(np.asarray(hour_start_us).tolist(), np.asarray(leq_db).tolist(), strict=True):
        local = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=t)).astimezone(zone)
        owner = local.date() if local.hour >= day else local.date() - timedelta(days=1)
        p = 0 if day <= local.hour < evening else (1 if evening <= local.hour < night else 2)
        if not math.isnan(v):
            by_day[owner][p].append(v)
        else:
            by_day[owner]
    out = {}
    lengths = (evening - day, night - evening, 24 - night + day)
    for d, periods in sorted(by_day.items()):
        levels = [leq_ref(p) if p else math.nan for p in periods]
        if all(p for p in periods):
            lden = 10 * math.log10(
                sum(
                    n * 10 ** ((lv + pen) / 10)
                    for n, lv, pen in zip(lengths, levels, (0, 5, 10), strict=True)
                )
                / 24
            )
        else:
            lden = math.nan
        out[d] = (*levels, lden, *(len(p) for p in periods))
    return out


EPA_ROWS = {  # (truncation step, [(BPlo, BPhi, Ilo, Ihi)]) in table units, from KPI_REFERENCE.md
    "pm25": (
        0.1,
        [
            (0.0, 9.0, 0, 50),
            (9.1, 35.4, 51, 100),
            (35.5, 55.4, 101, 150),
            (55.5, 125.4, 151, 200),
            (125.5, 225.4, 201, 300),
            (225.5, 325.4, 301, 500),
        ],
    ),
    "pm10": (
        1,
        [
            (0, 54, 0, 50),
            (55, 154, 51, 100),
            (155, 254, 101, 150),
            (255, 354, 151, 200),
            (355, 424, 201, 300),
            (425, 604, 301, 500),
        ],
    ),
    "o3": (
        0.001,
        [
            (0.000, 0.054, 0, 50),
            (0.055, 0.070, 51, 100),
            (0.071, 0.085, 101, 150),
            (0.086, 0.105, 151, 200),
            (0.106, 0.200, 201, 300),
        ],
    ),
    "co": (
        0.1,
        [
            (0.0, 4.4, 0, 50),
            (4.5, 9.4, 51, 100),
            (9.5, 12.4, 101, 150),
            (12.5, 15.4, 151, 200),
            (15.5, 30.4, 201, 300),
            (30.5, 50.4, 301, 500),
        ],
    ),
    "so2": (
        1,
        [
            (0, 35, 0, 50),
            (36, 75, 51, 100),
            (76, 185, 101, 150),
            (186, 304, 151, 200),
            (305, 604, 201, 300),
            (605, 1004, 301, 500),
        ],
    ),
    "no2": (
        1,
        [
            (0, 53, 0, 50),
            (54, 100, 51, 100),
            (101, 360, 101, 150),
            (361, 649, 151, 200),
            (650, 1249, 201, 300),
            (1250, 2049, 301, 500),
        ],
    ),
}
EPA_FROM_CANONICAL = {  # U4SSC factors at 20 °C; CO comes in mg/m³, the others in µg/m³
    "pm25": lambda c: c,
    "pm10": lambda c: c,
    "o3": lambda c: c / 1.96 / 1000,
    "co": lambda c: c / 1.145,
    "so2": lambda c: c / 2.62,
    "no2": lambda c: c / 1.9,
}


def epa_subindex_ref(pollutant: str, conc_canonical: float) -> float:
    """Decimal arithmetic on the truncated value, as a person would do it from the table."""
    from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

    if math.isnan(conc_canonical) or conc_canonical < 0:
        return math.nan
    step, rows = EPA_ROWS[pollutant]
    c = EPA_FROM_CANONICAL[pollutant](float(conc_canonical))
    q = Decimal(str(step))
    ct = (Decimal(c) + q * Decimal("1e-6")).quantize(q, rounding=ROUND_FLOOR)
    if ct > Decimal(str(rows[-1][1])):
        return float(rows[-1][3])
    for lo, hi, ilo, ihi in rows:
        lo_d, hi_d = Decimal(str(lo)), Decimal(str(hi))
        if ct <= hi_d:
            idx = (Decimal(ihi - ilo) / (hi_d - lo_d)) * (ct - lo_d) + ilo
            return float(idx.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    raise AssertionError("unreachable")


EU_BANDS = {
    "pm25": (10, 20, 25, 50),
    "pm10": (20, 35, 50, 100),
    "no2": (40, 100, 200, 400),
    "o3": (80, 120, 180, 240),
    "so2": (100, 200, 350, 500),
}


def european_band_ref(pollutant: str, c: float) -> int:
    if math.isnan(c) or c < 0:
        return 0
    for band, upper in enumerate(EU_BANDS[pollutant], start=1):
        if c <= upper:
            return band
    return 5


def rolling_mean_ref(hour_start_us, values, window_hours, min_valid) -> np.ndarray:
    t = np.asarray(hour_start_us)
    v = np.asarray(values, dtype=float)
    out = np.full(t.size, np.nan)
    for i in range(t.size):
        inside = (t > t[i] - window_hours * 3_600_000_000) & (t <= t[i]) & ~np.isnan(v)
        if inside.sum() >= max(min_valid, 1):
            out[i] = v[inside].mean()
    return out


def daily_means_ref(day_idx, values, n_days, min_valid):
    d = np.asarray(day_idx)
    v = np.asarray(values, dtype=float)
    mean = np.full(n_days, np.nan)
    counts = np.zeros(n_days, dtype=np.int64)
    for k in range(n_days):
        x = v[(d == k) & ~np.isnan(v)]
        counts[k] = x.size
        if x.size >= max(min_valid, 1):
            mean[k] = x.mean()
    return mean, counts


def meter_steps_ref(series, ts_us, index_value, rollover_at, max_rate_per_h, tolerance):
    """Per row (consumption, covered_us, excluded_us, flags, noise), from an empty state."""
    n = len(series)
    cons = np.full(n, np.nan)
    covered = np.zeros(n, dtype=np.int64)
    excluded = np.zeros(n, dtype=np.int64)
    flags = np.zeros(n, dtype=np.uint8)
    noise = np.zeros(n, dtype=bool)
    rows = sorted(range(n), key=lambda i: (series[i], ts_us[i]))  # stable: ties keep input order
    ref: dict[int, tuple[int, float]] = {}  # last accepted time, high-water value
    prev: dict[int, float] = {}  # the previous reading that was not a rejected rise
    pending: dict[int, tuple[int, float]] = {}
    for i in rows:
        s, t, v = int(series[i]), int(ts_us[i]), float(index_value[i])
        if math.isnan(v):
            flags[i] = FLAG_MISSING
            continue
        if s not in ref:
            flags[i], ref[s], prev[s] = FLAG_FIRST, (t, v), v
            pending.pop(s, None)
            continue
        rt, rv = ref[s]
        tol, rate, roll = float(tolerance[s]), float(max_rate_per_h[s]), float(rollover_at[s])

        def allowed(dt_us, rate=rate, tol=tol):
            return math.inf if math.isnan(rate) else rate * dt_us / 3_600_000_000 + tol

        d = v - rv
        if d <= allowed(t - rt) and (d >= -tol or v >= prev[s] - tol):
            cons[i], covered[i], noise[i] = max(d, 0.0), t - rt, d < 0
            ref[s], prev[s] = (t, max(v, rv)), v
            pending.pop(s, None)
        elif d > 0:
            p = pending.get(s)
            if p is not None and -tol <= v - p[1] <= allowed(t - p[0]):
                cons[i], covered[i], excluded[i], flags[i] = (
                    max(v - p[1], 0.0),
                    t - p[0],
                    p[0] - rt,
                    FLAG_RESET,
                )
                ref[s], prev[s] = (t, max(v, p[1])), v
                del pending[s]
            else:
                flags[i], pending[s] = FLAG_IMPLAUSIBLE, (t, v)
        else:
            wrap = roll - rv + v if not math.isnan(roll) and rv <= roll and v >= 0 else None
            if wrap is not None and (wrap <= allowed(t - rt) if not math.isnan(rate) else wrap < roll / 2):
                cons[i], covered[i], flags[i] = wrap, t - rt, FLAG_ROLLOVER
            elif 0 <= v <= allowed(t - rt):
                cons[i], covered[i], flags[i] = v, t - rt, FLAG_RESET
            else:
                excluded[i], flags[i] = t - rt, FLAG_RESET | FLAG_IMPLAUSIBLE
            ref[s], prev[s] = (t, v), v
            pending.pop(s, None)
    return cons, covered, excluded, flags, noise


def traffic_ref(group_idx, counts, speeds, n_groups):
    g = np.asarray(group_idx)
    c = np.ones(g.size) if counts is None else np.asarray(counts, dtype=float)
    flow = np.array([np.nansum(c[g == k]) for k in range(n_groups)])
    mean = np.full(n_groups, np.nan)
    p85 = np.full(n_groups, np.nan)
    harmonic = np.full(n_groups, np.nan)
    if speeds is None:
        return flow, mean, p85, harmonic
    sp = np.asarray(speeds, dtype=float)
    for k in range(n_groups):
        m = (g == k) & ~np.isnan(sp) & ~np.isnan(c) & (c > 0)
        if m.any():
            mean[k] = np.sum(c[m] * sp[m]) / np.sum(c[m])
            p85[k] = np.percentile(sp[m], 85, weights=c[m], method="inverted_cdf")
        moving = m & (sp > 0)
        if moving.any():
            harmonic[k] = np.sum(c[moving]) / np.sum(c[moving] / sp[moving])
    return flow, mean, p85, harmonic


def stuck_ref(series, ts_us, value, min_run) -> np.ndarray:
    flags = np.zeros(len(series), dtype=np.uint8)
    rows = sorted(range(len(series)), key=lambda i: (series[i], ts_us[i], i))
    run: list[int] = []
    for i in [*rows, None]:
        if i is not None and run and series[i] == series[run[-1]] and value[i] == value[run[-1]]:
            run.append(i)
            continue
        if len(run) >= min_run and not math.isnan(value[run[0]]):
            flags[run] = FLAG_STUCK
        run = [] if i is None else [i]
    return flags


def hampel_ref(values, half_window, n_sigmas, series=None, ts_us=None) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    n = v.size
    s = np.zeros(n, dtype=int) if series is None else np.asarray(series)
    t = np.arange(n) if ts_us is None else np.asarray(ts_us)
    flags = np.zeros(n, dtype=np.uint8)
    for key in np.unique(s):
        rows = sorted(np.flatnonzero(s == key).tolist(), key=lambda i: (t[i], i))
        for pos, i in enumerate(rows):
            if np.isnan(v[i]):
                continue
            window = v[rows[max(0, pos - half_window) : pos + half_window + 1]]
            window = window[~np.isnan(window)]
            if window.size < 3:
                continue
            med = np.median(window)
            mad = np.median(np.abs(window - med))
            if abs(v[i] - med) > n_sigmas * 1.4826 * mad:
                flags[i] = FLAG_SPIKE
    return flags


def threshold_events_ref(series, ts_us, value, threshold, hysteresis, is_open=None, peak=None):
    """Per row 0/1 opened/2 updated/3 closed, walking each series in time order (stable)."""
    state = dict(enumerate(is_open)) if is_open is not None else defaultdict(int)
    top = dict(enumerate(peak)) if peak is not None else defaultdict(lambda: -math.inf)
    events = [0] * len(series)
    for i in sorted(range(len(series)), key=lambda i: (series[i], ts_us[i], i)):
        v, s = float(value[i]), int(series[i])
        if math.isnan(v):
            continue
        if state[s]:
            if v < threshold - hysteresis:
                events[i], state[s] = 3, 0
            elif v > top[s] and (hysteresis <= 0 or v >= top[s] + hysteresis):
                events[i], top[s] = 2, v
        elif v > threshold:
            events[i], state[s], top[s] = 1, 1, v
    return events


def rolling_bucket_means_ref(series, bucket_us, count, total, width_us, window_us, min_coverage):
    """Each bucket's window mean by brute force over all buckets of its series."""
    need = max(1, math.ceil(min_coverage * (window_us // width_us) - 1e-9))
    out = []
    for i in range(len(series)):
        end = bucket_us[i] + width_us
        inside = [
            j for j in range(len(series)) if series[j] == series[i] and end - window_us <= bucket_us[j] < end
        ]
        n = sum(count[j] for j in inside)
        filled = sum(1 for j in inside if count[j] > 0)
        out.append(sum(total[j] for j in inside) / n if filled >= need and n > 0 else math.nan)
    return out


def silences_ref(series, ts_us, gap_us, horizon_us):
    """(series, opened, closed or -1, last) for every gap longer than gap_us, in (series, time) order."""
    by: dict[int, list[int]] = defaultdict(list)
    for s, t in zip(series, ts_us, strict=True):
        by[int(s)].append(int(t))
    out = []
    for s in sorted(by):
        times = sorted(by[s])
        for a, b in zip(times, [*times[1:], None], strict=True):
            until = horizon_us if b is None else b
            if until - a > gap_us:
                out.append((s, a + gap_us, -1 if b is None else b, a))
    return out
