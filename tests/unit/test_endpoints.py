"""The HTTP endpoints on prometheus_client's exposition: probes answer from the service's checks."""

from __future__ import annotations

import asyncio
import gzip
import urllib.error
import urllib.request

from core import telemetry
from ingest.endpoints import HealthServer


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read(), r.headers.get("Content-Encoding", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), ""


async def test_probes_follow_the_checks_and_metrics_are_prometheus_text() -> None:
    state: dict[str, object] = {"why": None, "ready": False}
    server = HealthServer("127.0.0.1", 0, lambda: state["why"], lambda: bool(state["ready"]))  # type: ignore[arg-type,return-value]
    server.start()
    try:
        port = server.port
        assert await asyncio.to_thread(get, port, "/healthz") == (200, b"ok\n", "")
        assert (await asyncio.to_thread(get, port, "/readyz"))[:2] == (503, b"not ready\n")
        state.update(why="write loop crashed", ready=True)
        assert (await asyncio.to_thread(get, port, "/healthz"))[:2] == (503, b"failed: write loop crashed\n")
        assert (await asyncio.to_thread(get, port, "/readyz"))[:2] == (200, b"ready\n")
        telemetry.READINGS_STORED.labels("endpoint-test").inc(3)
        status, body, _ = await asyncio.to_thread(get, port, "/metrics")
        assert status == 200 and b'citykpi_readings_stored_total{source="endpoint-test"} 3.0' in body
        status, body, encoding = await asyncio.to_thread(get, port, "/metrics", {"Accept-Encoding": "gzip"})
        assert encoding == "gzip" and b"citykpi_" in gzip.decompress(body)
        assert (await asyncio.to_thread(get, port, "/nope"))[0] == 404
    finally:
        await server.stop()
