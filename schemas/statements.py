"""The SQL the service runs on its hot path, in one place. Every value is a bind parameter."""

STAGING_READINGS = """
CREATE TEMP TABLE IF NOT EXISTS staging_readings (
    time timestamptz NOT NULL, device_key integer NOT NULL, metric_id smallint NOT NULL,
    value double precision NOT NULL, flags smallint NOT NULL
) ON COMMIT DELETE ROWS
"""
STAGING_READINGS_COLUMNS = ("time", "device_key", "metric_id", "value", "flags")

# Replays are no-ops: the first stored value wins. When the insert stores every staged row (its
# status says how many), those rows go to the rollup kernels in the same transaction as the writer
# staged them; otherwise NEW_READINGS_OF_BATCH finds the ones this batch stored. So each reading is
# aggregated exactly once.
INSERT_NEW_READINGS = """
INSERT INTO readings (time, device_key, metric_id, value, flags, batch_id)
SELECT time, device_key, metric_id, value, flags, $1 FROM staging_readings
ON CONFLICT (device_key, metric_id, time) DO NOTHING
"""
# The staged readings stored by batch $1 (once each: a batch may stage one reading twice).
NEW_READINGS_OF_BATCH = """
SELECT DISTINCT ON (s.device_key, s.metric_id, s.time)
       s.device_key::int8, s.metric_id::int8, (extract(epoch FROM s.time) * 1000000)::int8 AS ts_us, s.value
FROM staging_readings s JOIN readings r USING (device_key, metric_id, time)
WHERE r.batch_id = $1 AND r.value = s.value
"""

# Staged readings whose key is already stored with another value (same-timestamp collision).
CONFLICTING_READINGS = """
SELECT s.device_key, s.metric_id, s.time, (extract(epoch FROM s.time) * 1000000)::int8 AS ts_us, s.value,
       r.value AS stored_value
FROM staging_readings s JOIN readings r USING (device_key, metric_id, time)
WHERE r.value IS DISTINCT FROM s.value
"""

# Epoch microseconds -> timestamptz exactly (to_timestamp goes through a double and can be 1 µs off).
EPOCH_PLUS_US = ("timestamptz 'epoch'", "interval '1 microsecond'")

# The writer's rollup partials of every level, COPYed in binary in one go (processors/rollups.py):
# `width` is the level's bucket width, times are epoch microseconds.
STAGING_ROLLUPS = """
CREATE TEMP TABLE IF NOT EXISTS staging_rollups (
    width int8 NOT NULL, b int8 NOT NULL, d int4 NOT NULL, m int2 NOT NULL, n int8 NOT NULL,
    s float8 NOT NULL, sq float8 NOT NULL, mn float8 NOT NULL, mx float8 NOT NULL, ft int8 NOT NULL,
    fv float8 NOT NULL, lt int8 NOT NULL, lv float8 NOT NULL, e float8 NOT NULL, mc float8 NOT NULL,
    mcov float8 NOT NULL, mex float8 NOT NULL, mrs int4 NOT NULL, mro int4 NOT NULL, mrj int4 NOT NULL,
    mnz int4 NOT NULL
) ON COMMIT DELETE ROWS
"""

