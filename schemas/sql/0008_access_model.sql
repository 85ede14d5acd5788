-- The access model (SECURITY.md): readers never touch a base table, a hypertable or a chunk. They
-- read views in the `reader` schema, owned by a NOLOGIN definer role and filtered by
-- public.city_readers / public.platform_readers; every role with table privileges (ingest, KPI,
-- definer, owner) sees every row by design, so the tables need no row-level security (which
-- TimescaleDB chunks ignore anyway, and which refuses COPY and compression). The per-deployment
-- roles, grants and views are applied by schemas/access.py on every migrate; this file holds the
-- tables and the functions they rest on, and takes back what 0003 and 0007 granted.

-- 0003's cluster-wide roles: nothing in this database any more (schemas/access.py grants to
-- the deployment's own roles, which are these very names only when the prefix is `citykpi`).
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['cities', 'devices', 'kpi_values', 'dead_letters', 'areas', 'city_facts',
                             'kpi_targets', 'readings', 'rollup_1m', 'rollup_1h', 'rollup_1d',
                             'ingest_batches'] LOOP
        EXECUTE format('DROP POLICY IF EXISTS city_reader ON public.%I', t);
        EXECUTE format('DROP POLICY IF EXISTS service_all ON public.%I', t);
        EXECUTE format('ALTER TABLE public.%I DISABLE ROW LEVEL SECURITY', t);
    END LOOP;
END
$$;
DROP FUNCTION IF EXISTS public.citykpi_reader_devices();
DROP FUNCTION IF EXISTS public.citykpi_reader_cities();
DROP FUNCTION IF EXISTS public.citykpi_grant_city_reader(text, text, text);
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM citykpi_ingest, citykpi_kpi, citykpi_reader;
REVOKE ALL ON SCHEMA public FROM citykpi_ingest, citykpi_kpi, citykpi_reader;

-- The deployment's role prefix, fixed by the first migrate (schemas/access.py).
CREATE TABLE IF NOT EXISTS deployment_roles (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    prefix    text NOT NULL CHECK (prefix ~ '^[a-z_][a-z0-9_]{0,39}$')
);

