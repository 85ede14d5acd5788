-- Retention of alert events (processors/retention.py): the owner deletes them, so the ingest login
-- needs EXECUTE on this function only, never DELETE on `alerts` (it could erase an alert's trail).
-- Kept whatever their age: an open alert's opening event (its history starts there) and, while
-- publishing is on, every event no channel has taken yet (notified_at IS NULL).
CREATE OR REPLACE FUNCTION public.citykpi_expire_alerts(keep_days integer, keep_unpublished boolean)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    removed bigint;
BEGIN
    IF keep_days IS NULL OR keep_days < 1 OR keep_unpublished IS NULL THEN
        RAISE EXCEPTION 'keep_days must be at least 1 and keep_unpublished set'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM public.alerts a
    WHERE a.at < pg_catalog.now() - pg_catalog.make_interval(days => keep_days)
      AND NOT (keep_unpublished AND a.notified_at IS NULL)
      AND NOT (a.event = 'opened' AND EXISTS (SELECT 1 FROM public.alert_open o WHERE o.alert_id = a.alert_id));
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;
REVOKE ALL ON FUNCTION public.citykpi_expire_alerts(integer, boolean) FROM PUBLIC;
