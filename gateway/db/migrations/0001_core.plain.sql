-- Plain PostgreSQL: the primary key serves per-meter time ranges; a BRIN index on the
-- append-mostly ts column serves fleet-wide time-range scans at a tiny fraction of a btree.
CREATE INDEX reading_data_ts_brin ON reading_data USING brin (ts) WITH (pages_per_range = 32);
