-- Sparkplug B host state per edge node (device_id '') and per device: the metric definitions of
-- the last BIRTH certificate (name, alias, datatype, engUnit), bdSeq, the node's last seq, and
-- whether it is online (dashboards show `online`; NDEATH/DDEATH set it false). Written by the
-- ingest writer in the transaction of the batch whose messages changed it, read back at start so
-- aliases survive a restart. Keyed by the route's city, never by anything a payload says.
CREATE TABLE IF NOT EXISTS sparkplug_sessions (
    city_id      text        NOT NULL REFERENCES cities (city_id),
    group_id     text        NOT NULL,
    edge_node_id text        NOT NULL,
    device_id    text        NOT NULL DEFAULT '',
    online       boolean     NOT NULL,
    bd_seq       bigint,
    seq          integer,
    metrics      jsonb       NOT NULL DEFAULT '[]',
    born_at      timestamptz,
    died_at      timestamptz,
    changed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (city_id, group_id, edge_node_id, device_id)
);
