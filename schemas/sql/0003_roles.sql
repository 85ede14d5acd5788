-- Least-privilege roles and per-city row-level security.
--   citykpi_ingest  the service's writer: adds readings, rollups, dead letters, auto-registered devices
--   citykpi_kpi     the KPI job: reads everything, writes kpi_values
--   citykpi_reader  base of the per-city read-only roles (Grafana); a login role created with
--                   citykpi_grant_city_reader(role, city) sees only its city's rows
-- The roles are NOLOGIN groups: deployments create login users and GRANT these to them.

-- Roles are cluster-wide: another database on the same server may have made them already.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['citykpi_ingest', 'citykpi_kpi', 'citykpi_reader'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        EXCEPTION WHEN duplicate_object THEN NULL;
        END;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA public TO citykpi_ingest, citykpi_kpi, citykpi_reader;

-- The writer: RETURNING and the conflict check need SELECT on readings; the rollup merge updates.
GRANT SELECT ON cities, metrics, devices TO citykpi_ingest;
GRANT INSERT ON devices, ingest_batches, dead_letters TO citykpi_ingest;
GRANT SELECT, INSERT ON readings TO citykpi_ingest;
GRANT SELECT, INSERT, UPDATE ON rollup_1m, rollup_1h, rollup_1d TO citykpi_ingest;
GRANT SELECT (batch_id), UPDATE (stored) ON ingest_batches TO citykpi_ingest;

GRANT SELECT ON ALL TABLES IN SCHEMA public TO citykpi_kpi;
GRANT INSERT, UPDATE, DELETE ON kpi_values TO citykpi_kpi;

-- Which login roles read which city.
CREATE TABLE IF NOT EXISTS city_readers (
    role_name text NOT NULL,
    city_id   text NOT NULL REFERENCES cities (city_id),
    PRIMARY KEY (role_name, city_id)
);

CREATE OR REPLACE FUNCTION citykpi_reader_cities() RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS
$$ SELECT city_id FROM city_readers WHERE role_name = session_user $$;

CREATE OR REPLACE FUNCTION citykpi_reader_devices() RETURNS SETOF integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS
$$ SELECT device_key FROM devices WHERE city_id IN (SELECT citykpi_reader_cities()) $$;

REVOKE ALL ON FUNCTION citykpi_reader_cities(), citykpi_reader_devices() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION citykpi_reader_cities(), citykpi_reader_devices()
    TO citykpi_reader, citykpi_ingest, citykpi_kpi;

GRANT SELECT ON cities, metrics, devices, readings, rollup_1m, rollup_1h, rollup_1d, kpi_values,
                dead_letters, ingest_batches, areas, city_facts, kpi_targets TO citykpi_reader;

-- Row-level security: readers see their cities' rows; the ingest and KPI roles see all rows
-- (their own policies); the owner (migrations) is not subject to RLS.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['cities', 'devices', 'kpi_values', 'dead_letters', 'areas', 'city_facts',
                             'kpi_targets'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('DROP POLICY IF EXISTS city_reader ON %I', t);
        EXECUTE format('CREATE POLICY city_reader ON %I FOR SELECT TO citykpi_reader '
                       'USING (city_id IN (SELECT citykpi_reader_cities()))', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['readings', 'rollup_1m', 'rollup_1h', 'rollup_1d'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('DROP POLICY IF EXISTS city_reader ON %I', t);
        EXECUTE format('CREATE POLICY city_reader ON %I FOR SELECT TO citykpi_reader '
                       'USING (device_key IN (SELECT citykpi_reader_devices()))', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['cities', 'devices', 'kpi_values', 'dead_letters', 'areas', 'city_facts',
                             'kpi_targets', 'readings', 'rollup_1m', 'rollup_1h', 'rollup_1d'] LOOP
        EXECUTE format('DROP POLICY IF EXISTS service_all ON %I', t);
        EXECUTE format('CREATE POLICY service_all ON %I TO citykpi_ingest, citykpi_kpi '
                       'USING (true) WITH CHECK (true)', t);
    END LOOP;
END
$$;

-- Make (or update) a login role that reads one city; callable by the migration owner only.
CREATE OR REPLACE FUNCTION citykpi_grant_city_reader(role_name text, city text, password text)
RETURNS void LANGUAGE plpgsql AS
$$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
        EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', role_name, password);
    ELSE
        EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L', role_name, password);
    END IF;
    EXECUTE format('GRANT citykpi_reader TO %I', role_name);
    INSERT INTO city_readers (role_name, city_id) VALUES (role_name, city) ON CONFLICT DO NOTHING;
END
$$;
REVOKE ALL ON FUNCTION citykpi_grant_city_reader(text, text, text) FROM PUBLIC;
