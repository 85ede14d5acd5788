-- Threshold alerts (processors/alerts.py): rules as data (`citykpi alerts import FILE`), the alert
-- events they raise, and the evaluator's own state. An alert's id is derived from its rule, series
-- and opening time, and (alert_id, event, at) is the key, so evaluating the same data twice stores
-- nothing twice.

CREATE TABLE IF NOT EXISTS alert_rules (
    rule_id      text PRIMARY KEY,
    city_id      text REFERENCES cities (city_id),  -- NULL: every city
    area_id      text,
    device_id    text,
    device_kind  text,
    metric       text NOT NULL REFERENCES metrics (name),
    statistic    text NOT NULL CHECK (statistic IN ('reading', 'rolling_mean', 'exceedance', 'no_data', 'stuck')),
    window_min   integer CHECK (window_min > 0),
    limit_name   text,
    threshold    double precision NOT NULL,
    direction    text NOT NULL DEFAULT 'above' CHECK (direction IN ('above', 'below')),
    hysteresis   double precision NOT NULL DEFAULT 0 CHECK (hysteresis >= 0),
    min_coverage double precision NOT NULL DEFAULT 0.75 CHECK (min_coverage BETWEEN 0 AND 1),
    severity     text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    description  text NOT NULL DEFAULT '',
    enabled      boolean NOT NULL DEFAULT true
);

-- One row per event of an alert: opened, updated (a new peak), closed; `value` is the statistic's
-- value that triggered it (no_data: the minutes without a reading), `at` its data time.
CREATE TABLE IF NOT EXISTS alerts (
    alert_id    uuid NOT NULL,
    event       text NOT NULL CHECK (event IN ('opened', 'updated', 'closed')),
    at          timestamptz NOT NULL,
    rule_id     text NOT NULL,
    city_id     text NOT NULL REFERENCES cities (city_id),
    area_id     text,
    device_id   text NOT NULL,
    metric      text NOT NULL,
    statistic   text NOT NULL,
    severity    text NOT NULL,
    value       double precision,
    threshold   double precision NOT NULL,
    opened_at   timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    notified_at timestamptz,
    PRIMARY KEY (alert_id, event, at)
);
CREATE INDEX IF NOT EXISTS alerts_city_at_idx ON alerts (city_id, at DESC);
CREATE INDEX IF NOT EXISTS alerts_unnotified_idx ON alerts (recorded_at) WHERE notified_at IS NULL;

-- The evaluator's state: how far each rule has looked, and its alerts still open.
CREATE TABLE IF NOT EXISTS alert_cursors (
    rule_id         text PRIMARY KEY,
    evaluated_until timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_open (
    rule_id    text NOT NULL,
    device_key integer NOT NULL,
    metric_id  smallint NOT NULL,
    alert_id   uuid NOT NULL,
    opened_at  timestamptz NOT NULL,
    peak       double precision NOT NULL,
    PRIMARY KEY (rule_id, device_key, metric_id)
);
