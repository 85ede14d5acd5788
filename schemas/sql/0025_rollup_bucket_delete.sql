-- The quality job (processors/rollups.py rebuild_rollups) deletes rollup buckets left without
-- readings once its flagged readings are excluded. The owner deletes them, so the ingest login
-- needs EXECUTE on this function only, never DELETE on the rollups (it could erase a city's
-- aggregates while the readings stay): a bucket goes only if no reading in it lacks every one of
-- `excluded_flags`, which may name the quality job's bits only (stuck 1, spike 2:
-- processors/quality.py QUALITY_BITS). Buckets and widths are epoch microseconds, as the writer's.
CREATE OR REPLACE FUNCTION public.citykpi_delete_empty_rollup_buckets(
    target text, device_keys integer[], metric_ids smallint[], buckets_us bigint[], excluded_flags smallint
)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    width_us bigint;
    removed bigint;
BEGIN
    width_us := CASE target WHEN 'rollup_1m' THEN 60000000 WHEN 'rollup_15m' THEN 900000000
                            WHEN 'rollup_1h' THEN 3600000000 WHEN 'rollup_1d' THEN 86400000000 END;
    IF width_us IS NULL THEN
        RAISE EXCEPTION 'only rollup buckets can be deleted, not %', target
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF excluded_flags IS NULL OR excluded_flags & ~3::smallint <> 0 THEN
        RAISE EXCEPTION 'only the quality bits (stuck 1, spike 2) can be excluded, not %', excluded_flags
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format(
        'DELETE FROM public.%I t USING unnest($1, $2, $3) AS u(d, m, b) '
        'WHERE t.device_key = u.d AND t.metric_id = u.m '
        '  AND t.bucket = timestamptz ''epoch'' + u.b * interval ''1 microsecond'' '
        '  AND NOT EXISTS (SELECT 1 FROM public.readings r '
        '                  WHERE r.device_key = u.d AND r.metric_id = u.m '
        '                    AND r.time >= timestamptz ''epoch'' + u.b * interval ''1 microsecond'' '
        '                    AND r.time < timestamptz ''epoch'' + (u.b + $5) * interval ''1 microsecond'' '
        '                    AND r.flags & $4 = 0)',
        target)
        USING device_keys, metric_ids, buckets_us, excluded_flags, width_us;
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;
REVOKE ALL ON FUNCTION public.citykpi_delete_empty_rollup_buckets(text, integer[], smallint[], bigint[], smallint)
    FROM PUBLIC;

-- Deployments migrated before this one granted the ingest role DELETE on the rollups for the job.
DO $$
DECLARE
    ingest text := (SELECT d.prefix || '_ingest' FROM public.deployment_roles d);
BEGIN
    IF ingest IS NOT NULL AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = ingest) THEN
        EXECUTE format('REVOKE DELETE ON public.rollup_1m, public.rollup_15m, public.rollup_1h, '
                       'public.rollup_1d FROM %I', ingest);
    END IF;
END
$$;
