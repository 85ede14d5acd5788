"""What the demo's live table shows: the newest minute rollups per metric, today's KPI values and
the alerts open."""

from __future__ import annotations

import asyncpg

from core.config import Settings

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

KPI_SQL = """
SELECT kpi_code, component, area_id, value, unit, valid, coverage
FROM kpi_values
WHERE city_id = $1 AND period_kind = 'day' AND value IS NOT NULL AND area_id = ''
  AND period_start = (SELECT max(period_start) FROM kpi_values WHERE city_id = $1 AND period_kind = 'day')
ORDER BY kpi_code, component
"""

OPEN_ALERTS_SQL = """
SELECT a.rule_id, a.severity, count(*) AS n, max(a.opened_at) AS newest
FROM alerts a
WHERE a.city_id = $1 AND a.event = 'opened'
  AND NOT EXISTS (SELECT 1 FROM alerts c WHERE c.alert_id = a.alert_id AND c.event = 'closed')
GROUP BY a.rule_id, a.severity
ORDER BY a.rule_id
"""


async def latest_summary(settings: Settings) -> list[tuple[str, str, float, str]]:
    """(label, unit, value, note) rows: metrics averaged over the last five minutes of rollups, then
    the first configured city's KPI values for today (note says valid or not, and coverage), then its
    open alerts per rule (value: how many, note: the newest opening). Read as the KPI login: the
    ingest login may not read kpi_values."""
    conn = await asyncpg.connect(settings.database.kpi_dsn(), timeout=5)
    try:
        rows = await conn.fetch(LATEST_SQL)
        kpis = await conn.fetch(KPI_SQL, settings.cities[0].city_id)
        alerts = await conn.fetch(OPEN_ALERTS_SQL, settings.cities[0].city_id)
    finally:
        await conn.close()
    out = [
        (r["name"], r["canonical_unit"], float(r["value"]), r["bucket"].strftime("%H:%M"))
        for r in rows
        if r["value"] is not None
    ]
    for k in kpis:
        label = f"KPI {k['kpi_code']}" + (f" {k['component']}" if k["component"] else "")
        coverage = f"coverage {k['coverage']:.0%}" if k["coverage"] is not None else ""
        out.append(
            (label, k["unit"], float(k["value"]), f"{'valid' if k['valid'] else 'partial'} {coverage}")
        )
    for a in alerts:
        out.append(
            (f"alert {a['rule_id']}", f"open ({a['severity']})", float(a["n"]), a["newest"].strftime("%H:%M"))
        )
    return out
