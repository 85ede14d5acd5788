-- Rollup rows are updated in place many times while their bucket is open. Leaving 30 % of each
-- page free lets PostgreSQL make those HOT updates (no index churn: no indexed column changes).
ALTER TABLE rollup_1m SET (fillfactor = 70);
ALTER TABLE rollup_1h SET (fillfactor = 70);
ALTER TABLE rollup_1d SET (fillfactor = 70);
