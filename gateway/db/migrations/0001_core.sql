-- Core schema: meter registry, readings storage, the `readings` read model, dead letters.

CREATE TABLE meters (
    meter_id            text COLLATE "C" PRIMARY KEY CHECK (meter_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    utility             text NOT NULL DEFAULT 'unknown'
                        CHECK (utility IN ('electricity', 'water', 'unknown')),
    payment             text NOT NULL DEFAULT 'unknown'
                        CHECK (payment IN ('prepaid', 'postpaid', 'unknown')),
    transport           text NOT NULL DEFAULT 'mqtt' CHECK (transport IN ('mqtt', 'modbus')),
    verified            boolean NOT NULL DEFAULT false,
    reporting_interval_s integer NOT NULL DEFAULT 900 CHECK (reporting_interval_s > 0),
    time_zone           text NOT NULL DEFAULT 'UTC',
    modbus_host         text,
    modbus_port         integer CHECK (modbus_port BETWEEN 1 AND 65535),
    modbus_unit         integer CHECK (modbus_unit BETWEEN 0 AND 247),
    modbus_word_order   text CHECK (modbus_word_order IN ('ABCD', 'CDAB', 'BADC', 'DCBA')),
    register_map        jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_seen           timestamptz,
    last_reading_ts     timestamptz,
    online              boolean,
    status              jsonb,
    CHECK (transport <> 'modbus'
           OR (modbus_host IS NOT NULL AND modbus_port IS NOT NULL AND modbus_unit IS NOT NULL))
);

-- One row per stored reading. The primary key is the idempotency key: a redelivered or
-- duplicated reading (same meter, channel and device instant) is stored once.
-- Identifiers are ASCII: the "C" collation compares them bytewise, which keeps the key index
-- fast (any other collation calls strcoll for every comparison).
CREATE TABLE reading_data (
    meter_id    text COLLATE "C" NOT NULL,
    channel     text COLLATE "C" NOT NULL,
    ts          timestamptz NOT NULL,
    value       double precision NOT NULL,
    raw_ts      text,
    quality     text NOT NULL DEFAULT 'measured'
                CHECK (quality IN ('measured', 'estimated', 'backfilled')),
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, channel, ts)
);

-- The stable read model for billing exports and dashboards.
CREATE VIEW readings AS
    SELECT meter_id, ts, channel, value, quality, raw_ts, received_at
    FROM reading_data;

COMMENT ON VIEW readings IS
    'One row per stored reading: meter_id, ts (UTC), channel (OBIS code or name), value.';

-- Messages that could not be stored, kept whole with the reason, never silently dropped.
CREATE TABLE dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    topic       text NOT NULL,
    payload     bytea NOT NULL,
    reason      text NOT NULL,
    detail      text NOT NULL
);
CREATE INDEX dead_letters_received_at ON dead_letters (received_at);

-- Meter events (alarms, tamper, relay/valve changes, token results); idempotent like readings.
CREATE TABLE meter_events (
    meter_id    text COLLATE "C" NOT NULL,
    ts          timestamptz NOT NULL,
    type        text COLLATE "C" NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}',
    raw_ts      text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, ts, type)
);
CREATE INDEX meter_events_ts ON meter_events (ts);
