-- Batch provenance (topics, partitions) names every city's sources: platform readers only.
-- City readers get no policy, so no rows; roles with BYPASSRLS (platform readers) see all.
ALTER TABLE ingest_batches ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS service_all ON ingest_batches;
CREATE POLICY service_all ON ingest_batches TO citykpi_ingest, citykpi_kpi USING (true) WITH CHECK (true);