-- Readers of every city (the platform team's Grafana); city readers stay in city_readers.
CREATE TABLE IF NOT EXISTS platform_readers (
    role_name text PRIMARY KEY
);

-- Retention for the ingest login: drop_chunks needs the hypertables' owner, so the owner defines
-- this one function, with a fixed search_path, schema-qualified names and a fixed table list.
CREATE OR REPLACE FUNCTION public.citykpi_apply_retention(target text, keep_days integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    time_column text;
    ts_schema name;
    removed bigint;
BEGIN
    time_column := CASE target WHEN 'readings' THEN 'time' WHEN 'rollup_1m' THEN 'bucket'
                               WHEN 'rollup_1h' THEN 'bucket' WHEN 'rollup_1d' THEN 'bucket' END;
    IF time_column IS NULL THEN
        RAISE EXCEPTION 'retention applies to readings and rollups only, not %', target
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF keep_days IS NULL OR keep_days < 1 THEN
        RAISE EXCEPTION 'keep_days must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT e.extnamespace::regnamespace::name INTO ts_schema
    FROM pg_catalog.pg_extension e WHERE e.extname = 'timescaledb';
    IF ts_schema IS NOT NULL THEN
        EXECUTE format('SELECT count(*) FROM %I.drop_chunks(%L::regclass, older_than => '
                       'pg_catalog.now() - pg_catalog.make_interval(days => %s))',
                       ts_schema, 'public.' || target, keep_days)
            INTO removed;
    ELSE
        EXECUTE format('DELETE FROM public.%I WHERE %I < pg_catalog.now() - '
                       'pg_catalog.make_interval(days => %s)', target, time_column, keep_days);
        GET DIAGNOSTICS removed = ROW_COUNT;
    END IF;
    RETURN removed;
END
$$;
REVOKE ALL ON FUNCTION public.citykpi_apply_retention(text, integer) FROM PUBLIC;

-- Create a login, or change an existing one's password (NULL: keep it); one line per change.
CREATE OR REPLACE FUNCTION public.citykpi_ensure_login(login_role text, new_password text)
RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM pg_catalog.pg_roles WHERE rolname = login_role;
    IF NOT FOUND THEN
        IF new_password IS NULL THEN
            RAISE EXCEPTION 'a new login role needs a password' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', login_role, new_password);
        RETURN NEXT format('created login role %s', login_role);
        RETURN;
    END IF;
    IF new_password IS NOT NULL THEN
        EXECUTE format('ALTER ROLE %I PASSWORD %L', login_role, new_password);
        RETURN NEXT 'password changed';
    END IF;
    IF NOT r.rolcanlogin THEN
        EXECUTE format('ALTER ROLE %I LOGIN', login_role);
        RETURN NEXT 'may now log in';
    END IF;
END
$$;

-- Put a login in one of the deployment's groups (`<prefix>_<what>`), then report every other
-- membership, attribute and table privilege it holds: reported, never silently kept.
CREATE OR REPLACE FUNCTION public.citykpi_join_group(login_role text, what text)
RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    group_name text := (SELECT d.prefix || '_' || what FROM public.deployment_roles d);
    group_oid oid := (SELECT g.oid FROM pg_catalog.pg_roles g WHERE g.rolname = group_name);
    login_oid oid := (SELECT l.oid FROM pg_catalog.pg_roles l WHERE l.rolname = login_role);
BEGIN
    IF group_oid IS NULL THEN
        RAISE EXCEPTION 'run citykpi migrate first (no role %)', coalesce(group_name, what);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                   WHERE m.roleid = group_oid AND m.member = login_oid) THEN
        EXECUTE format('GRANT %I TO %I', group_name, login_role);
        RETURN NEXT format('added to %s', group_name);
    END IF;
    RETURN QUERY
        SELECT 'still a member of ' || m.roleid::regrole::text || ' (not changed)'
        FROM pg_catalog.pg_auth_members m
        WHERE m.member = login_oid AND m.roleid <> group_oid
        UNION ALL
        SELECT 'WARNING: ' || x.rolname || ' is ' || a.attr || ' (not changed)'
        FROM pg_catalog.pg_roles x,
             LATERAL (VALUES ('a superuser', x.rolsuper), ('BYPASSRLS', x.rolbypassrls),
                             ('CREATEROLE', x.rolcreaterole), ('CREATEDB', x.rolcreatedb)) AS a(attr, held)
        WHERE x.oid = login_oid AND a.held
        UNION ALL
        SELECT 'still holds privileges on ' || c.oid::regclass::text || ' (not changed)'
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
        WHERE s.nspname NOT IN ('pg_catalog', 'information_schema', 'reader') AND c.relkind IN ('r', 'p', 'v', 'm')
          AND EXISTS (SELECT 1 FROM pg_catalog.aclexplode(c.relacl) a WHERE a.grantee = login_oid);
END
$$;

-- Make or extend a reader login (the owner runs it; `citykpi roles grant-reader`). reader_city
-- NULL reads every city. Returns one line per change, then what else the role still holds.
CREATE OR REPLACE FUNCTION public.citykpi_grant_reader(login_role text, reader_city text, new_password text)
RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    login_oid oid;
    n bigint;
BEGIN
    IF reader_city IS NOT NULL AND NOT EXISTS (SELECT 1 FROM public.cities c WHERE c.city_id = reader_city) THEN
        RAISE EXCEPTION 'unknown city %', reader_city USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN QUERY SELECT public.citykpi_ensure_login(login_role, new_password);
    login_oid := (SELECT l.oid FROM pg_catalog.pg_roles l WHERE l.rolname = login_role);
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
                   WHERE d.datname = current_database() AND s.setrole = login_oid
                     AND s.setconfig @> ARRAY['search_path=reader, public', 'default_transaction_read_only=on']) THEN
        EXECUTE format('ALTER ROLE %I IN DATABASE %I SET search_path = reader, public', login_role, current_database());
        EXECUTE format('ALTER ROLE %I IN DATABASE %I SET default_transaction_read_only = on',
                       login_role, current_database());
        RETURN NEXT format('search_path set to reader, public in database %s', current_database());
    END IF;
    IF reader_city IS NULL THEN
        INSERT INTO public.platform_readers (role_name) VALUES (login_role) ON CONFLICT DO NOTHING;
    ELSE
        INSERT INTO public.city_readers (role_name, city_id) VALUES (login_role, reader_city) ON CONFLICT DO NOTHING;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN NEXT CASE WHEN n > 0 THEN 'may now read ' ELSE 'already reads ' END
                || coalesce('city ' || reader_city, 'every city');
    RETURN QUERY
        SELECT 'also reads city ' || c.city_id FROM public.city_readers c
        WHERE c.role_name = login_role AND c.city_id IS DISTINCT FROM reader_city
        UNION ALL
        SELECT 'also reads every city' FROM public.platform_readers p
        WHERE p.role_name = login_role AND reader_city IS NOT NULL;
    RETURN QUERY SELECT public.citykpi_join_group(login_role, 'reader');
