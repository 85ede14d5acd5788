"""JSON log lines, as log shippers read them: no server."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from core.logs import JsonFormatter, setup_logging


def test_logs_are_json_lines_off_a_terminal_with_extra_fields(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", json_logs=True)
    logging.getLogger("citykpi.test").warning("write failed", extra={"topic": "city/x", "offset": 7})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["level"] == "WARNING" and record["message"] == "write failed"
    assert (record["topic"], record["offset"]) == ("city/x", 7)
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "citykpi"]
    assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
    assert not sys.stderr.isatty()


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_a_webhook_post_logs_neither_its_url_token_nor_its_password(
    level: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The alert webhook URL is a secret (tokens in its path, a password in its userinfo), but httpx
    logs every request's full URL at INFO and httpcore its connection at DEBUG: a POST to a real
    local server, with the service's logging at INFO and at DEBUG, prints no part of the secret."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from core.config import AlertSettings, MqttSettings
    from ingest.alert_notify import AlertNotifier

    class Ok(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        setup_logging(level, json_logs=True)
        url = f"http://hookuser:hookpass-s3cret@127.0.0.1:{server.server_port}/services/T0/B0/tok-s3cret"
        notifier = AlertNotifier(AlertSettings(webhook_url=url), MqttSettings())
        await notifier([{"alert_id": "a", "event": "opened"}])
    finally:
        server.shutdown()
        server.server_close()
        setup_logging("INFO", json_logs=True)
    err = capsys.readouterr().err
    assert "s3cret" not in err and "hookuser" not in err
