-- The European Air Quality Index (EEA) per station-hour, as the air pollution formula computes it
-- (kpi_rollups/formulas/air.py with processors.kernels.european_aqi_band), so dashboards show it
-- instead of re-deriving running means and bands in SQL (issue 14). Per pollutant the sub-index:
-- its band, 1 (Good) .. 5 (Very poor), from the NO2, O3 and SO2 hourly means and the PM2.5 and PM10
-- 24-h running means of at least 18 valid hours; NULL when that hour has no valid input. `band` is
-- the station's index, the worst of them. Written by every KPI refresh for the hours of its period
-- (kpi_rollups/eu_aqi.py); read through the reader view (schemas/access.py).
CREATE TABLE IF NOT EXISTS eu_aqi_hourly (
    city_id     text NOT NULL REFERENCES cities (city_id),
    device_key  integer NOT NULL,
    bucket      timestamptz NOT NULL,
    pm25        smallint CHECK (pm25 BETWEEN 1 AND 5),
    pm10        smallint CHECK (pm10 BETWEEN 1 AND 5),
    no2         smallint CHECK (no2 BETWEEN 1 AND 5),
    o3          smallint CHECK (o3 BETWEEN 1 AND 5),
    so2         smallint CHECK (so2 BETWEEN 1 AND 5),
    band        smallint NOT NULL CHECK (band BETWEEN 1 AND 5),
    computed_at timestamptz NOT NULL DEFAULT now(),  -- when the row last changed
    PRIMARY KEY (city_id, device_key, bucket)
);
CREATE INDEX IF NOT EXISTS eu_aqi_hourly_bucket ON eu_aqi_hourly (city_id, bucket);
