"""Backfill from archive files through the same validation and the same idempotent writer.

Formats: `sensor-community-csv`, `openaq-csv` (rows to readings), and `jsonl:<decoder>` (one payload
per line in any registered format, e.g. `jsonl:senml`). Replaying a file twice stores nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

from ingest.config import Settings
from ingest.validation import Rejected, Validator
from processors.writer import DeadLetter, TimescaleWriter, WriteBatch, WriteResult
from schemas.decoders import DECODERS
from schemas.decoders.openaq import iter_openaq_csv
from schemas.decoders.sensor_community import iter_sensor_community_csv
from schemas.readings import DecodeContext, DecodeError, Reading

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


def _items(
    path: Path, fmt: str, device: str | None, zone: tzinfo | None
) -> Iterator[tuple[int | None, Reading | DecodeError]]:
    """(line number where known, reading or error) for every reading in the file."""
    with path.open(encoding="utf-8", errors="replace") as f:
        if fmt in ROW_FORMATS:
            for item in ROW_FORMATS[fmt](f):
                yield None, item  # the row iterators put the line number into their errors' detail
            return
        if not fmt.startswith("jsonl:") or fmt[6:] not in DECODERS:
            raise ValueError(f"unknown format {fmt!r}; one of {', '.join(formats())}")
        decoder = DECODERS[fmt[6:]]
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            ctx = DecodeContext(
                default_time=datetime.now(UTC), topic=path.name, device_id=device, timezone=zone
            )
            try:
                decoded = decoder(line.encode(), ctx)
            except DecodeError as e:
                yield lineno, e
                continue
            for part in decoded.rejected:
                yield lineno, DecodeError(part.reason, part.describe())
            for r in decoded:
                yield lineno, r


async def replay_file(
    settings: Settings,
    path: Path,
    fmt: str | None,
    city: str,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    fmt = fmt or guess_format(path)
    validator = Validator(settings.validation)
    result = ReplayResult()
    source = f"replay:{path.name}"
    max_rows = settings.writer.batch_max_rows
    async with TimescaleWriter(
        settings.database.url.get_secret_value(), unknown_device=settings.validation.unknown_device
    ) as writer:
        batch = WriteBatch(source=source, position={"file": str(path)})
        now = datetime.now(UTC)
        zone = next((ZoneInfo(c.timezone) for c in settings.cities if c.city_id == city), None)
        if settings.validation.naive_times != "city":
            zone = None
        for lineno, item in _items(path, fmt, device, zone):
            result.items += 1
            if progress is not None:
                progress(1)
            if isinstance(item, DecodeError):
                batch.dead_letters.append(
                    DeadLetter(source, item.reason, item.detail, path.name, None, lineno, city)
                )
                continue
            try:
                value = validator.canonical(item, now)
            except Rejected as e:
                batch.dead_letters.append(
                    DeadLetter(source, e.reason, e.detail, path.name, None, lineno, city, item.device_id)
                )
                continue
            batch.add(item.city or city, item.device_id, item.metric, item.time, value)
            if len(batch) >= max_rows:
                _add(result, await writer.write(batch))
                batch = WriteBatch(source=source, position={"file": str(path), "line": lineno})
        _add(result, await writer.write(batch))
    return result


def _add(result: ReplayResult, w: WriteResult) -> None:
    result.readings += w.received
    result.stored += w.stored
    result.duplicates += w.duplicates
    result.dead_letters += w.dead_letters
