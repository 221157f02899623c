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
