-- Vault (L3 user secrets). Version numbers from 100: 1-99 belong to the audit tables.

-- Data keys, each wrapped (AES-256-GCM) by one master key of VAULT_MASTER_KEY. kcv is a key
-- check value of that master key, so a wrong VAULT_MASTER_KEY is named at start-up.
CREATE TABLE data_keys (
    id            BIGINT PRIMARY KEY,
    master_key_id TEXT   NOT NULL,
    wrapped       BYTEA  NOT NULL,
    kcv           BYTEA  NOT NULL,
    state         TEXT   NOT NULL CHECK (state IN ('primary', 'decrypt_only', 'retired')),
    encryptions   BIGINT NOT NULL DEFAULT 0,
    created_us    BIGINT NOT NULL
);
CREATE UNIQUE INDEX data_keys_one_primary ON data_keys (state) WHERE state = 'primary';

-- One row per (user, key): its newest version number, for check-and-set.
CREATE TABLE user_vault_keys (
    user_id         TEXT   NOT NULL,
    key             TEXT   NOT NULL,
    current_version BIGINT NOT NULL,
    created_us      BIGINT NOT NULL,
    updated_us      BIGINT NOT NULL,
    PRIMARY KEY (user_id, key)
);

-- The seed's user_vault (user_id, key, encrypted_value), one row per version. The ciphertext's
-- AAD binds it to (user_id, key, version).
CREATE TABLE user_vault (
    user_id         TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    version         BIGINT  NOT NULL,
    data_key_id     BIGINT  REFERENCES data_keys (id),
    encrypted_value BYTEA,
    created_us      BIGINT  NOT NULL,
    deleted_us      BIGINT,
    destroyed       BIGINT  NOT NULL DEFAULT 0 CHECK (destroyed IN (0, 1)),
    PRIMARY KEY (user_id, key, version),
    FOREIGN KEY (user_id, key) REFERENCES user_vault_keys (user_id, key)
);
CREATE INDEX user_vault_data_key ON user_vault (data_key_id) WHERE encrypted_value IS NOT NULL;

-- Idempotent Put: a retried request id returns the version the first call wrote.
CREATE TABLE put_requests (
    request_id TEXT   PRIMARY KEY,
    user_id    TEXT   NOT NULL,
    key        TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    created_us BIGINT NOT NULL
);
