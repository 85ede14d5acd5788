"""Late readings: which (city, local day) KPI periods newly stored readings reach into the past.

The writer calls `mark_late_days` in the ingest transaction (commit order in processors/writer.py),
so a mark exists exactly when its readings do. A day counts as late when it is before the city's
current local day (the KPI refresh loop keeps today, this month and this year current anyway);
the loop recomputes each marked day, its month and its year, then clears the marks it served.
"""

from __future__ import annotations

import asyncpg
import numpy as np
import numpy.typing as npt

from schemas import statements as sql

QUARTER_HOUR_US = 900_000_000  # every time zone's midnight falls on a UTC quarter hour


async def mark_late_days(
    conn: asyncpg.Connection, device_key: npt.NDArray[np.int64], ts_us: npt.NDArray[np.int64]
) -> None:
    """Mark the (city, local day) of every reading older than its city's local today."""
    if device_key.size == 0:
        return
    pairs = np.unique(np.stack([device_key, (ts_us // QUARTER_HOUR_US) * QUARTER_HOUR_US]), axis=1)
    await conn.execute(sql.MARK_LATE_DAYS, pairs[0].tolist(), pairs[1].tolist())
