-- Access control and key custody: principals, API keys, login sessions, the append-only audit
-- log, and the key store (secrets only ever stored encrypted under an envelope).

CREATE TABLE principals (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text COLLATE "C" NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    role            text NOT NULL CHECK (role IN ('vendor', 'technician', 'operator', 'admin')),
    kind            text NOT NULL CHECK (kind IN ('person', 'machine')),
    -- argon2id (PHC string) of a person's password; machines authenticate with API keys only.
    password_hash   text CHECK (password_hash IS NULL OR password_hash LIKE '$argon2id$%'),
    failed_logins   integer NOT NULL DEFAULT 0 CHECK (failed_logins >= 0),
    last_failed_at  timestamptz,
    locked_until    timestamptz,
    disabled_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (kind = 'person' OR password_hash IS NULL)
);

-- API keys are 256-bit random values shown once; only their SHA-256 is kept (a fast hash is
-- right for high-entropy secrets: there is nothing to guess).
CREATE TABLE api_keys (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    principal_id    bigint NOT NULL REFERENCES principals (id),
    key_hash        bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    hint            text NOT NULL,
    label           text NOT NULL DEFAULT '' CHECK (length(label) <= 200),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    revoked_at      timestamptz
);
CREATE INDEX api_keys_principal ON api_keys (principal_id);

-- Login sessions of people; the cookie carries a random token, the table its SHA-256.
CREATE TABLE sessions (
    token_hash      bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    principal_id    bigint NOT NULL REFERENCES principals (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    source          text
);
CREATE INDEX sessions_principal ON sessions (principal_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- Who did what, when, from where, and how it ended. Append-only: the trigger below refuses
-- UPDATE and DELETE (and TRUNCATE), whoever asks.
CREATE TABLE audit_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor           text,
    action          text NOT NULL,
    object          text NOT NULL,
    outcome         text NOT NULL,
    source          text,
    request_id      text,
    detail          jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor, at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Every long-lived secret, sealed with AES-256-GCM under its own data key, the data key wrapped
-- under the master key named by master_key_id (a fingerprint, never the key).
CREATE TABLE key_store (
    name            text COLLATE "C" PRIMARY KEY CHECK (name ~ '^[a-z-]+(/[A-Za-z0-9_.-]+)+$'),
    purpose         text NOT NULL CHECK (purpose IN ('sts-vending', 'command')),
    master_key_id   text NOT NULL,
    wrapped_key     bytea NOT NULL,
    ciphertext      bytea NOT NULL,
    attributes      jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    rewrapped_at    timestamptz
);
CREATE INDEX key_store_master ON key_store (master_key_id);
