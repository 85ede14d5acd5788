-- Every dead letter can be replayed: the dead letters of one inbound message share its
-- message_id, the payload is stored once per message (on one of its rows), and received_at is
-- the message's own receive time, which a requeue uses again. Headers (e.g. Sensor.Community's
-- X-Sensor) are part of the message.
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS message_id uuid;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS headers jsonb;
CREATE INDEX IF NOT EXISTS dead_letters_message_idx ON dead_letters (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS dead_letters_city_idx ON dead_letters (city_id, received_at DESC);
