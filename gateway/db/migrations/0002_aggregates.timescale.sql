-- TimescaleDB: continuous aggregates with the same names and columns as the plain views.
-- Refresh windows (30 days hourly, 120 days daily) lie well inside the 1095-day retention of
-- reading_data, so a refresh never recomputes a bucket whose raw rows retention has dropped
-- (which would silently erase aggregate history).
CREATE MATERIALIZED VIEW readings_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
    SELECT meter_id, channel,
           time_bucket(INTERVAL '1 hour', ts) AS bucket,
           min(value) AS min_value, max(value) AS max_value, avg(value) AS avg_value,
           count(*) AS samples,
           first(value, ts) AS first_value,
           last(value, ts) AS last_value
    FROM reading_data
    GROUP BY meter_id, channel, time_bucket(INTERVAL '1 hour', ts)
WITH NO DATA;

SELECT add_continuous_aggregate_policy('readings_hourly',
    start_offset => INTERVAL '30 days',
    end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes');

CREATE MATERIALIZED VIEW readings_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
    SELECT meter_id, channel,
           time_bucket(INTERVAL '1 day', ts) AS bucket,
           min(value) AS min_value, max(value) AS max_value, avg(value) AS avg_value,
           count(*) AS samples,
           first(value, ts) AS first_value,
           last(value, ts) AS last_value
    FROM reading_data
    GROUP BY meter_id, channel, time_bucket(INTERVAL '1 day', ts)
WITH NO DATA;

SELECT add_continuous_aggregate_policy('readings_daily',
    start_offset => INTERVAL '120 days',
    end_offset => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 hour');
