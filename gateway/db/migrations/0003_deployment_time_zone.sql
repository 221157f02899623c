-- The deployment time zone, and aggregates whose buckets mean the same on both variants:
-- hourly buckets are UTC hours, daily buckets start at local midnight of the deployment zone
-- (GATEWAY_DEPLOYMENT_TIME_ZONE, substituted for :'deployment_time_zone' when this migration
-- is applied, and recorded here so that a later migrate with another zone is refused).

CREATE TABLE deployment_settings (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    time_zone   text NOT NULL
);

INSERT INTO deployment_settings (time_zone) VALUES (:'deployment_time_zone');

COMMENT ON TABLE deployment_settings IS
    'One row: the IANA time zone whose local days readings_daily buckets by.';
