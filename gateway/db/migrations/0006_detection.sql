-- Leak and faulty-meter detection: registry fields the rules need, the alerts with their
-- `alerts` read model, the notification outbox, and the queue of meters whose data changed.

-- Small-scale embedded generation must be registered: export on a meter that is not allowed to
-- export is reverse flow. register_max is the capacity at which the main register rolls over
-- (unset: the next power of ten above its value).
ALTER TABLE meters
    ADD COLUMN export_allowed boolean NOT NULL DEFAULT false,
    ADD COLUMN register_max double precision CHECK (register_max > 0);

-- One row per episode of one problem on one meter. start_ts/end_ts are data time (the readings'
-- ts); end_ts is NULL while the condition lasts. An alert that later data disproves is withdrawn,
-- never deleted: it leaves the `alerts` view and the work list, and the row stays as a record.
CREATE TABLE alert_data (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id        text COLLATE "C" NOT NULL,
    kind            text NOT NULL CHECK (kind IN (
                        'leak', 'burst', 'reverse_flow', 'stuck_register', 'register_rollback',
                        'comms_loss', 'clock_drift', 'voltage_sag', 'voltage_swell',
                        'tamper_cover', 'tamper_magnetic')),
    severity        text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    start_ts        timestamptz NOT NULL,
    end_ts          timestamptz CHECK (end_ts >= start_ts),
    evidence        jsonb NOT NULL DEFAULT '{}',
    detected_at     timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    acknowledged_by text,
    acknowledged_at timestamptz,
    resolved_by     text,
    resolved_at     timestamptz,
    note            text,
    withdrawn_at    timestamptz,
    withdrawn_reason text
);
CREATE INDEX alert_data_meter ON alert_data (meter_id, kind, start_ts)
    WHERE withdrawn_at IS NULL;
CREATE INDEX alert_data_open ON alert_data (severity, start_ts)
    WHERE withdrawn_at IS NULL AND end_ts IS NULL AND resolved_at IS NULL;

-- The stable read model for dashboards and reports: the API's alert object, column for column.
CREATE VIEW alerts AS
    SELECT id,
           meter_id,
           kind,
           CASE WHEN end_ts IS NULL AND resolved_at IS NULL THEN 'open' ELSE 'closed' END
               AS state,
           start_ts AS start,
           coalesce(end_ts, resolved_at) AS "end",
           detected_at,
           severity,
           evidence,
           acknowledged_by,
           note
    FROM alert_data
    WHERE withdrawn_at IS NULL;

COMMENT ON VIEW alerts IS
    'Current alerts (withdrawn ones excluded); start/end are data time, end NULL while open.';

-- Transactional outbox: one row per opened alert, written in the same transaction; a notifier
-- (SMS, e-mail, webhook) drains it and sets sent_at. Receivers dedupe on id.
CREATE TABLE alert_outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id    bigint NOT NULL REFERENCES alert_data (id),
    event       text NOT NULL DEFAULT 'opened',
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz,
    attempts    integer NOT NULL DEFAULT 0
);
CREATE INDEX alert_outbox_unsent ON alert_outbox (id) WHERE sent_at IS NULL;

-- Meters whose stored data changed, with the data-time range that changed: written in the
-- ingest transaction (so a commit and its queue entry are one), drained by the detection loop.
CREATE TABLE detection_queue (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id    text COLLATE "C" NOT NULL,
    lo          timestamptz NOT NULL,
    hi          timestamptz NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT now()
);
