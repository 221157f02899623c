-- Storage that never hides a conflict: reading conflicts, content-keyed events, dead letters
-- stored once per message, and notifications of meter time-zone changes.

-- A reading that arrives for a stored (meter, channel, ts) with the same quality but another
-- value does not replace the stored one (the first is kept); it is recorded here instead, once
-- per distinct value. Better quality replaces worse in reading_data itself
-- (measured > backfilled > estimated), and an identical redelivery is a silent duplicate.
CREATE TABLE reading_conflicts (
    meter_id     text COLLATE "C" NOT NULL,
    channel      text COLLATE "C" NOT NULL,
    ts           timestamptz NOT NULL,
    quality      text NOT NULL CHECK (quality IN ('measured', 'estimated', 'backfilled')),
    value        double precision NOT NULL,
    raw_ts       text,
    stored_value double precision NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, channel, ts, value)
);
CREATE INDEX reading_conflicts_received_at ON reading_conflicts (received_at);

COMMENT ON TABLE reading_conflicts IS
    'Readings refused because another value of the same quality was already stored:'
    ' value is what arrived, stored_value what reading_data held.';

-- Events: keyed on their content, so that two different events of one type at one instant
-- both survive while a redelivered event is stored once. event_key is SHA-256 over the type and
-- the canonical JSON of the details (computed by the gateway); rows from before this migration
-- get a key derived from PostgreSQL's own jsonb text.
ALTER TABLE meter_events ADD COLUMN event_key bytea;
UPDATE meter_events SET event_key = sha256(convert_to(type || E'\n' || details::text, 'UTF8'));
ALTER TABLE meter_events ALTER COLUMN event_key SET NOT NULL;
ALTER TABLE meter_events DROP CONSTRAINT meter_events_pkey;
ALTER TABLE meter_events ADD PRIMARY KEY (meter_id, ts, event_key);

-- Dead letters: one row per distinct message (topic and payload hash); a redelivery counts
-- up `deliveries`. Only the first 64 KiB of a payload are kept; payload_length and
-- payload_sha256 describe the whole message.
ALTER TABLE dead_letters
    ADD COLUMN payload_length   integer,
    ADD COLUMN payload_sha256   bytea,
    ADD COLUMN deliveries       integer NOT NULL DEFAULT 1 CHECK (deliveries > 0),
    ADD COLUMN last_received_at timestamptz;
UPDATE dead_letters
SET payload_length = length(payload), payload_sha256 = sha256(payload),
    last_received_at = received_at;
-- Fold earlier copies of one message into its first row, counting them.
WITH copies AS (
    SELECT min(id) AS keep, count(*) AS n, max(received_at) AS last
    FROM dead_letters GROUP BY topic, payload_sha256 HAVING count(*) > 1
)
UPDATE dead_letters d SET deliveries = c.n, last_received_at = c.last
FROM copies c WHERE d.id = c.keep;
DELETE FROM dead_letters d USING dead_letters k
WHERE k.topic = d.topic AND k.payload_sha256 = d.payload_sha256 AND k.id < d.id;
ALTER TABLE dead_letters
    ALTER COLUMN payload_length SET NOT NULL,
    ALTER COLUMN payload_sha256 SET NOT NULL,
    ALTER COLUMN last_received_at SET NOT NULL,
    ALTER COLUMN last_received_at SET DEFAULT now();
CREATE UNIQUE INDEX dead_letters_message ON dead_letters (payload_sha256, topic);

-- Meter time zones: the gateway reads device times without an offset in the meter's zone and
-- keeps the zones in memory; this tells every gateway as soon as a zone is set or changed.
CREATE FUNCTION notify_meter_zone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meter_zone', NEW.meter_id || ' ' || NEW.time_zone);
    RETURN NULL;
END
$$;
CREATE TRIGGER meters_zone_registered AFTER INSERT ON meters
    FOR EACH ROW WHEN (NEW.time_zone <> 'UTC') EXECUTE FUNCTION notify_meter_zone();
CREATE TRIGGER meters_zone_changed AFTER UPDATE OF time_zone ON meters
    FOR EACH ROW WHEN (OLD.time_zone IS DISTINCT FROM NEW.time_zone)
    EXECUTE FUNCTION notify_meter_zone();
