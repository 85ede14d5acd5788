-- Indicators that match the standards (issue 13).

-- Meter consumption as mergeable rollup state (processors/meters.py). Each cumulative-register
-- reading is a step from the meter's reference reading (kernels.meter_steps); a bucket holds the
-- steps ending in it: accepted consumption, the time it covers, the time excluded with rejected
-- steps, and counts of resets, rollovers, rejected steps and noise (small backward) steps. Sums over
-- buckets are exact, so a day, month or year is the sum of its rollup rows, resets included.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['rollup_1m', 'rollup_1h', 'rollup_1d'] LOOP
        EXECUTE format('ALTER TABLE %I
            ADD COLUMN IF NOT EXISTS meter_consumption double precision NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS meter_covered_s double precision NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS meter_excluded_s double precision NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS meter_resets integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS meter_rollovers integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS meter_rejected integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS meter_noise integer NOT NULL DEFAULT 0', t);
    END LOOP;
END
$$;

-- Per meter series, the reference the next reading steps from (times in epoch microseconds): the
-- latest reading folded in, the reference reading (last accepted time, high-water value) and a
-- rejected rise waiting for confirmation. Internal to the writer (grants: schemas/access.py); no
-- reader view.
CREATE TABLE IF NOT EXISTS meter_state (
    device_key    integer NOT NULL,
    metric_id     smallint NOT NULL,
    last_us       bigint NOT NULL,
    ref_us        bigint NOT NULL,
    ref_value     double precision NOT NULL,
    pending_us    bigint,
    pending_value double precision,
    PRIMARY KEY (device_key, metric_id)
);
COMMENT ON COLUMN devices.metadata IS
    'KPI attributes (kpi_rollups): street_km, drainage_km, segment_id, free_flow_kmh, role, intersection_id; '
    'meters (processors/meters.py): rollover_at, max_rate_per_h, meter_dn, max_current_a, phases, noise_tolerance';