END
$$;

-- Make or extend the service's logins (`citykpi roles grant-service`): service 'ingest' or 'kpi'.
CREATE OR REPLACE FUNCTION public.citykpi_grant_service(login_role text, service text, new_password text)
RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    IF service IS NULL OR service NOT IN ('ingest', 'kpi') THEN
        RAISE EXCEPTION 'service must be ingest or kpi, not %', service USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY SELECT public.citykpi_ensure_login(login_role, new_password);
    RETURN QUERY SELECT public.citykpi_join_group(login_role, service);
END
$$;
REVOKE ALL ON FUNCTION public.citykpi_ensure_login(text, text), public.citykpi_join_group(text, text),
    public.citykpi_grant_reader(text, text, text), public.citykpi_grant_service(text, text, text) FROM PUBLIC;

-- Take a city (reader_city NULL: every grant) back from a reader login; once it reads nothing it
-- leaves the reader group. The login itself stays (DROP ROLE is the operator's call).
CREATE OR REPLACE FUNCTION public.citykpi_revoke_reader(login_role text, reader_city text)
RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    reader_group text := (SELECT d.prefix || '_reader' FROM public.deployment_roles d);
    group_oid oid := (SELECT g.oid FROM pg_catalog.pg_roles g WHERE g.rolname = reader_group);
    login_oid oid := (SELECT l.oid FROM pg_catalog.pg_roles l WHERE l.rolname = login_role);
    c text;
BEGIN
    IF reader_group IS NULL THEN
        RAISE EXCEPTION 'run citykpi migrate first (no deployment roles)';
    END IF;
    IF login_oid IS NULL THEN
        RAISE EXCEPTION 'no role %', login_role USING ERRCODE = 'undefined_object';
    END IF;
    FOR c IN DELETE FROM public.city_readers r
             WHERE r.role_name = login_role AND (reader_city IS NULL OR r.city_id = reader_city)
             RETURNING r.city_id LOOP
        RETURN NEXT 'no longer reads city ' || c;
    END LOOP;
    IF reader_city IS NULL THEN
        DELETE FROM public.platform_readers p WHERE p.role_name = login_role;
        IF FOUND THEN
            RETURN NEXT 'no longer reads every city';
        END IF;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM public.city_readers r WHERE r.role_name = login_role)
       AND NOT EXISTS (SELECT 1 FROM public.platform_readers p WHERE p.role_name = login_role)
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                   WHERE m.roleid = group_oid AND m.member = login_oid) THEN
        EXECUTE format('REVOKE %I FROM %I', reader_group, login_role);
        EXECUTE format('ALTER ROLE %I IN DATABASE %I RESET ALL', login_role, current_database());
        RETURN NEXT format('removed from %s; it reads nothing here now (DROP ROLE %s to remove the login)',
                           reader_group, login_role);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION public.citykpi_revoke_reader(text, text) FROM PUBLIC;
