"""Identifiers and time-zone names as every input accepts them: the configuration (core/config.py)
and the city registry (kpi_rollups/registry.py) validate with these types, so both agree."""

from __future__ import annotations

import re
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, StringConstraints

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$")


def known_time_zone(name: str) -> str:
    """The IANA name unchanged, or ValueError naming the fix."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name like 'Europe/Paris'") from None
    return name


Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN.pattern)]
TimeZoneName = Annotated[str, AfterValidator(known_time_zone)]
