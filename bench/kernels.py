"""Kernel throughput against plain NumPy and pandas doing the same work, measured in the same run.

    .venv/bin/python -m bench.kernels [--readings 10000000] [--series 10000] [--runs 5]

Synthetic stream: every series reports every 10 s with jitter, in arrival (time) order, 2 % of
readings up to an hour late, 1 % NaN, 10 % of series in dB. Each figure is the median of
`--runs` timed runs after one warm-up run; readings/s = input rows / median seconds.
Writes bench/results/kernels.json (machine, date, figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd

from processors import kernels
from processors.kernels.noise import _utc_offsets_us

HOUR = 3_600_000_000
MINUTE = 60_000_000
DAY = 24 * HOUR
RESULTS = Path(__file__).resolve().parent / "results" / "kernels.json"


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def synthetic_stream(n: int, n_series: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rounds = np.arange(n, dtype=np.int64) // n_series
    series = np.arange(n, dtype=np.int64) % n_series
    ts = 1_750_000_000_000_000 + rounds * 10_000_000 + rng.integers(0, 10_000_000, n)
    late = rng.random(n) < 0.02
    ts[late] -= rng.integers(0, HOUR, int(late.sum()))
    value = rng.normal(60.0, 10.0, n)
    value[rng.random(n) < 0.01] = np.nan
    decibel = np.zeros(n_series, dtype=bool)
    decibel[::10] = True
    return {"series": series, "ts": ts, "value": value, "decibel": decibel}


# --------------------------------------------------------------------------------------------------
# Baselines: plain NumPy (vectorized, sort based) and pandas groupby, same outputs as the kernels
# --------------------------------------------------------------------------------------------------


def partial_numpy(s, t, v, bucket, decibel):
    ok = ~np.isnan(v)
    s, t, v = s[ok], t[ok], v[ok]
    b = t // bucket
    order = np.lexsort((t, b, s))
    s, b, t, v = s[order], b[order], t[order], v[order]
    start = np.flatnonzero(np.r_[True, (s[1:] != s[:-1]) | (b[1:] != b[:-1])])
    end = np.r_[start[1:], s.size] - 1
    energy = np.where(decibel[s], 10.0 ** (v / 10.0), 0.0)
    return (
        s[start], b[start] * bucket, np.diff(np.r_[start, s.size]), np.add.reduceat(v, start),
        np.add.reduceat(v * v, start), np.minimum.reduceat(v, start), np.maximum.reduceat(v, start),
        t[start], v[start], t[end], v[end], np.add.reduceat(energy, start),
    )  # fmt: skip


def partial_pandas(s, t, v, bucket, decibel):
    df = pd.DataFrame({"s": s, "t": t, "v": v}).dropna(subset=["v"]).reset_index(drop=True)
    df["b"] = df["t"] // bucket * bucket
    df["v2"] = df["v"] * df["v"]
    df["e"] = np.where(decibel[df["s"].to_numpy()], 10.0 ** (df["v"] / 10.0), 0.0)
    g = df.groupby(["s", "b"], sort=True)
    out = g.agg(
        count=("v", "count"), sum=("v", "sum"), sumsq=("v2", "sum"), min=("v", "min"), max=("v", "max"),
        energy=("e", "sum"), first_ts=("t", "min"), last_ts=("t", "max"),
    )  # fmt: skip
    out["first_value"] = df["v"].to_numpy()[g["t"].idxmin().to_numpy()]
    out["last_value"] = df["v"].to_numpy()[g["t"].idxmax().to_numpy()]
    return out


def leq_numpy(g, levels, n_groups):
    ok = ~np.isnan(levels)
    e = np.bincount(g[ok], weights=10.0 ** (levels[ok] / 10.0), minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 10.0 * np.log10(e / np.bincount(g[ok], minlength=n_groups))


def leq_pandas(g, levels, n_groups):
    e = pd.Series(10.0 ** (levels / 10.0)).groupby(g).mean()
    return (10.0 * np.log10(e)).reindex(range(n_groups))


def meters_numpy(s, t, idx):
    order = np.lexsort((idx, t, s))
    ss, tt, vv = s[order], t[order], idx[order]
    first = np.r_[True, ss[1:] != ss[:-1]]
    d = np.r_[np.nan, np.diff(vv)]
    dt = np.r_[0, np.diff(tt)]
    cons = np.where(d < 0, vv, d)
    cons[dt == 0] = 0.0
    cons[first] = np.nan
    dt[first] = 0
    out = np.empty_like(cons)
    out[order] = cons
    interval = np.empty_like(dt)
    interval[order] = dt
    return out, interval


def meters_pandas(s, t, idx):
    df = pd.DataFrame({"s": s, "t": t, "v": idx}).sort_values(["s", "t", "v"], kind="stable")
    g = df.groupby("s", sort=False)
    d = g["v"].diff()
    dt = g["t"].diff()
    cons = d.where(d >= 0, df["v"]).where(dt != 0, 0.0).where(dt.notna())
    return cons.sort_index(), dt.fillna(0).sort_index()


def traffic_numpy(g, c, sp, n_groups):
    flow = np.bincount(g, weights=c, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(g, weights=c * sp, minlength=n_groups) / flow
    order = np.lexsort((sp, g))
    gs, ws, ss = g[order], c[order], sp[order]
    cum = np.cumsum(ws)
    start = np.searchsorted(gs, np.arange(n_groups), side="left")
    before = np.r_[0.0, cum][start]
    target = before + 0.85 * flow
    pos = np.minimum(np.searchsorted(cum, target, side="left"), ss.size - 1)
    return flow, mean, ss[pos]


def traffic_pandas(g, c, sp, n_groups):
    df = pd.DataFrame({"g": g, "c": c, "sp": sp, "csp": c * sp})
    grp = df.groupby("g")
    out = grp.agg(flow=("c", "sum"), csp=("csp", "sum"))
    out["mean"] = out["csp"] / out["flow"]
    out["p85"] = grp["sp"].quantile(0.85, interpolation="higher")  # unweighted: pandas has no weights
    return out


def stuck_numpy(s, t, v, min_run):
    order = np.lexsort((t, s))
    ss, vv = s[order], v[order]
    same = (ss[1:] == ss[:-1]) & (vv[1:] == vv[:-1])
    run = np.cumsum(np.r_[True, ~same])
    flagged = np.bincount(run)[run] >= min_run
    out = np.zeros(s.size, dtype=np.uint8)
    out[order[flagged]] = 1
    return out


def stuck_pandas(s, t, v, min_run):
    df = pd.DataFrame({"s": s, "t": t, "v": v}).sort_values(["s", "t"], kind="stable")
    new_run = (df["s"] != df["s"].shift()) | (df["v"] != df["v"].shift())
    size = df.groupby(new_run.cumsum())["v"].transform("size")
    return (size >= min_run).sort_index()


def hampel_numpy(s, t, v, half_window, n_sigmas):
    # Interior windows only (same work per reading; series ends are not truncated here).
    order = np.lexsort((t, s))
    vv = v[order]
    w = 2 * half_window + 1
    flags = np.zeros(v.size, dtype=np.uint8)
    chunk = 1_000_000
    for a in range(0, vv.size - w + 1, chunk):
        win = np.lib.stride_tricks.sliding_window_view(vv[a : a + chunk + w - 1], w)
        med = np.nanmedian(win, axis=1)
        mad = np.nanmedian(np.abs(win - med[:, None]), axis=1)
        centre = win[:, half_window]
        flags[order[a + half_window : a + half_window + med.size]] = (
            np.abs(centre - med) > n_sigmas * 1.4826 * mad
        )
    return flags


def epa_numpy(conc):
    lo = np.array([0.0, 9.1, 35.5, 55.5, 125.5, 225.5])
    hi = np.array([9.0, 35.4, 55.4, 125.4, 225.4, 325.4])
    ilo = np.array([0, 51, 101, 151, 201, 301.0])
    ihi = np.array([50, 100, 150, 200, 300, 500.0])
    c = np.floor(conc * 10 + 1e-6) / 10
    r = np.minimum(np.searchsorted(hi, c, side="left"), 5)
    out = np.floor((ihi[r] - ilo[r]) / (hi[r] - lo[r]) * (c - lo[r]) + ilo[r] + 0.5)
    out[c > 325.4] = 500
    out[np.isnan(conc) | (conc < 0)] = np.nan
    return out


def rolling_numpy(t, v, window_hours, min_valid):
    ok = ~np.isnan(v)
    csum = np.r_[0.0, np.cumsum(np.where(ok, v, 0.0))]
    ccnt = np.r_[0, np.cumsum(ok)]
    left = np.searchsorted(t, t - window_hours * HOUR, side="right")
    right = np.arange(1, t.size + 1)
    cnt = ccnt[right] - ccnt[left]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt >= min_valid, (csum[right] - csum[left]) / cnt, np.nan)


def rolling_pandas(t, v, window_hours, min_valid):
    ser = pd.Series(v, index=pd.to_datetime(t, unit="us"))
    return ser.rolling(f"{window_hours}h", min_periods=min_valid).mean()


def lden_pandas(t, leq_db, tz):
    local = pd.to_datetime(t, unit="us", utc=True).tz_convert(tz)
    hour = local.hour.to_numpy()
    day = local.normalize().tz_localize(None).to_numpy().astype("datetime64[D]")
    owner = day - (hour < 7).astype("timedelta64[D]")
    period = np.where((hour >= 7) & (hour < 19), 0, np.where((hour >= 19) & (hour < 23), 1, 2))
    e = pd.Series(10.0 ** (leq_db / 10.0))
    mean = e.groupby([owner, period]).mean().unstack()
    lvl = 10 * np.log10(mean)
    return 10 * np.log10(
        (12 * 10 ** (lvl[0] / 10) + 4 * 10 ** ((lvl[1] + 5) / 10) + 8 * 10 ** ((lvl[2] + 10) / 10)) / 24
    )


# --------------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------------


def median_seconds(fn: Callable[[], Any], runs: int) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        fn()  # warm-up (compile / cache load, page faults of first allocation)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu or platform.processor(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "pandas": pd.__version__,
        "platform": platform.platform(),
        "load_avg_1m_at_start": os.getloadavg()[0],
    }


def lden_numpy(t, leq_db, tz):
    from zoneinfo import ZoneInfo

    local = t + _utc_offsets_us(t, ZoneInfo(tz))  # the same zoneinfo work as the kernel wrapper
    day = local // DAY
    hour = (local - day * DAY) // HOUR
    owner = day - (hour < 7)
    period = np.where((hour >= 7) & (hour < 19), 0, np.where((hour >= 19) & (hour < 23), 1, 2))
    days, idx = np.unique(owner, return_inverse=True)
    key = idx * 3 + period
    e = np.bincount(key, weights=10.0 ** (leq_db / 10.0), minlength=3 * days.size)
    n = np.bincount(key, minlength=3 * days.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        lvl = (10 * np.log10(e / n)).reshape(-1, 3)
    w = np.array([12, 4, 8]) * 10.0 ** ((lvl + np.array([0, 5, 10])) / 10)
    return 10 * np.log10(w.sum(axis=1) / 24)


Case = tuple[str, int, Callable[[], Any], Callable[[], Any], Callable[[], Any] | None, str]


def build_cases(n: int, n_series: int) -> list[Case]:
    d = synthetic_stream(n, n_series)
    s, t, v, db = d["series"], d["ts"], d["value"], d["decibel"]
    rng = np.random.default_rng(1)
    perm = rng.permutation(n)
    s_sh, t_sh, v_sh = s[perm], t[perm], v[perm]
    _, inverse = np.unique(s * 64 + (t // HOUR - t.min() // HOUR), return_inverse=True)
    group_hour = inverse.reshape(-1).astype(np.int64)  # detector-hour groups
    n_gh = int(group_hour.max()) + 1
    counts = rng.integers(0, 30, n).astype(np.float64)
    speeds = np.round(rng.uniform(5.0, 110.0, n), 1)
    meter_index = np.cumsum(rng.integers(0, 5, n)).astype(np.float64)
    no_limit = np.full(n_series, np.nan)
    stuck_values = np.round(v / 5.0) * 5.0
    hours = np.arange(n, dtype=np.int64) * HOUR
    hourly = rng.uniform(0.0, 100.0, n)
    hourly[rng.random(n) < 0.05] = np.nan
    n_lden = min(n, 10 * 8760)
    lden_hours = 1_735_689_600_000_000 + np.arange(n_lden, dtype=np.int64) * HOUR
    lden_levels = rng.uniform(45.0, 75.0, n_lden)
    pm25 = rng.gamma(2.0, 10.0, n)
    K = kernels
    return [
        ("partial_aggregates 1 h, arrival order", n,
         lambda: K.partial_aggregates(s, t, v, HOUR, db),
         lambda: partial_numpy(s, t, v, HOUR, db), lambda: partial_pandas(s, t, v, HOUR, db), ""),
        ("partial_aggregates 1 h, shuffled", n,
         lambda: K.partial_aggregates(s_sh, t_sh, v_sh, HOUR, db),
         lambda: partial_numpy(s_sh, t_sh, v_sh, HOUR, db),
         lambda: partial_pandas(s_sh, t_sh, v_sh, HOUR, db), ""),
        ("partial_aggregates 1 min, arrival order", n,
         lambda: K.partial_aggregates(s, t, v, MINUTE, db),
         lambda: partial_numpy(s, t, v, MINUTE, db), lambda: partial_pandas(s, t, v, MINUTE, db), ""),
        ("partial_aggregates 1 min, shuffled", n,
         lambda: K.partial_aggregates(s_sh, t_sh, v_sh, MINUTE, db),
         lambda: partial_numpy(s_sh, t_sh, v_sh, MINUTE, db),
         lambda: partial_pandas(s_sh, t_sh, v_sh, MINUTE, db), ""),
        ("leq_by_group (per series)", n,
         lambda: K.leq_by_group(s, v, n_series),
         lambda: leq_numpy(s, v, n_series), lambda: leq_pandas(s, v, n_series), ""),
        ("lden_from_hourly_leq (10 y hourly, Paris)", n_lden,
         lambda: K.lden_from_hourly_leq(lden_hours, lden_levels, "Europe/Paris"),
         lambda: lden_numpy(lden_hours, lden_levels, "Europe/Paris"),
         lambda: lden_pandas(lden_hours, lden_levels, "Europe/Paris"), "one zoneinfo lookup per UTC day"),
        ("epa_aqi_subindex pm25", n,
         lambda: K.epa_aqi_subindex("pm25", pm25), lambda: epa_numpy(pm25), None, "elementwise: no groupby"),
        ("european_aqi_band pm25", n,
         lambda: K.european_aqi_band("pm25", pm25),
         lambda: np.searchsorted(np.array([10.0, 20.0, 25.0, 50.0]), pm25, side="left") + 1, None,
         "elementwise: no groupby"),
        ("rolling_mean_hours 8 h (one series)", n,
         lambda: K.rolling_mean_hours(hours, hourly, 8, 6),
         lambda: rolling_numpy(hours, hourly, 8, 6), lambda: rolling_pandas(hours, hourly, 8, 6),
         "pandas: time-based rolling, no groupby"),
        ("daily_means (series-hour groups)", n,
         lambda: K.daily_means(group_hour, v, n_gh, 1),
         lambda: np.bincount(group_hour[~np.isnan(v)], weights=v[~np.isnan(v)], minlength=n_gh)
         / np.bincount(group_hour[~np.isnan(v)], minlength=n_gh),
         lambda: pd.Series(v).groupby(group_hour).mean(), "40k groups of ~250"),
        ("meter_steps", n,
         lambda: K.meter_steps(s, t, meter_index, rollover_at=no_limit, max_rate_per_h=no_limit,
                               tolerance=np.zeros(n_series)),
         lambda: meters_numpy(s, t, meter_index), lambda: meters_pandas(s, t, meter_index), ""),
        ("traffic_hourly (detector-hour)", n,
         lambda: K.traffic_hourly(group_hour, counts, speeds, n_gh),
         lambda: traffic_numpy(group_hour, counts, speeds, n_gh),
         lambda: traffic_pandas(group_hour, counts, speeds, n_gh), "pandas p85 unweighted (no weights)"),
        ("stuck_value_flags", n,
         lambda: K.stuck_value_flags(s, t, stuck_values, 3),
         lambda: stuck_numpy(s, t, stuck_values, 3), lambda: stuck_pandas(s, t, stuck_values, 3), ""),
        ("hampel_flags (half window 3)", n,
         lambda: K.hampel_flags(v, 3, series=s, ts_us=t),
         lambda: hampel_numpy(s, t, v, 3, 3.0), None, "pandas: no rolling MAD short of rolling.apply"),
    ]  # fmt: skip


def run(n: int, n_series: int, runs: int, only: str, out: Path) -> dict[str, Any]:
    started = datetime.now(UTC)
    warm = kernels.warm_up()
    cases = build_cases(n, n_series)
    prefixes = [p.strip() for p in only.split(",") if p.strip()]
    rows = []
    for name, rows_in, kernel_fn, numpy_fn, pandas_fn, note in cases:
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        k = median_seconds(kernel_fn, runs)
        npy = median_seconds(numpy_fn, runs)
        pdx = median_seconds(pandas_fn, runs) if pandas_fn is not None else None
        row = {
            "kernel": name,
            "readings": rows_in,
            "kernel_s": k,
            "readings_per_s": rows_in / k,
            "numpy_s": npy,
            "x_numpy": npy / k,
            "pandas_s": pdx,
            "x_pandas": None if pdx is None else pdx / k,
            "note": note,
        }
        rows.append(row)
        print(_format_row(row), flush=True)
    result = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "params": {"readings": n, "series": n_series, "runs": runs, "statistic": "median after 1 warm-up"},
        "warm_up_s": warm,
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(f"\nwarm_up {warm:.3f} s; wrote {out}")
    return result


def _format_row(row: dict[str, Any]) -> str:
    pandas = "   n/a" if row["x_pandas"] is None else f"{row['x_pandas']:6.1f}"
    return (
        f"{row['kernel']:<44} {row['readings']:>10,} {row['kernel_s'] * 1e3:9.1f} ms "
        f"{row['readings_per_s'] / 1e6:8.1f} M/s  x{row['x_numpy']:6.1f} numpy  x{pandas} pandas"
        f"  {row['note']}"
    )


def main() -> None:
    print(
        f"{'kernel':<44} {'readings':>10} {'median':>12} {'throughput':>12}  vs baselines (x faster)",
        flush=True,
    )
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=10_000_000)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated case-name prefixes to run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    run(args.readings, args.series, args.runs, args.only, args.out)


if __name__ == "__main__":
    main()
