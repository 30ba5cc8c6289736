-- Projects: what the user asked for, where its repository is, how far its creation got.
-- secrets_ref is JSON (abstract key -> GitHub secret name or vault entry); never a value.
CREATE TABLE projects (
    id              TEXT    PRIMARY KEY,
    request_id      TEXT    NOT NULL UNIQUE,
    name            TEXT    NOT NULL,
    name_key        TEXT    NOT NULL UNIQUE,
    user_id         TEXT    NOT NULL,
    template        TEXT    NOT NULL,
    description     TEXT    NOT NULL,
    visibility      TEXT    NOT NULL,
    owner           TEXT    NOT NULL,
    repository_id   INTEGER,
    secrets_ref     TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('creating', 'ready', 'failed')),
    step            TEXT    NOT NULL,
    failure_code    INTEGER,
    failure_reason  TEXT,
    failure_message TEXT,
    created_us      INTEGER  NOT NULL,
    updated_us      INTEGER  NOT NULL,
    ready_us        INTEGER
);
CREATE INDEX projects_user ON projects (user_id, created_us);
