-- The secret broker's state: which repository each project has, and a reference per Actions
-- secret it wrote there. Never a value (L2 values go straight to GitHub).
CREATE TABLE repositories (
    project_id      TEXT    PRIMARY KEY,
    owner           TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    installation_id INTEGER  NOT NULL,
    created_us      INTEGER  NOT NULL,
    UNIQUE (owner, name)
);

-- state: 'pending' is written before a PUT, 'present' only after GitHub accepted it, 'failed'
-- after a final error. A 'pending' row left by a crash is settled by ReconcileProjectSecrets.
CREATE TABLE secret_refs (
    project_id        TEXT    NOT NULL REFERENCES repositories (project_id),
    name              TEXT    NOT NULL,
    state             TEXT    NOT NULL CHECK (state IN ('pending', 'present', 'failed')),
    github_updated_at TEXT,
    key_id            TEXT,
    recorded_us       INTEGER  NOT NULL,
    written_by        TEXT    NOT NULL,
    deploy            INTEGER  NOT NULL DEFAULT 0,
    last_error        TEXT,
    PRIMARY KEY (project_id, name)
);

-- Writes to one installation are paced across replicas: a writer holds this row's lock (on
-- PostgreSQL) while it waits out the interval and writes.
CREATE TABLE installation_pacing (
    installation_id INTEGER PRIMARY KEY,
    last_write_us   INTEGER NOT NULL
);

-- Idempotent writes: what a request id already did, per secret name.
CREATE TABLE write_requests (
    request_id        TEXT    NOT NULL,
    project_id        TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    outcome           TEXT    NOT NULL CHECK (outcome IN ('created', 'updated')),
    key_id            TEXT    NOT NULL,
    github_updated_at TEXT,
    recorded_us       INTEGER  NOT NULL,
    PRIMARY KEY (request_id, name)
);