# Merging partial state (the same merge as processors.kernels.merge_partial_aggregates); the
# columns arrive as arrays, times as epoch microseconds.
MERGE_ROLLUP = """
INSERT INTO {table} AS t (bucket, device_key, metric_id, n, sum, sumsq, min, max,
                          first_time, first_value, last_time, last_value, energy,
                          meter_consumption, meter_covered_s, meter_excluded_s, meter_resets,
                          meter_rollovers, meter_rejected, meter_noise)
SELECT {EPOCH} + b * {US}, d, m, n, s, sq, mn, mx, {EPOCH} + ft * {US}, fv, {EPOCH} + lt * {US}, lv, e,
       mc, mcov, mex, mrs, mro, mrj, mnz
FROM unnest($1::int8[], $2::int4[], $3::int2[], $4::int8[], $5::float8[], $6::float8[], $7::float8[],
            $8::float8[], $9::int8[], $10::float8[], $11::int8[], $12::float8[], $13::float8[],
            $14::float8[], $15::float8[], $16::float8[], $17::int4[], $18::int4[], $19::int4[], $20::int4[])
     AS u(b, d, m, n, s, sq, mn, mx, ft, fv, lt, lv, e, mc, mcov, mex, mrs, mro, mrj, mnz)
ON CONFLICT (device_key, metric_id, bucket) DO UPDATE SET
    n = t.n + EXCLUDED.n,
    sum = t.sum + EXCLUDED.sum,
    sumsq = t.sumsq + EXCLUDED.sumsq,
    min = LEAST(t.min, EXCLUDED.min),
    max = GREATEST(t.max, EXCLUDED.max),
    first_time = CASE WHEN EXCLUDED.first_time < t.first_time THEN EXCLUDED.first_time ELSE t.first_time END,
    first_value = CASE WHEN EXCLUDED.first_time < t.first_time
                       THEN EXCLUDED.first_value ELSE t.first_value END,
    last_time = CASE WHEN EXCLUDED.last_time > t.last_time THEN EXCLUDED.last_time ELSE t.last_time END,
    last_value = CASE WHEN EXCLUDED.last_time > t.last_time THEN EXCLUDED.last_value ELSE t.last_value END,
    energy = t.energy + EXCLUDED.energy,
    meter_consumption = t.meter_consumption + EXCLUDED.meter_consumption,
    meter_covered_s = t.meter_covered_s + EXCLUDED.meter_covered_s,
    meter_excluded_s = t.meter_excluded_s + EXCLUDED.meter_excluded_s,
    meter_resets = t.meter_resets + EXCLUDED.meter_resets,
    meter_rollovers = t.meter_rollovers + EXCLUDED.meter_rollovers,
    meter_rejected = t.meter_rejected + EXCLUDED.meter_rejected,
    meter_noise = t.meter_noise + EXCLUDED.meter_noise
""".replace("{EPOCH}", EPOCH_PLUS_US[0]).replace("{US}", EPOCH_PLUS_US[1])

# The same merge fed by one level of staging_rollups ($1: its bucket width); this and not unnest
# arrays on the writer's hot path, since asyncpg encodes array parameters element by element.
MERGE_STAGED_ROLLUP = (
    MERGE_ROLLUP.split("FROM unnest")[0]
    + "FROM staging_rollups WHERE width = $1\nON CONFLICT"
    + MERGE_ROLLUP.split("ON CONFLICT", 1)[1]
)

# Rebuilding rollup buckets from their readings (processors/rollups.py rebuild_rollups, for the
# quality job): lock the bucket rows, read the kept readings, replace the rows, drop empty ones.
LOCK_ROLLUP_BUCKETS = """
SELECT 1 FROM {table} t JOIN unnest($1::int4[], $2::int2[], $3::int8[]) AS u(d, m, b)
  ON t.device_key = u.d AND t.metric_id = u.m AND t.bucket = {EPOCH} + u.b * {US}
ORDER BY t.device_key, t.metric_id, t.bucket
FOR UPDATE OF t
""".replace("{EPOCH}", EPOCH_PLUS_US[0]).replace("{US}", EPOCH_PLUS_US[1])
READINGS_IN_BUCKETS = """
SELECT r.device_key, r.metric_id, (extract(epoch FROM r.time) * 1000000)::int8 AS ts_us, r.value
FROM readings r JOIN unnest($1::int4[], $2::int2[], $3::int8[]) AS u(d, m, b)
  ON r.device_key = u.d AND r.metric_id = u.m
 AND r.time >= {EPOCH} + u.b * {US} AND r.time < {EPOCH} + (u.b + $4::int8) * {US}
WHERE r.flags & $5::int2 = 0
""".replace("{EPOCH}", EPOCH_PLUS_US[0]).replace("{US}", EPOCH_PLUS_US[1])
REPLACE_ROLLUP = (
    MERGE_ROLLUP.split("ON CONFLICT")[0]
    + """ON CONFLICT (device_key, metric_id, bucket) DO UPDATE SET
    n = EXCLUDED.n, sum = EXCLUDED.sum, sumsq = EXCLUDED.sumsq, min = EXCLUDED.min, max = EXCLUDED.max,
    first_time = EXCLUDED.first_time, first_value = EXCLUDED.first_value,
    last_time = EXCLUDED.last_time, last_value = EXCLUDED.last_value, energy = EXCLUDED.energy
"""
)
# the owner's function (migration 0025): the ingest login holds no DELETE on the rollups
DELETE_EMPTY_ROLLUP_BUCKETS = (
    "SELECT public.citykpi_delete_empty_rollup_buckets($1, $2::int4[], $3::int2[], $4::int8[], $5::int2)"
)
DECIBEL_METRICS = "SELECT metric_id FROM metrics WHERE aggregation = 'decibel'"

