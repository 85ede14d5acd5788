"""The ingestion dashboard: throughput, lag, dead letters, data freshness (platform view)."""

from __future__ import annotations

from grafana_generator.model import Dashboard, Panel
from grafana_generator.queries import RANGE


def ingestion() -> Dashboard:
    def rate(expr: str, label: str) -> str:
        return f'{expr} / ($__interval_ms / 1000.0) AS "{label}"'

    by_source = (
        "SELECT $__timeGroupAlias(committed_at, $__interval), source AS metric,\n"
        f"  {rate('sum(stored)', 'readings/s')}\n"
        f"FROM ingest_batches{RANGE}\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 1, 2"
    )
    flow = (
        "SELECT $__timeGroupAlias(committed_at, $__interval),\n"
        f"  {rate('sum(received)', 'received')},\n"
        f"  {rate('sum(stored)', 'stored')},\n"
        f"  {rate('sum(received - stored)', 'replayed or conflicting')}\n"
        f"FROM ingest_batches{RANGE}\n"
        "GROUP BY 1\n"
        "ORDER BY 1"
    )
    batches = (
        "SELECT $__timeGroupAlias(committed_at, $__interval),\n"
        '  avg(received) AS "mean readings per batch", max(received) AS "largest batch",\n'
        '  count(*) AS "batches"\n'
        f"FROM ingest_batches{RANGE}\n"
        "GROUP BY 1\n"
        "ORDER BY 1"
    )
    lag = (
        "SELECT $__timeGroupAlias(b.committed_at, $__interval),\n"
        '  avg(extract(epoch FROM b.committed_at - n.newest)) AS "mean lag s",\n'
        '  max(extract(epoch FROM b.committed_at - n.newest)) AS "max lag s"\n'
        "FROM (\n"
        "  SELECT r.batch_id, max(r.time) AS newest\n"
        f"  FROM readings{RANGE} r\n"
        "  GROUP BY r.batch_id\n"
        ") n\n"
        f"JOIN ingest_batches{RANGE} b ON b.batch_id = n.batch_id\n"
        "GROUP BY 1\n"
        "ORDER BY 1"
    )
    dead_by_reason = (
        'SELECT $__timeGroupAlias(received_at, $__interval), reason AS metric, count(*) AS "dead letters"\n'
        f"FROM dead_letters{RANGE}\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 1, 2"
    )
    reasons = (
        'SELECT reason AS "reason", count(*) AS "dead letters"\n'
        f"FROM dead_letters{RANGE}\n"
        "GROUP BY 1\n"
        "ORDER BY 2 DESC, 1"
    )
    by_source_reason = (
        'SELECT source AS "source", reason AS "reason", count(*) AS "dead letters",\n'
        '  count(*) FILTER (WHERE requeued_at IS NOT NULL) AS "requeued",\n'
        '  max(received_at) AS "last", (array_agg(detail ORDER BY id DESC))[1] AS "latest detail"\n'
        f"FROM dead_letters{RANGE}\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 3 DESC, 1, 2"
    )
    samples = (
        'SELECT received_at AS "received", source AS "source", topic AS "topic", city_id AS "city",\n'
        '  device_id AS "device", reason AS "reason", detail AS "detail", payload_size AS "bytes",\n'
        "  encode(substring(payload FROM 1 FOR 1024), 'escape') AS \"payload (first 1 KiB, escaped)\",\n"
        '  requeued_at IS NOT NULL AS "requeued"\n'
        f"FROM dead_letters{RANGE}\n"
        "ORDER BY id DESC\n"
        "LIMIT 50"
    )
    sources = (
        'SELECT source AS "source", count(*) AS "batches", sum(received) AS "received",\n'
        '  sum(stored) AS "stored", sum(received - stored) AS "replayed or conflicting",\n'
        '  avg(received) AS "mean batch", min(committed_at) AS "first commit",\n'
        '  max(committed_at) AS "last commit"\n'
        f"FROM ingest_batches{RANGE}\n"
        "GROUP BY 1\n"
        "ORDER BY 1"
    )
    stored_total = (
        'SELECT coalesce(sum(stored), 0) AS "readings stored"\n'
        f"FROM ingest_batches{RANGE}"
    )
    dead_total = f'SELECT count(*) AS "dead letters"\nFROM dead_letters{RANGE}'
    dead_rate = (
        f"SELECT 1000.0 * (SELECT count(*) FROM dead_letters{RANGE})\n"
        f"  / nullif((SELECT sum(received) FROM ingest_batches{RANGE}), 0)\n"
        '  AS "dead letters per 1000 readings"'
    )
    sparkplug = (
        'SELECT city_id AS "city", group_id AS "group", edge_node_id AS "edge node",\n'
        '  nullif(device_id, \'\') AS "device", online AS "online", born_at AS "last birth",\n'
        '  died_at AS "last death", seq AS "last seq", bd_seq AS "bdSeq",\n'
        '  jsonb_array_length(metrics) AS "metrics in birth"\n'
        "FROM sparkplug_sessions\n"
        "ORDER BY online, city_id, group_id, edge_node_id, device_id"
    )
    since_commit = (
        'SELECT extract(epoch FROM now() - max(committed_at)) AS "since last commit"\n'
        f"FROM ingest_batches{RANGE}"
    )
    note = (
        "A platform view: write batches have no city, so batch panels cover every city; dead letters "
        "and readings follow the data source role's cities. Write latency, Kafka lag per "
        "partition, messages held unacknowledged and queue depth are Prometheus metrics on the "
        "service's `/metrics` endpoint (`citykpi_write_seconds`, `citykpi_kafka_lag`, "
        "`citykpi_held_messages`, `citykpi_queue_readings`): add a Prometheus data source for them. "
        "The lag panel here is commit time minus the newest reading of each batch, from `readings` "
        "(costly over long ranges)."
    )
    return Dashboard(
        uid="citykpi-ingestion",
        title="citykpi · Ingestion health",
        description="Readings/s by source, batch sizes, lag, dead letters by reason and rejected payload "
        "samples, from ingest_batches, readings and dead_letters.",
        time_from="now-6h",
        refresh="30s",
        tags=("ingestion",),
        panels=[
            Panel("text", "About this dashboard", w=24, h=3, content=note),
            Panel(
                "stat",
                "Readings stored",
                stored_total,
                fmt="table",
                w=6,
                h=4,
                unit="short",
                thresholds=[{"color": "green", "value": None}],
            ),
            Panel(
                "stat",
                "Dead letters",
                dead_total,
                fmt="table",
                w=6,
                h=4,
                unit="short",
                thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}],
            ),
            Panel(
                "stat",
                "Dead letters per 1000 readings",
                dead_rate,
                fmt="table",
                w=6,
                h=4,
                decimals=2,
                thresholds=[
                    {"color": "green", "value": None},
                    {"color": "orange", "value": 1},
                    {"color": "red", "value": 10},
                ],
            ),
            Panel(
                "stat",
                "Since last commit",
                since_commit,
                fmt="table",
                w=6,
                h=4,
                unit="s",
                decimals=0,
                thresholds=[
                    {"color": "green", "value": None},
                    {"color": "orange", "value": 60},
                    {"color": "red", "value": 300},
                ],
            ),
            Panel(
                "timeseries",
                "Readings stored per second by source",
                by_source,
                w=12,
                h=8,
                unit="short",
                interval="1m",
            ),
            Panel(
                "timeseries",
                "Received, stored and replayed readings per second",
                flow,
                w=12,
                h=8,
                unit="short",
                interval="1m",
            ),
            Panel("timeseries", "Write batch size", batches, w=12, h=8, interval="1m"),
            Panel(
                "timeseries",
                "Ingest lag: commit time − newest reading in the batch",
                lag,
                w=12,
                h=8,
                unit="s",
                interval="1m",
            ),
            Panel(
                "timeseries",
                "Dead letters by reason",
                dead_by_reason,
                w=12,
                h=8,
                interval="1m",
                options={
                    "legend": {
                        "displayMode": "table",
                        "placement": "right",
                        "showLegend": True,
                        "calcs": ["sum"],
                    }
                },
            ),
            Panel(
                "bargauge",
                "Dead letters by reason (range)",
                reasons,
                fmt="table",
                w=12,
                h=8,
                thresholds=[{"color": "orange", "value": None}],
            ),
            Panel("table", "Sources (range)", sources, fmt="table", w=12, h=7, decimals=1),
            Panel("table", "Dead letters by source and reason", by_source_reason, fmt="table", w=12, h=7),
            Panel(
                "table",
                "Sparkplug B edge nodes and devices (offline first)",
                sparkplug,
                fmt="table",
                w=24,
                h=8,
                description="sparkplug_sessions: NDEATH/DDEATH set online to false, a BIRTH back to true",
            ),
            Panel(
                "table",
                "Latest rejected payloads",
                samples,
                fmt="table",
                w=24,
                h=10,
                description="Newest 50 dead letters in the range; the payload is stored truncated "
                "(validation.dead_letter_payload_bytes) and shown with non-ASCII bytes escaped.",
            ),
        ],
    )
