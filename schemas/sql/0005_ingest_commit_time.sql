-- The writer stamps each batch with the moment its transaction ends (publish-to-commit latency).
GRANT UPDATE (committed_at) ON ingest_batches TO citykpi_ingest;
