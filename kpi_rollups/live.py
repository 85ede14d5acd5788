"""Latest city-wide values for the demo's live table: the newest minute rollups per metric."""

from __future__ import annotations

import asyncpg

from ingest.config import Settings

LATEST_SQL = """
SELECT m.name, m.canonical_unit,
       CASE WHEN m.aggregation = 'decibel' THEN 10 * log(sum(r.energy) / sum(r.n))
            ELSE sum(r.sum) / sum(r.n) END AS value,
       max(r.bucket) AS bucket
FROM rollup_1m r JOIN metrics m USING (metric_id)
WHERE r.bucket >= (SELECT max(bucket) FROM rollup_1m) - interval '5 minutes'
  AND m.aggregation IN ('linear', 'decibel', 'state')
GROUP BY m.name, m.canonical_unit, m.aggregation
ORDER BY m.name
"""


async def latest_summary(settings: Settings) -> list[tuple[str, str, float, str]]:
    """(metric, unit, value, bucket) for each metric, averaged over the last five minutes of rollups."""
    conn = await asyncpg.connect(settings.database.url.get_secret_value(), timeout=5)
    try:
        rows = await conn.fetch(LATEST_SQL)
    finally:
        await conn.close()
    return [
        (r["name"], r["canonical_unit"], float(r["value"]), r["bucket"].strftime("%H:%M"))
        for r in rows
        if r["value"] is not None
    ]
