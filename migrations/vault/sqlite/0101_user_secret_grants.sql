-- See migrations/vault/postgres/0101_user_secret_grants.sql.
CREATE TABLE user_secret_grants (
    user_id    TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    project_id TEXT    NOT NULL,
    created_us INTEGER NOT NULL,
    revoked_us INTEGER,
    PRIMARY KEY (user_id, key, project_id)
);