# Late readings (processors/late.py): the (city, local day) of readings before the city's today.
# marked_at is the time of the statement, not of its transaction (now()): a mark made later by a
# concurrent writer must never carry an earlier time, or the refresh would clear it unserved.
MARK_LATE_DAYS = """
INSERT INTO kpi_pending_days (city_id, day, marked_at)
SELECT city_id, day, clock_timestamp() FROM (
    SELECT DISTINCT d.city_id, (({EPOCH} + u.t * {US}) AT TIME ZONE c.timezone)::date AS day
    FROM unnest($1::int4[], $2::int8[]) AS u(device_key, t)
    JOIN devices d ON d.device_key = u.device_key JOIN cities c ON c.city_id = d.city_id
    WHERE (({EPOCH} + u.t * {US}) AT TIME ZONE c.timezone)::date < (now() AT TIME ZONE c.timezone)::date
) late
ORDER BY 1, 2  -- concurrent writers upsert in one order (no deadlock)
ON CONFLICT (city_id, day) DO UPDATE SET marked_at = clock_timestamp()
""".replace("{EPOCH}", EPOCH_PLUS_US[0]).replace("{US}", EPOCH_PLUS_US[1])

INSERT_INGEST_BATCH = """
INSERT INTO ingest_batches (source, position, received, stored) VALUES ($1, $2::jsonb, $3, 0)
RETURNING batch_id
"""
# committed_at: the end of the transaction (now() would be its start), for publish-to-commit latency
UPDATE_INGEST_BATCH = (
    "UPDATE ingest_batches SET stored = $2, committed_at = clock_timestamp() WHERE batch_id = $1"
)

DEAD_LETTER_COLUMNS = (
    "source",
    "topic",
    "partition",
    "offset",
    "city_id",
    "device_id",
    "reason",
    "detail",
    "payload",
    "payload_size",
    "received_at",
    "headers",
    "message_id",
    "sent_at",
)

LOOKUP_DEVICES = """
SELECT d.city_id, d.device_id, d.device_key
FROM devices d JOIN unnest($1::text[], $2::text[]) AS k(city_id, device_id)
  ON d.city_id = k.city_id AND d.device_id = k.device_id
"""
REGISTER_DEVICES = """
INSERT INTO devices (city_id, device_id, kind, registered_by, first_seen)
SELECT k.city_id, k.device_id, k.kind, 'auto', now()
FROM unnest($1::text[], $2::text[], $3::text[]) AS k(city_id, device_id, kind)
WHERE EXISTS (SELECT 1 FROM cities c WHERE c.city_id = k.city_id)
ON CONFLICT (city_id, device_id) DO NOTHING
"""
METRIC_IDS = "SELECT name, metric_id, aggregation FROM metrics"
KNOWN_CITIES = "SELECT city_id, timezone FROM cities"
UPSERT_CITY = """
INSERT INTO cities (city_id, name, timezone) VALUES ($1, $2, $3)
ON CONFLICT (city_id) DO UPDATE SET name = EXCLUDED.name, timezone = EXCLUDED.timezone
"""

# The quality job: readings of averaged metrics in a window, and their flags written back.
READINGS_FOR_QUALITY = """
SELECT r.device_key, r.metric_id, (extract(epoch FROM r.time) * 1000000)::int8 AS ts_us, r.value, r.flags
FROM readings r JOIN metrics m USING (metric_id)
WHERE r.time >= $1 AND r.time < $2 AND m.aggregation IN ('linear', 'decibel')
"""
UPDATE_READING_FLAGS = """
UPDATE readings r SET flags = u.f
FROM unnest($1::int4[], $2::int2[], $3::int8[], $4::int2[]) AS u(d, m, t, f)
WHERE r.device_key = u.d AND r.metric_id = u.m AND r.time = {EPOCH} + u.t * {US}
""".replace("{EPOCH}", EPOCH_PLUS_US[0]).replace("{US}", EPOCH_PLUS_US[1])

