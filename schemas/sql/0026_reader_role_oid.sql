-- A reader grant belongs to a role, not to a name. city_readers and platform_readers were keyed by
-- role name only, so a reader role dropped without `roles revoke-reader` left its grants behind and
-- whoever was next given that name (a new login, another city's reader) read the old role's cities.
-- Each grant now carries the role's OID, filled from pg_roles at insert by the trigger below; the
-- reader functions (schemas/access.py, VISIBLE_CITIES) match name and OID, so a grant outlives its
-- role as an inert row, which grant-reader replaces and migrate deletes.

ALTER TABLE public.city_readers ADD COLUMN IF NOT EXISTS role_oid oid;
ALTER TABLE public.platform_readers ADD COLUMN IF NOT EXISTS role_oid oid;

-- grants made before: the role of that name now (the best this migration can know); grants of a
-- name no role holds any more would pass to the next role of that name, so they go
UPDATE public.city_readers r SET role_oid = a.oid FROM pg_catalog.pg_roles a
WHERE a.rolname = r.role_name AND r.role_oid IS NULL;
UPDATE public.platform_readers r SET role_oid = a.oid FROM pg_catalog.pg_roles a
WHERE a.rolname = r.role_name AND r.role_oid IS NULL;
DELETE FROM public.city_readers WHERE role_oid IS NULL;
DELETE FROM public.platform_readers WHERE role_oid IS NULL;
ALTER TABLE public.city_readers ALTER COLUMN role_oid SET NOT NULL;
ALTER TABLE public.platform_readers ALTER COLUMN role_oid SET NOT NULL;

-- The OID is the catalog's, never the inserter's: a grant to a name no role holds is refused.
CREATE OR REPLACE FUNCTION public.citykpi_reader_grant_role_oid() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    NEW.role_oid := (SELECT a.oid FROM pg_catalog.pg_roles a WHERE a.rolname = NEW.role_name);
    IF NEW.role_oid IS NULL THEN
        RAISE EXCEPTION 'no role %', NEW.role_name USING ERRCODE = 'undefined_object';
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION public.citykpi_reader_grant_role_oid() FROM PUBLIC;
DROP TRIGGER IF EXISTS role_oid ON public.city_readers;
CREATE TRIGGER role_oid BEFORE INSERT ON public.city_readers
    FOR EACH ROW EXECUTE FUNCTION public.citykpi_reader_grant_role_oid();
DROP TRIGGER IF EXISTS role_oid ON public.platform_readers;
CREATE TRIGGER role_oid BEFORE INSERT ON public.platform_readers
    FOR EACH ROW EXECUTE FUNCTION public.citykpi_reader_grant_role_oid();

-- grant-reader as in 0008, but a grant left by an earlier role of the same name is dropped (and
-- said so) before the new role's own is made: the new role never inherits it
CREATE OR REPLACE FUNCTION public.citykpi_grant_reader(login_role text, reader_city text, new_password text)
RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    login_oid oid;
    n bigint;
    c text;
BEGIN
    IF reader_city IS NOT NULL AND NOT EXISTS (SELECT 1 FROM public.cities c WHERE c.city_id = reader_city) THEN
        RAISE EXCEPTION 'unknown city %', reader_city USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN QUERY SELECT public.citykpi_ensure_login(login_role, new_password);
    login_oid := (SELECT l.oid FROM pg_catalog.pg_roles l WHERE l.rolname = login_role);
    FOR c IN DELETE FROM public.city_readers r WHERE r.role_name = login_role AND r.role_oid <> login_oid
             RETURNING r.city_id LOOP
        RETURN NEXT 'dropped the grant of city ' || c || ' left by an earlier role named ' || login_role;
    END LOOP;
    DELETE FROM public.platform_readers p WHERE p.role_name = login_role AND p.role_oid <> login_oid;
    IF FOUND THEN
        RETURN NEXT 'dropped the grant of every city left by an earlier role named ' || login_role;
    END IF;
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
REVOKE ALL ON FUNCTION public.citykpi_grant_reader(text, text, text) FROM PUBLIC;
