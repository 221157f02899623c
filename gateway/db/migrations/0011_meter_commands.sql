-- Signed commands to meters (docs/protocol.md §7) and their confirmation from the meter's own
-- reported state (docs/credit-control.md, "Commands to meters").

-- When the meter's status document was last received, so that only state reported after a
-- command was issued can confirm it; and whether a remote reconnect only arms the relay (the
-- customer presses the meter's button).
ALTER TABLE meters
    ADD COLUMN status_received_at timestamptz,
    ADD COLUMN reconnect_mode text NOT NULL DEFAULT 'remote'
                              CHECK (reconnect_mode IN ('remote', 'arm'));

-- One row per command ordered to a meter: by a credit-control run or release, or by a person.
-- Its life is planned -> sent -> acknowledged -> confirmed, or rejected / unconfirmed /
-- expired (waiting for the meter to come back) / cancelled (superseded, or the order no longer
-- stands), each with the reason in `outcome`. Windowed commands (credit-control orders) wait
-- for the execution window and the rate limit.
CREATE TABLE meter_commands (
    command_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id        text COLLATE "C" NOT NULL REFERENCES meters (meter_id),
    action          text NOT NULL CHECK (action IN ('disconnect', 'reconnect', 'arm_reconnect',
                                                    'restrict', 'close_valve', 'restore',
                                                    'read_state')),
    state           text NOT NULL DEFAULT 'planned'
                    CHECK (state IN ('planned', 'sent', 'acknowledged', 'confirmed', 'rejected',
                                     'unconfirmed', 'expired', 'cancelled')),
    origin          text NOT NULL CHECK (origin IN ('manual', 'credit_control')),
    requested_by    text NOT NULL,
    reason          text NOT NULL DEFAULT '' CHECK (length(reason) <= 500),
    outcome         text NOT NULL DEFAULT '',
    account_id      text COLLATE "C" REFERENCES accounts (account_id),
    run_id          bigint,
    item_no         integer,
    windowed        boolean NOT NULL DEFAULT false,
    not_before      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    probes          integer NOT NULL DEFAULT 0,
    reissues        integer NOT NULL DEFAULT 0,
    due_at          timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    acknowledged_at timestamptz,
    confirmed_at    timestamptz,
    finished_at     timestamptz,
    confirmed_state jsonb,
    UNIQUE (run_id, item_no),
    FOREIGN KEY (run_id, item_no) REFERENCES control_run_items (run_id, item_no)
);
CREATE INDEX meter_commands_meter ON meter_commands (meter_id, command_id DESC);
CREATE INDEX meter_commands_account ON meter_commands (account_id) WHERE account_id IS NOT NULL;
CREATE INDEX meter_commands_live ON meter_commands (state, not_before)
    WHERE state IN ('planned', 'sent', 'acknowledged', 'expired');

-- Every signed message published for a command: its attempts and its read_state probes, each
-- with a fresh id and nonce. The row is committed before the message is published, so a crash
-- between the two publishes the same bytes again (the meter refuses a repeat as `replayed`)
-- rather than losing it or signing a second one. The payload holds a signature, never a key.
CREATE TABLE command_messages (
    message_id    text COLLATE "C" PRIMARY KEY CHECK (message_id ~ '^[A-Za-z0-9_-]{1,128}$'),
    command_id    bigint NOT NULL REFERENCES meter_commands (command_id),
    meter_id      text COLLATE "C" NOT NULL,
    action        text NOT NULL,
    payload       bytea NOT NULL,
    issued_at     timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    publishes     integer NOT NULL DEFAULT 0,
    publish_failures integer NOT NULL DEFAULT 0,
    reply_result  text CHECK (reply_result IN ('ok', 'rejected')),
    reply_reason  text,
    replied_at    timestamptz
);
CREATE INDEX command_messages_command ON command_messages (command_id, created_at);
CREATE INDEX command_messages_created ON command_messages (created_at);
CREATE INDEX command_messages_unpublished ON command_messages (created_at)
    WHERE published_at IS NULL;

-- Every reply received on meters/{id}/commands/reply, as received (written in the ingest
-- transaction), including replies to commands this gateway never sent (a forged command the
-- meter refused). The command loop applies each once (`applied_at`).
CREATE TABLE command_replies (
    reply_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter_id    text COLLATE "C" NOT NULL,
    message_id  text COLLATE "C" NOT NULL,
    result      text NOT NULL CHECK (result IN ('ok', 'rejected')),
    reason      text,
    ts          timestamptz NOT NULL,
    relay       text,
    valve       text,
    received_at timestamptz NOT NULL DEFAULT now(),
    applied_at  timestamptz,
    outcome     text,
    UNIQUE NULLS NOT DISTINCT (meter_id, message_id, result, reason, ts)
);
CREATE INDEX command_replies_unapplied ON command_replies (reply_id) WHERE applied_at IS NULL;

-- Fees charged to an account by credit control (the reconnection fee), once per command.
CREATE TABLE account_charges (
    charge_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id text COLLATE "C" NOT NULL REFERENCES accounts (account_id),
    kind       text NOT NULL CHECK (kind IN ('reconnection_fee')),
    amount     numeric(14, 2) NOT NULL CHECK (amount > 0),
    command_id bigint UNIQUE REFERENCES meter_commands (command_id),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Run items that became commands: `ordered` until the command ends, then `done` (confirmed)
-- or `failed` (rejected, unconfirmed, cancelled).
ALTER TABLE control_run_items DROP CONSTRAINT control_run_items_state_check;
ALTER TABLE control_run_items ADD CONSTRAINT control_run_items_state_check
    CHECK (state IN ('planned', 'done', 'skipped', 'not_executed', 'ordered', 'failed'));

-- A command nobody could confirm, or one the meter refused, puts the meter on the technicians'
-- work list as an alert of its own kind.
ALTER TABLE alert_data DROP CONSTRAINT alert_data_kind_check;
ALTER TABLE alert_data ADD CONSTRAINT alert_data_kind_check CHECK (kind IN (
    'leak', 'burst', 'reverse_flow', 'stuck_register', 'register_rollback', 'comms_loss',
    'clock_drift', 'voltage_sag', 'voltage_swell', 'tamper_cover', 'tamper_magnetic',
    'command_unconfirmed', 'command_rejected'));
