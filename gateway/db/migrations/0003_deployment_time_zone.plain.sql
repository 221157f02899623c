-- Plain PostgreSQL: the three-argument date_trunc is independent of the session's TimeZone,
-- which the two-argument form (used before) silently depends on.
DROP VIEW readings_daily;
DROP VIEW readings_hourly;

CREATE VIEW readings_hourly AS
    SELECT meter_id, channel,
           date_trunc('hour', ts, 'UTC') AS bucket,
           min(value) AS min_value, max(value) AS max_value, avg(value) AS avg_value,
           count(*) AS samples,
           (array_agg(value ORDER BY ts))[1] AS first_value,
           (array_agg(value ORDER BY ts DESC))[1] AS last_value
    FROM reading_data
    GROUP BY meter_id, channel, date_trunc('hour', ts, 'UTC');

CREATE VIEW readings_daily AS
    SELECT meter_id, channel,
           date_trunc('day', ts, :'deployment_time_zone') AS bucket,
           min(value) AS min_value, max(value) AS max_value, avg(value) AS avg_value,
           count(*) AS samples,
           (array_agg(value ORDER BY ts))[1] AS first_value,
           (array_agg(value ORDER BY ts DESC))[1] AS last_value
    FROM reading_data
    GROUP BY meter_id, channel, date_trunc('day', ts, :'deployment_time_zone');
