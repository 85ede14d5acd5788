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
