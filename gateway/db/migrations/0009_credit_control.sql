-- Credit control: the accounts' credit-control terms (arrears age, contacts, disputes,
-- arrangements, essential supply), payments, the rows of imported billing files, and the
-- versioned credit-control policy. Money is numeric (ZAR, cents).

ALTER TABLE accounts
    ADD COLUMN arrears_since     date,
    ADD COLUMN arrears_as_of     date,
    ADD COLUMN contact_numbers   text[] NOT NULL DEFAULT '{}',
    ADD COLUMN essential         boolean NOT NULL DEFAULT false,
    ADD COLUMN essential_reason  text NOT NULL DEFAULT '',
    ADD COLUMN pays_above_free_allocation boolean NOT NULL DEFAULT false,
    ADD COLUMN dispute_amount    numeric(14, 2) NOT NULL DEFAULT 0 CHECK (dispute_amount >= 0),
    ADD COLUMN dispute_state     text NOT NULL DEFAULT 'none'
                                 CHECK (dispute_state IN ('none', 'open', 'resolved', 'rejected')),
    ADD COLUMN arrangement_state text NOT NULL DEFAULT 'none'
                                 CHECK (arrangement_state IN ('none', 'active', 'broken',
                                                              'completed')),
    ADD COLUMN arrangement_since date,
    ADD COLUMN arrangement_instalment numeric(14, 2) CHECK (arrangement_instalment > 0);

-- Payments from the billing system or the operator API. The reference is the idempotency key:
-- the same payment recorded twice is stored (and reduces the arrears) once. `applied` is the
-- part that reduced the arrears (a payment above the arrears leaves them at zero).
CREATE TABLE account_payments (
    payment_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reference   text COLLATE "C" NOT NULL UNIQUE CHECK (reference ~ '^[A-Za-z0-9_.:/-]{1,64}$'),
    account_id  text COLLATE "C" NOT NULL REFERENCES accounts (account_id),
    amount      numeric(14, 2) NOT NULL CHECK (amount > 0),
    applied     numeric(14, 2) NOT NULL CHECK (applied >= 0 AND applied <= amount),
    paid_at     timestamptz NOT NULL,
    source      text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_payments_account ON account_payments (account_id, paid_at);

-- Rows of imported account and arrears files already applied, by a key over the row's
-- content: importing the same file twice changes nothing.
CREATE TABLE control_import_rows (
    kind        text NOT NULL CHECK (kind IN ('accounts', 'arrears')),
    row_key     text COLLATE "C" NOT NULL,
    account_id  text COLLATE "C" NOT NULL,
    source      text NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, row_key)
);

-- The credit-control policy, one row per version; the highest version is in force.
CREATE TABLE control_policies (
    version    integer PRIMARY KEY CHECK (version > 0),
    policy     jsonb NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- An account's (and a meter's) history is read from the audit log by object.
CREATE INDEX audit_log_object ON audit_log (object, id);

-- Where each account stands in the credit-control process. `debt_at_action` is the arrears
-- when the current action (block, disconnection, restriction) began; payments since
-- `action_started_at` count towards the policy's share for release.
CREATE TABLE control_accounts (
    account_id             text COLLATE "C" PRIMARY KEY REFERENCES accounts (account_id),
    notice_served_on       date,
    final_notice_served_on date,
    action_started_at      timestamptz,
    debt_at_action         numeric(14, 2) NOT NULL DEFAULT 0,
    share_before_block     numeric(5, 2),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- What credit control has done to each meter.
CREATE TABLE control_meters (
    meter_id   text COLLATE "C" PRIMARY KEY REFERENCES meters (meter_id),
    account_id text COLLATE "C" NOT NULL REFERENCES accounts (account_id),
    state      text NOT NULL DEFAULT 'normal'
               CHECK (state IN ('normal', 'disconnected', 'blocked', 'restricted')),
    since      timestamptz NOT NULL DEFAULT now()
);

-- Credit-control runs: planned, then approved by an operator (or halted).
CREATE TABLE control_runs (
    run_id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state             text NOT NULL DEFAULT 'planned'
                      CHECK (state IN ('planned', 'approved', 'halted')),
    policy_version    integer NOT NULL,
    as_of             date NOT NULL,
    fleet_share_limit numeric(5, 2) NOT NULL,
    fleet_meters      integer NOT NULL,
    planned_by        text NOT NULL,
    planned_at        timestamptz NOT NULL DEFAULT now(),
    approved_by       text,
    approved_at       timestamptz
);

-- One planned step per account (notices) or per meter (orders, review, release).
CREATE TABLE control_run_items (
    run_id      bigint NOT NULL REFERENCES control_runs (run_id),
    item_no     integer NOT NULL,
    account_id  text COLLATE "C" NOT NULL,
    meter_id    text COLLATE "C",
    step        text NOT NULL,
    reasons     text[] NOT NULL,
    checks      jsonb NOT NULL,
    ground      numeric(14, 2) NOT NULL,
    state       text NOT NULL DEFAULT 'planned'
                CHECK (state IN ('planned', 'done', 'skipped', 'not_executed')),
    outcome     text NOT NULL DEFAULT '',
    executed_at timestamptz,
    PRIMARY KEY (run_id, item_no)
);

-- The operator's stop switch: while halted, nothing of any run executes.
CREATE TABLE control_halt (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    halted     boolean NOT NULL,
    changed_by text NOT NULL,
    reason     text NOT NULL DEFAULT '',
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- Customer notices. Each is written with its notification outbox row in one transaction;
-- `served_on` is set when the notifier has delivered it (the day it reached the customer).
CREATE TABLE control_notices (
    notice_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id text COLLATE "C" NOT NULL REFERENCES accounts (account_id),
    kind       text NOT NULL CHECK (kind IN ('notice', 'final_notice', 'disconnection',
                                             'restriction', 'reconnection')),
    amount     numeric(14, 2) NOT NULL,
    run_id     bigint REFERENCES control_runs (run_id),
    created_at timestamptz NOT NULL DEFAULT now(),
    served_on  date
);
CREATE INDEX control_notices_account ON control_notices (account_id, notice_id);

-- The notification outbox is shared with the alerts: a row is an alert's or a notice's.
ALTER TABLE alert_outbox ALTER COLUMN alert_id DROP NOT NULL;
ALTER TABLE alert_outbox ADD COLUMN notice_id bigint REFERENCES control_notices (notice_id);
ALTER TABLE alert_outbox ADD CONSTRAINT alert_outbox_one_subject
    CHECK ((alert_id IS NULL) <> (notice_id IS NULL));
