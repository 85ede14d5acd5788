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
MQTT_INFLIGHT = Gauge("citykpi_mqtt_inflight", "MQTT messages received and not yet acknowledged")
KAFKA_LAG = Gauge("citykpi_kafka_lag", "Kafka consumer lag", ["topic", "partition"])
LAST_WRITE = Gauge("citykpi_last_successful_write_timestamp_seconds", "Unix time of the last commit")
