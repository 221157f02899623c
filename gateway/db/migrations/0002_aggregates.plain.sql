-- Plain PostgreSQL: hourly and daily aggregates as views over the primary-key index, which
-- serves the usual per-meter, per-channel time-range queries without a materialisation to keep.
CREATE VIEW readings_hourly AS
    SELECT meter_id, channel,
           date_trunc('hour', ts) AS bucket,
           min(value) AS min_value, max(value) AS max_value, avg(value) AS avg_value,
           count(*) AS samples,
           (array_agg(value ORDER BY ts))[1] AS first_value,
           (array_agg(value ORDER BY ts DESC))[1] AS last_value
    FROM reading_data
    GROUP BY meter_id, channel, date_trunc('hour', ts);

CREATE VIEW readings_daily AS
    SELECT meter_id, channel,
           date_trunc('day', ts, 'UTC') AS bucket,
           min(value) AS min_value, max(value) AS max_value, avg(value) AS avg_value,
           count(*) AS samples,
           (array_agg(value ORDER BY ts))[1] AS first_value,
           (array_agg(value ORDER BY ts DESC))[1] AS last_value
    FROM reading_data
    GROUP BY meter_id, channel, date_trunc('day', ts, 'UTC');
