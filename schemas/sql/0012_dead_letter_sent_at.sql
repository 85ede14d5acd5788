-- The broker's timestamp of a dead-lettered message where it keeps one (Kafka), beside received_at
-- (when citykpi received it). A payload without a time of its own is stamped with sent_at, else
-- received_at, so a requeue stamps its readings as the first decode did.
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS sent_at timestamptz;