# Cumulative meters (processors/meters.py): registry attributes, the stored reference (locked for
# this transaction), a series' stored readings from a time on, and the rollups' meter columns.
METER_SPECS = """
SELECT u.device_key, u.metric_id, m.name, jsonb_build_object(
           'rollover_at', d.metadata->'rollover_at', 'max_rate_per_h', d.metadata->'max_rate_per_h',
           'meter_dn', d.metadata->'meter_dn', 'max_current_a', d.metadata->'max_current_a',
           'phases', d.metadata->'phases', 'noise_tolerance', d.metadata->'noise_tolerance')::text AS spec
FROM unnest($1::int4[], $2::int2[]) AS u(device_key, metric_id)
JOIN devices d ON d.device_key = u.device_key JOIN metrics m ON m.metric_id = u.metric_id
"""
# The batch's meters, locked until the transaction ends: a meter without stored state has no row to
# lock, and a writer that stepped it from readings another transaction has not committed yet would
# count a step twice. One lock per bucket of meters (the caller's sorted bucket numbers, so
# concurrent writers lock in one order): a lock per meter could fill the server's lock table.
# Keys below -2^48, apart from the KPI refresh's hashtext keys and the migration's.
LOCK_METERS = """
SELECT count(pg_advisory_xact_lock(-281474976710656 - b)) FROM unnest($1::int8[]) AS b
"""
LOCK_METER_STATE = """
SELECT s.device_key, s.metric_id, s.last_us, s.ref_us, s.ref_value, s.prev_value, s.pending_us,
       s.pending_value
FROM meter_state s JOIN unnest($1::int4[], $2::int2[]) AS u(device_key, metric_id)
     ON s.device_key = u.device_key AND s.metric_id = u.metric_id
ORDER BY s.device_key, s.metric_id
FOR UPDATE OF s
"""
METER_READINGS = """
SELECT r.device_key, r.metric_id, (extract(epoch FROM r.time) * 1000000)::int8 AS us, r.value
FROM readings r JOIN unnest($1::int4[], $2::int2[], $3::int8[]) AS u(device_key, metric_id, from_us)
     ON r.device_key = u.device_key AND r.metric_id = u.metric_id
    AND r.time >= {EPOCH} + u.from_us * {US}
""".replace("{EPOCH}", EPOCH_PLUS_US[0]).replace("{US}", EPOCH_PLUS_US[1])
CLEAR_METER_STEPS = """
UPDATE {table} AS t SET meter_consumption = 0, meter_covered_s = 0, meter_excluded_s = 0,
    meter_resets = 0, meter_rollovers = 0, meter_rejected = 0, meter_noise = 0
FROM unnest($1::int4[], $2::int2[], $3::int8[]) AS u(device_key, metric_id, from_us)
WHERE t.device_key = u.device_key AND t.metric_id = u.metric_id AND t.bucket >= {EPOCH} + u.from_us * {US}
""".replace("{EPOCH}", EPOCH_PLUS_US[0]).replace("{US}", EPOCH_PLUS_US[1])
ADD_METER_STEPS = """
UPDATE {table} AS t SET meter_consumption = t.meter_consumption + u.c,
    meter_covered_s = t.meter_covered_s + u.cov, meter_excluded_s = t.meter_excluded_s + u.ex,
    meter_resets = t.meter_resets + u.rs, meter_rollovers = t.meter_rollovers + u.ro,
    meter_rejected = t.meter_rejected + u.rj, meter_noise = t.meter_noise + u.nz
FROM unnest($1::int8[], $2::int4[], $3::int2[], $4::float8[], $5::float8[], $6::float8[], $7::int4[],
            $8::int4[], $9::int4[], $10::int4[]) AS u(b, d, m, c, cov, ex, rs, ro, rj, nz)
WHERE t.device_key = u.d AND t.metric_id = u.m AND t.bucket = {EPOCH} + u.b * {US}
""".replace("{EPOCH}", EPOCH_PLUS_US[0]).replace("{US}", EPOCH_PLUS_US[1])
SAVE_METER_STATE = """
INSERT INTO meter_state (device_key, metric_id, last_us, ref_us, ref_value, prev_value, pending_us,
                         pending_value)
SELECT * FROM unnest($1::int4[], $2::int2[], $3::int8[], $4::int8[], $5::float8[], $6::float8[], $7::int8[],
                     $8::float8[])
ON CONFLICT (device_key, metric_id) DO UPDATE SET last_us = EXCLUDED.last_us, ref_us = EXCLUDED.ref_us,
    ref_value = EXCLUDED.ref_value, prev_value = EXCLUDED.prev_value, pending_us = EXCLUDED.pending_us,
    pending_value = EXCLUDED.pending_value
"""

SPARKPLUG_SESSIONS = """
SELECT city_id, group_id, edge_node_id, device_id, online, bd_seq, seq, metrics::text AS metrics,
       born_at, died_at
FROM sparkplug_sessions
"""
UPSERT_SPARKPLUG_SESSION = """
INSERT INTO sparkplug_sessions AS s
    (city_id, group_id, edge_node_id, device_id, online, bd_seq, seq, metrics, born_at, died_at)
SELECT $1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10
WHERE EXISTS (SELECT 1 FROM cities WHERE city_id = $1)
ON CONFLICT (city_id, group_id, edge_node_id, device_id) DO UPDATE SET
    online = EXCLUDED.online, bd_seq = EXCLUDED.bd_seq, seq = EXCLUDED.seq, metrics = EXCLUDED.metrics,
    born_at = EXCLUDED.born_at, died_at = EXCLUDED.died_at, changed_at = now()
"""
