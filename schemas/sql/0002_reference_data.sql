-- citykpi reference data for the U4SSC KPIs (kpi_rollups): areas with population, city facts and
-- asset counts, KPI targets per city. Every table is versioned by `valid_from`: a KPI for a period
-- uses, per key, the row with the latest valid_from on or before the period's last local day, so a
-- KPI for 2025 uses 2025 populations. Written by `citykpi registry import FILE`.

-- Districts / areas of a city. Noise exposure weights areas by population; devices.area_id says
-- which area a device is in.
CREATE TABLE IF NOT EXISTS areas (
    city_id    text NOT NULL REFERENCES cities (city_id),
    area_id    text NOT NULL,
    name       text NOT NULL DEFAULT '',
    population double precision CHECK (population >= 0),
    area_km2   double precision CHECK (area_km2 > 0),
    valid_from date NOT NULL,
    PRIMARY KEY (city_id, area_id, valid_from)
);

-- City facts and asset counts, one number per key, e.g. population, water_meters_total,
-- electricity_meters_total, major_street_km, drainage_km, signalised_intersections.
CREATE TABLE IF NOT EXISTS city_facts (
    city_id    text NOT NULL REFERENCES cities (city_id),
    key        text NOT NULL,
    value      double precision NOT NULL,
    unit       text NOT NULL DEFAULT '',
    source     text NOT NULL DEFAULT '',
    valid_from date NOT NULL,
    PRIMARY KEY (city_id, key, valid_from)
);

-- KPI targets per city; they override the catalog defaults (kpi_rollups/catalog.toml).
-- component '' is the KPI's headline value; band_edges (three % of target edges) override the
-- default scoring bands 33/66/95.
CREATE TABLE IF NOT EXISTS kpi_targets (
    city_id    text NOT NULL REFERENCES cities (city_id),
    kpi_code   text NOT NULL,
    component  text NOT NULL DEFAULT '',
    target     double precision NOT NULL,
    band_edges double precision[],
    valid_from date NOT NULL,
    PRIMARY KEY (city_id, kpi_code, component, valid_from)
);

-- Device attributes the coverage KPIs need live in devices.metadata (jsonb), set by the registry
-- import: street_km (km of major street a traffic sensor covers), drainage_km (km of storm-water
-- network a drainage sensor monitors), segment_id (sensors on the same segment count once),
-- free_flow_kmh (free-flow speed for the travel time index), role ('district_inflow' for water
-- inflow meters, 'adaptive_signal' for adaptive intersection controllers), intersection_id.
COMMENT ON COLUMN devices.metadata IS
    'KPI attributes (kpi_rollups): street_km, drainage_km, segment_id, free_flow_kmh, role, intersection_id';
