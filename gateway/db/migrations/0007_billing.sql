-- Billing reads: manual, meter-reader and customer reads with their validation outcome, the
-- plausibility limits they are checked against, and the estimates written at period boundaries
-- with what superseded them.

-- A read taken by a person (meter reader, technician) or sent by a customer. Kept apart from
-- reading_data (the meters' own telemetry) so that its source, reader, photo and validation
-- outcome stay with it; the billing export uses accepted reads beside the telemetry.
-- (meter_id, channel, ts, source) is the idempotency key: a re-sent read or a re-imported file
-- line is the same read.
CREATE TABLE billing_reads (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id    text COLLATE "C" NOT NULL REFERENCES meters (meter_id),
    channel     text COLLATE "C" NOT NULL,
    ts          timestamptz NOT NULL,
    value       double precision NOT NULL CHECK (value >= 0),
    source      text NOT NULL CHECK (source IN ('meter_reader', 'technician', 'customer')),
    reader      text,
    photo_ref   text,
    status      text NOT NULL CHECK (status IN ('accepted', 'rejected')),
    reason      text,
    detail      text,
    origin      text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    reviewed_by text,
    reviewed_at timestamptz,
    UNIQUE (meter_id, channel, ts, source),
    CHECK ((status = 'rejected') = (reason IS NOT NULL))
);
CREATE INDEX billing_reads_accepted ON billing_reads (meter_id, channel, ts)
    WHERE status = 'accepted';
CREATE INDEX billing_reads_review ON billing_reads (received_at)
    WHERE status = 'rejected' AND reviewed_at IS NULL;

-- Highest plausible consumption per day, by utility and meter size ('*' = any size).
CREATE TABLE billing_limits (
    utility     text NOT NULL CHECK (utility IN ('electricity', 'water')),
    size        text NOT NULL,
    max_per_day double precision NOT NULL CHECK (max_per_day > 0),
    PRIMARY KEY (utility, size)
);
INSERT INTO billing_limits (utility, size, max_per_day) VALUES
    ('electricity', '*', 250),      -- kWh/day: a large house on a 60 A single-phase supply
    ('water', '*', 5),              -- m3/day: a 15 mm domestic connection running for hours
    ('water', '15mm', 5),
    ('water', '20mm', 10),
    ('water', '25mm', 20),
    ('electricity', '60A', 250),
    ('electricity', '80A-3ph', 1000);

-- The size class of a meter, when known (plausibility limits are looked up by it).
CREATE TABLE billing_meter_sizes (
    meter_id text COLLATE "C" PRIMARY KEY REFERENCES meters (meter_id),
    size     text NOT NULL
);

-- A register read estimated at a period boundary (local midnight), as billed. It stays the
-- boundary read until an actual or accepted read covers the boundary; then it is superseded
-- (never deleted) and the superseding read is kept beside it for the corrections report.
CREATE TABLE billing_estimates (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id        text COLLATE "C" NOT NULL REFERENCES meters (meter_id),
    channel         text COLLATE "C" NOT NULL,
    boundary        timestamptz NOT NULL,
    value           double precision NOT NULL,
    method          text NOT NULL CHECK (method IN ('last_3_months', 'same_month_last_year')),
    daily_rate      double precision NOT NULL,
    basis_ts        timestamptz NOT NULL,
    basis_value     double precision NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    superseded_at   timestamptz,
    actual_value    double precision,
    actual_method   text,
    CHECK ((superseded_at IS NULL) = (actual_value IS NULL))
);
CREATE UNIQUE INDEX billing_estimates_current ON billing_estimates (meter_id, channel, boundary)
    WHERE superseded_at IS NULL;
CREATE INDEX billing_estimates_superseded ON billing_estimates (superseded_at)
    WHERE superseded_at IS NOT NULL;
