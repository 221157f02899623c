-- TimescaleDB: readings_hourly (time_bucket on timestamptz: UTC hours) stays; readings_daily is
-- recreated with days of the deployment zone. Dropping it drops its refresh policy too.
DROP MATERIALIZED VIEW readings_daily;

CREATE MATERIALIZED VIEW readings_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
    SELECT meter_id, channel,
           time_bucket(INTERVAL '1 day', ts, :'deployment_time_zone') AS bucket,
           min(value) AS min_value, max(value) AS max_value, avg(value) AS avg_value,
           count(*) AS samples,
           first(value, ts) AS first_value,
           last(value, ts) AS last_value
    FROM reading_data
    GROUP BY meter_id, channel, time_bucket(INTERVAL '1 day', ts, :'deployment_time_zone')
WITH NO DATA;

SELECT add_continuous_aggregate_policy('readings_daily',
    start_offset => INTERVAL '120 days',
    end_offset => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 hour');
