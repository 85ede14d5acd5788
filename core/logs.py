"""Logging: readable on a terminal, one JSON object per line elsewhere (for log shippers)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from rich.console import Console
from rich.logging import RichHandler

_STANDARD = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO", json_logs: bool | None = None, console: Console | None = None) -> None:
    """JSON lines off-terminal; on a terminal, rich output through `console`, so log lines print above
    a live progress display on the same console instead of tearing it."""
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    handler: logging.Handler
    if json_logs:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    else:
        handler = RichHandler(console=console or Console(stderr=True), show_path=False)
    root = logging.getLogger()
    handler.set_name("citykpi")  # replace only our own handler: others (pytest's, an embedder's) stay
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "citykpi"] + [handler]
    root.setLevel(level.upper())
    # never below WARNING: aiokafka's DEBUG lines include the SASL PLAIN request bytes, password
    # included (tests/integration/test_kafka_sasl.py); httpx logs every request's full URL at INFO,
    # and the alert webhook's URL is a secret (tests/unit/test_logs.py)
    for noisy in ("aiokafka", "kafka", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
