-- A user's grants of their keys to their projects (issue 11): infra reads a key for a project only
-- while a live grant exists. Recorded by the scaffolder when it creates a project whose secrets_ref
-- names the key; revoked by the user (revoked_us set, the row kept for the record). Existing keys
-- get no grant: the vault cannot know which project each one was meant for, so a read for a
-- project created before this version is refused (GRANT_MISSING) until the key is granted.
CREATE TABLE user_secret_grants (
    user_id    TEXT   NOT NULL,
    key        TEXT   NOT NULL,
    project_id TEXT   NOT NULL,
    created_us BIGINT NOT NULL,
    revoked_us BIGINT,
    PRIMARY KEY (user_id, key, project_id)
);
