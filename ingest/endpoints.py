"""The service's HTTP endpoints, served by prometheus_client's own WSGI exposition on a threaded
standard-library server (no hand-parsed HTTP): /metrics (content negotiation and gzip by
prometheus_client), /healthz (alive) and /readyz (ready for traffic) from two small checks.

The server runs in a thread of its own, so probes and scrapes answer even while the event loop is
busy; the checks only read the service's state.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no access log
        pass


def _text(start_response: Callable[..., Any], status: str, body: str) -> Iterable[bytes]:
    data = body.encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    )
    return [data]


class HealthServer:
    """`alive()` returns None when healthy, else why not; `ready()` says whether to send traffic."""

    def __init__(
        self, host: str, port: int, alive: Callable[[], str | None], ready: Callable[[], bool]
    ) -> None:
        self._alive, self._ready = alive, ready
        self._metrics = make_wsgi_app()
        self._server = make_server(host, port, self._app, _Server, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="citykpi-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        if self._thread.is_alive():
            await asyncio.to_thread(self._server.shutdown)
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/healthz":
            why = self._alive()
            if why is None:
                return _text(start_response, "200 OK", "ok\n")
            return _text(start_response, "503 Service Unavailable", f"failed: {why}\n")
        if path == "/readyz":
            if self._ready():
                return _text(start_response, "200 OK", "ready\n")
            return _text(start_response, "503 Service Unavailable", "not ready\n")
        return _text(start_response, "404 Not Found", "not found\n")
