-- See migrations/vault/postgres/0100_user_vault.sql.
CREATE TABLE data_keys (
    id            INTEGER PRIMARY KEY,
    master_key_id TEXT    NOT NULL,
    wrapped       BLOB    NOT NULL,
    kcv           BLOB    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('primary', 'decrypt_only', 'retired')),
    encryptions   INTEGER NOT NULL DEFAULT 0,
    created_us    INTEGER NOT NULL
);
CREATE UNIQUE INDEX data_keys_one_primary ON data_keys (state) WHERE state = 'primary';

CREATE TABLE user_vault_keys (
    user_id         TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    current_version INTEGER NOT NULL,
    created_us      INTEGER NOT NULL,
    updated_us      INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
);

CREATE TABLE user_vault (
    user_id         TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    data_key_id     INTEGER REFERENCES data_keys (id),
    encrypted_value BLOB,
    created_us      INTEGER NOT NULL,
    deleted_us      INTEGER,
    destroyed       INTEGER NOT NULL DEFAULT 0 CHECK (destroyed IN (0, 1)),
    PRIMARY KEY (user_id, key, version),
    FOREIGN KEY (user_id, key) REFERENCES user_vault_keys (user_id, key)
);
CREATE INDEX user_vault_data_key ON user_vault (data_key_id) WHERE encrypted_value IS NOT NULL;

CREATE TABLE put_requests (
    request_id TEXT    PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    created_us INTEGER NOT NULL
);
