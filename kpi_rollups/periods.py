"""KPI periods: a local year, month or day in a city's time zone, and its UTC bounds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo

PeriodKind = Literal["year", "month", "day"]
PERIOD_KINDS: tuple[str, ...] = get_args(PeriodKind)
_PERIOD_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def _add_months(d: date, months: int) -> date:
    m = d.month - 1 + months
    return date(d.year + m // 12, m % 12 + 1, 1)


@dataclass(frozen=True, slots=True)
class Period:
    """[start, end) in local days of zone `tz`; `start` is the first local day."""

    kind: PeriodKind
    start: date
    tz: str

    def __post_init__(self) -> None:
        if self.kind not in PERIOD_KINDS:
            raise ValueError(f"period kind must be one of {PERIOD_KINDS}, got {self.kind!r}")
        aligned = period_start(self.kind, self.start)
        if aligned != self.start:
            raise ValueError(f"a {self.kind} period starts on {aligned}, not {self.start}")

    @classmethod
    def containing(cls, kind: PeriodKind, day: date, tz: str) -> Period:
        return cls(kind, period_start(kind, day), tz)

    @property
    def end(self) -> date:
        """First local day after the period."""
        if self.kind == "year":
            return date(self.start.year + 1, 1, 1)
        if self.kind == "month":
            return _add_months(self.start, 1)
        return self.start + timedelta(days=1)

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def start_utc(self) -> datetime:
        return local_midnight_utc(self.start, self.tz)

    @property
    def end_utc(self) -> datetime:
        return local_midnight_utc(self.end, self.tz)

    @property
    def whole_hour_zone(self) -> bool:
        """True when local hours are UTC hours over the period (the zone's offsets at its bounds are
        whole hours): hourly rollups cut it exactly; else (Asia/Kolkata, Asia/Kathmandu,
        Australia/Adelaide …) local hours are built from 15-minute rollups."""
        zone = self.zone
        return all(
            (off := t.astimezone(zone).utcoffset()) is not None and off % timedelta(hours=1) == timedelta(0)
            for t in (self.start_utc, self.end_utc - timedelta(microseconds=1))
        )

    @property
    def seconds(self) -> float:
        return (self.end_utc - self.start_utc).total_seconds()

    @property
    def n_days(self) -> int:
        return (self.end - self.start).days

    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range(self.n_days)]

    def elapsed_end(self, now: datetime) -> datetime:
        """`now` clamped into [start_utc, end_utc]."""
        return min(max(now, self.start_utc), self.end_utc)

    def elapsed_fraction(self, now: datetime) -> float:
        return (self.elapsed_end(now) - self.start_utc).total_seconds() / self.seconds

    def complete(self, now: datetime) -> bool:
        return now >= self.end_utc

    @property
    def label(self) -> str:
        if self.kind == "year":
            return f"{self.start.year}"
        if self.kind == "month":
            return f"{self.start:%Y-%m}"
        return self.start.isoformat()


def local_midnight_utc(day: date, tz: str) -> datetime:
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(tz)).astimezone(UTC)


def period_start(kind: str, day: date) -> date:
    if kind == "year":
        return date(day.year, 1, 1)
    if kind == "month":
        return date(day.year, day.month, 1)
    if kind == "day":
        return day
    raise ValueError(f"period kind must be one of {PERIOD_KINDS}, got {kind!r}")


def parse_period(text: str) -> tuple[PeriodKind, date]:
    """'2026' -> ('year', 2026-01-01); '2026-03' -> month; '2026-03-15' -> day."""
    m = _PERIOD_RE.match(text.strip())
    if not m:
        raise ValueError(f"period {text!r}: use YYYY, YYYY-MM or YYYY-MM-DD")
    year, month, day = m.groups()
    try:
        if day is not None:
            return "day", date(int(year), int(month), int(day))
        if month is not None:
            return "month", date(int(year), int(month), 1)
    except ValueError as e:
        raise ValueError(f"period {text!r}: {e}") from None
    return "year", date(int(year), 1, 1)


def periods_in(text: str, kind: PeriodKind | None, tz: str, now: datetime | None = None) -> list[Period]:
    """The periods of `kind` inside the period written `text`, up to the current local day.

    `periods_in("2026", None, tz)` is the year 2026; with kind "month" it is every month of 2026
    that has started, with "day" every day. A finer period text with a coarser kind is the
    period of that kind containing it ("2026-03-15" with "year" is 2026).
    """
    text_kind, start = parse_period(text)
    if kind is None or kind == text_kind:
        return [Period(text_kind, start, tz)]
    outer = Period(text_kind, start, tz)
    order = {"year": 0, "month": 1, "day": 2}
    if order[kind] < order[text_kind]:
        return [Period.containing(kind, start, tz)]
    today = (now or datetime.now(UTC)).astimezone(ZoneInfo(tz)).date()
    out: list[Period] = []
    p = Period.containing(kind, outer.start, tz)
    while p.start < outer.end and p.start <= today:
        out.append(p)
        p = Period(kind, p.end, tz)
    return out
