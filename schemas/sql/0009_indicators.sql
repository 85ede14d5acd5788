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
-- latest reading folded in, the reference reading (last accepted time, high-water value), the
-- previous reading that was not a rejected rise (noise is a step back within the tolerance of it)
-- and a rejected rise waiting for confirmation. Internal to the writer (grants: schemas/access.py); no
-- reader view.
CREATE TABLE IF NOT EXISTS meter_state (
    device_key    integer NOT NULL,
    metric_id     smallint NOT NULL,
    last_us       bigint NOT NULL,
    ref_us        bigint NOT NULL,
    ref_value     double precision NOT NULL,
    prev_value    double precision NOT NULL,
    pending_us    bigint,
    pending_value double precision,
    PRIMARY KEY (device_key, metric_id)
);
COMMENT ON COLUMN devices.metadata IS
    'KPI attributes (kpi_rollups): street_km, drainage_km, segment_id, free_flow_kmh, role, intersection_id; '
    'meters (processors/meters.py): rollover_at, max_rate_per_h, meter_dn, max_current_a, phases, noise_tolerance';

-- Late data (processors/late.py): the writer marks, in the ingest transaction, each (city, local
-- day) before the city's today that a newly stored reading falls in; the KPI refresh loop
-- recomputes exactly those days and their months and years, then clears the marks it served.
CREATE TABLE IF NOT EXISTS kpi_pending_days (
    city_id   text NOT NULL REFERENCES cities (city_id),
    day       date NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (city_id, day)
);

-- KPI revisions: a row's revision goes up when its value, validity or label changes, with what
-- triggered the refresh (scheduled, late data, period ended, cli); every revision is kept.
ALTER TABLE kpi_values
    ADD COLUMN IF NOT EXISTS revision integer NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS trigger text NOT NULL DEFAULT 'refresh';
CREATE TABLE IF NOT EXISTS kpi_value_revisions (
    city_id       text NOT NULL REFERENCES cities (city_id),
    kpi_code      text NOT NULL,
    component     text NOT NULL DEFAULT '',
    area_id       text NOT NULL DEFAULT '',
    period_kind   text NOT NULL,
    period_start  date NOT NULL,
    revision      integer NOT NULL,
    value         double precision,
    valid         boolean NOT NULL,
    quality_label text,
    coverage      double precision,
    n_readings    bigint NOT NULL,
    computed_at   timestamptz NOT NULL,
    trigger       text NOT NULL,
    PRIMARY KEY (city_id, kpi_code, component, area_id, period_kind, period_start, revision)
);

-- 15-minute rollups (meter columns included): local hours and days of zones whose offset is not a
-- whole hour (Asia/Kolkata, Asia/Kathmandu, Australia/Adelaide …) are cut from them exactly.
CREATE TABLE IF NOT EXISTS rollup_15m (LIKE rollup_1m INCLUDING ALL);
ALTER TABLE rollup_15m SET (fillfactor = 70);
