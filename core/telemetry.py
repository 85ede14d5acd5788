"""The service's own Prometheus metrics, defined once."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_RECEIVED = Counter("citykpi_messages_received_total", "Payloads received", ["source"])
READINGS_RECEIVED = Counter("citykpi_readings_received_total", "Readings decoded", ["source"])
READINGS_STORED = Counter("citykpi_readings_stored_total", "Readings newly stored", ["source"])
READINGS_DUPLICATE = Counter("citykpi_readings_duplicate_total", "Replayed readings ignored", ["source"])
REJECTED = Counter("citykpi_rejected_total", "Payloads or readings dead-lettered", ["source", "reason"])
BATCH_ROWS = Histogram(
    "citykpi_write_batch_rows",
    "Readings per write batch",
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000),
)
WRITE_SECONDS = Histogram(
    "citykpi_write_seconds",
    "Write transaction latency",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_ROWS = Gauge("citykpi_queue_readings", "Readings decoded and waiting for the writer")
KAFKA_LAG = Gauge("citykpi_kafka_lag", "Kafka consumer lag", ["topic", "partition"])
LAST_WRITE = Gauge("citykpi_last_successful_write_timestamp_seconds", "Unix time of the last commit")
WRITE_FAILURES = Counter(
    "citykpi_write_failures_total",
    "Failed write attempts by SQLSTATE class ('connection' when the server was not reached) and kind: "
    "'retriable' (the batch is kept and retried) or 'permanent' (the batch is bisected to the culprit)",
    ["sqlstate_class", "kind"],
)
WRITE_BLOCKED_SECONDS = Gauge(
    "citykpi_write_blocked_seconds", "How long the write in progress has been waiting (0 when idle)"
)
DEAD_LETTER_PUBLISH_FAILURES = Counter(
    "citykpi_dead_letter_publish_failures_total",
    "Dead letters not published to the Kafka dead-letter topic (they are in the dead_letters table)",
)
SOURCE_CONNECTED = Gauge("citykpi_source_connected", "1 while connected to the broker", ["source"])
RECONNECTS = Counter("citykpi_source_reconnects_total", "Connections after the first", ["source"])
HELD_MESSAGES = Gauge("citykpi_held_messages", "Messages received and not yet acknowledged", ["source"])
HELD_BYTES = Gauge("citykpi_held_bytes", "Payload bytes received and not yet acknowledged", ["source"])
OLDEST_UNACKED_SECONDS = Gauge(
    "citykpi_oldest_unacked_seconds", "Age of the oldest message not yet acknowledged", ["source"]
)
TASK_RESTARTS = Counter("citykpi_task_restarts_total", "Supervised tasks restarted after a crash", ["task"])
# Security-relevant: values that lost to another value already stored for the same device, metric
# and second (a device spoofed ahead of time, or a clock gone wrong), and devices not auto-registered.
CONFLICTING_VALUES = Counter(
    "citykpi_conflicting_values_total",
    "Readings rejected because another value was stored first for the same device, metric and time",
    ["city"],
)
REGISTRATIONS_REFUSED = Counter(
    "citykpi_device_registrations_refused_total",
    "Unknown devices not auto-registered: over validation.max_new_devices_per_message or _per_city_minute",
    ["limit"],
)
ALERT_EVENTS = Counter(
    "citykpi_alert_events_total", "Alert events stored (opened, updated, closed)", ["event", "severity"]
)
ALERTS_OPEN = Gauge("citykpi_alerts_open", "Alerts open after the last evaluation", ["severity"])
ALERT_NOTIFY_FAILURES = Counter(
    "citykpi_alert_notify_failures_total",
    "Alert notifications that failed after their retries (they stay queued in the alerts table)",
    ["channel"],
)
# Sparkplug B edge nodes and devices by state (an NDEATH/DDEATH takes them offline), and seq gaps.
SPARKPLUG_SESSIONS = Gauge(
    "citykpi_sparkplug_sessions", "Sparkplug B edge nodes and devices known, by state", ["state"]
)
SPARKPLUG_SEQ_GAPS = Gauge(
    "citykpi_sparkplug_seq_gaps", "Sparkplug B messages whose seq was not the one expected, since start"
)
