-- The data-quality job sets the stuck/spike bits of readings.flags (processors/quality.py).
GRANT UPDATE (flags) ON readings TO citykpi_ingest;
