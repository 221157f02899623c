-- TimescaleDB: daily chunks, compression segmented by meter and ordered by time, retention.
SELECT create_hypertable('reading_data', 'ts',
                         chunk_time_interval => INTERVAL '1 day',
                         if_not_exists => TRUE);

ALTER TABLE reading_data SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'meter_id',
    timescaledb.compress_orderby = 'channel, ts DESC'
);

SELECT add_compression_policy('reading_data', INTERVAL '7 days', if_not_exists => TRUE);
SELECT add_retention_policy('reading_data', INTERVAL '1095 days', if_not_exists => TRUE);
