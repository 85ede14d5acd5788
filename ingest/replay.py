"""Backfill from archive files through the same validation and the same idempotent writer.

Formats: `sensor-community-csv`, `openaq-csv` (rows to readings), and `jsonl:<decoder>` (one payload
per line in any registered format, e.g. `jsonl:senml`). Replaying a file twice stores nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.config import Settings
from ingest.pipeline import Message, Pipeline
from ingest.routing import RouteMatch
from processors.writer import MessageOrigin, TimescaleWriter, WriteBatch, WriteResult
from schemas.decoders import DECODERS
from schemas.decoders.openaq import iter_openaq_csv
from schemas.decoders.sensor_community import iter_sensor_community_csv
from schemas.readings import DecodeError, Reading

ROW_FORMATS: dict[str, Callable[[Iterable[str]], Iterator[Reading | DecodeError]]] = {
    "sensor-community-csv": iter_sensor_community_csv,
    "openaq-csv": iter_openaq_csv,
}


@dataclass
class ReplayResult:
    items: int = 0
    readings: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0


def guess_format(path: Path) -> str:
    head = path.open(encoding="utf-8", errors="replace").readline()
    if head.startswith("sensor_id;"):
        return "sensor-community-csv"
    if head.startswith("location_id,"):
        return "openaq-csv"
    raise ValueError(f"cannot tell the format of {path}; pass --format (one of {', '.join(formats())})")


def formats() -> list[str]:
    return [*ROW_FORMATS, *(f"jsonl:{name}" for name in DECODERS)]


def _check_format(fmt: str) -> None:
    if fmt not in ROW_FORMATS and not (fmt.startswith("jsonl:") and fmt[6:] in DECODERS):
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(formats())}")


async def replay_file(
    settings: Settings,
    path: Path,
    fmt: str | None,
    city: str,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Each line of a `jsonl:` file is a message through the live path's decode-validate step
    (`Pipeline.decode_message`: size and text checks, the route's identity rules, dead letters with
    their payload and line number as offset); archive rows go through its reading step."""
    fmt = fmt or guess_format(path)
    _check_format(fmt)
    result = ReplayResult()
    source = f"replay:{path.name}"
    max_rows = settings.writer.batch_max_rows
    topic = f"replay/{device}" if device else "replay"
    fmt_name = fmt.removeprefix("jsonl:")
    # --device names the device as a topic does: a payload naming another is rejected, as live
    route = RouteMatch(fmt_name, city, device, {})
    async with TimescaleWriter(
        settings.database.url.get_secret_value(), unknown_device=settings.validation.unknown_device
    ) as writer:
        pipeline = Pipeline(settings, writer)
        batch = WriteBatch(source=source, position={"file": str(path)})
        now = datetime.now(UTC)
        with path.open(encoding="utf-8", errors="replace") as f:
            if fmt in ROW_FORMATS:
                batch.origins.append(MessageOrigin(source, None, None, None, now, b"", 0))
                items: Iterator[tuple[int | None, Reading | DecodeError | str]] = (
                    (None, item) for item in ROW_FORMATS[fmt](f)
                )
            else:
                items = ((n, line) for n, line in enumerate(f, start=1) if line.strip())
            for lineno, item in items:
                result.items += 1
                if progress is not None:
                    progress(1)
                if isinstance(item, str):
                    message = Message(item.rstrip("\r\n").encode(), topic, now, offset=lineno)
                    pipeline.decode_message(batch, source, message, lambda _topic: route, now)
                elif isinstance(item, DecodeError):  # the row iterators put the line into the detail
                    pipeline.reject(batch, batch.origins[0], item, city)
                else:
                    pipeline.add_reading(batch, 0, route, item, now)
                if len(batch) >= max_rows:
                    _add(result, await writer.write(batch))
                    batch = WriteBatch(source=source, position={"file": str(path), "line": lineno})
                    if fmt in ROW_FORMATS:
                        batch.origins.append(MessageOrigin(source, None, None, None, now, b"", 0))
        _add(result, await writer.write(batch))
    return result


def _add(result: ReplayResult, w: WriteResult) -> None:
    result.readings += w.received
    result.stored += w.stored
    result.duplicates += w.duplicates
    result.dead_letters += w.dead_letters
