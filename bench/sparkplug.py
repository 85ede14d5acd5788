"""Sparkplug B decoding against SenML decoding of the same readings, measured in the same run.

    .venv/bin/python -m bench.sparkplug [--messages 50000] [--runs 5]

One edge node with one device, born once; each message carries two metrics (water flow in L/min,
water level in cm): as DDATA by alias (protobuf) and as the equivalent SenML pack (JSON). Each
figure is the median of `--runs` timed runs after one warm-up; messages/s = messages / median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from schemas.decoders import DECODERS
from schemas.readings import DecodeContext
from schemas.sparkplug import SparkplugSessions
from schemas.sparkplug import sparkplug_b_pb2 as pb
from schemas.sparkplug.payloads import MetricValue, bd_seq_metric, payload

T0_MS = 1_767_225_600_000  # 2026-01-01
NODE, DEVICE = "substation-7", "meter-2"
BIRTH = [
    MetricValue("Inputs/Water Flow", 12.0, pb.Double, alias=1, unit="L/min"),
    MetricValue("Outputs/Water Level", 30, pb.Int16, alias=2, unit="cm"),
]


def _median_rate(n: int, runs: int, work: Callable[[], None]) -> float:
    work()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    now = datetime.now(UTC)
    sessions = SparkplugSessions(replay=True)  # no seq bookkeeping: every run decodes the same messages
    topic = f"spBv1.0/demo/DDATA/{NODE}/{DEVICE}"
    spb = DECODERS["sparkplug-b"]
    spb(
        payload([bd_seq_metric(0)], 0, T0_MS, birth=True),
        DecodeContext(now, f"spBv1.0/demo/NBIRTH/{NODE}", city="demo", sparkplug=sessions),
    )
    spb(
        payload(BIRTH, 1, T0_MS, birth=True),
        DecodeContext(now, f"spBv1.0/demo/DBIRTH/{NODE}/{DEVICE}", city="demo", sparkplug=sessions),
    )
    ddata = [
        payload(
            [
                MetricValue("", 12.0 + i % 7, pb.Double, alias=1),
                MetricValue("", 30 + i % 5, pb.Int16, alias=2),
            ],
            (i + 2) % 256,
            T0_MS + i * 1000,
        )
        for i in range(args.messages)
    ]
    senml = [
        json.dumps(
            [
                {
                    "bn": f"{NODE}:{DEVICE}:",
                    "bt": T0_MS / 1000 + i,
                    "n": "water_flow",
                    "u": "L/min",
                    "v": 12.0 + i % 7,
                },
                {"n": "water_level", "u": "cm", "v": 30 + i % 5},
            ]
        ).encode()
        for i in range(args.messages)
    ]
    spb_ctx = DecodeContext(now, topic, city="demo", sparkplug=sessions)
    senml_ctx = DecodeContext(now, f"city/demo/senml/{DEVICE}", city="demo")
    assert len(spb(ddata[0], spb_ctx)) == len(DECODERS["senml"](senml[0], senml_ctx)) == 2

    def decode_sparkplug() -> None:
        for m in ddata:
            spb(m, spb_ctx)

    def decode_senml() -> None:
        senml_decode = DECODERS["senml"]
        for m in senml:
            senml_decode(m, senml_ctx)

    rate_spb = _median_rate(args.messages, args.runs, decode_sparkplug)
    rate_senml = _median_rate(args.messages, args.runs, decode_senml)
    print(f"sparkplug-b DDATA by alias: {rate_spb:,.0f} messages/s ({2 * rate_spb:,.0f} readings/s)")
    print(f"senml, same readings:       {rate_senml:,.0f} messages/s ({2 * rate_senml:,.0f} readings/s)")
    print(f"sparkplug-b / senml:        {rate_spb / rate_senml:.2f}x")


if __name__ == "__main__":
    main()
