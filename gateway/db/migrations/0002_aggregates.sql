-- Comms health, computed when read so it is always current: a meter is 'ok' while it reports
-- within 2 intervals, 'late' up to 72 h (the usual utility threshold), then 'lost'.
CREATE VIEW meter_comms AS
    SELECT meter_id,
           last_seen,
           reporting_interval_s,
           CASE
               WHEN last_seen IS NULL THEN 'never'
               WHEN last_seen > now() - make_interval(secs => 2 * reporting_interval_s) THEN 'ok'
               WHEN last_seen > now() - INTERVAL '72 hours' THEN 'late'
               ELSE 'lost'
           END AS comms_state
    FROM meters;
