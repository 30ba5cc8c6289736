-- Secrets are kept in one of four places at GitHub (issue 14): the repository's Actions secrets,
-- a deployment environment's, the repository's Dependabot secrets, or the organization's. A
-- reference and a recorded write name theirs (`repository`, `environment:<name>` lower-cased,
-- `dependabot`, `organization`), so one name can live in several places. Existing rows were
-- all written to the repository's Actions secrets. SQLite cannot change a primary key in
-- place: the tables are copied.
CREATE TABLE secret_refs_new (
    project_id        TEXT    NOT NULL REFERENCES repositories (project_id),
    location          TEXT    NOT NULL DEFAULT 'repository',
    name              TEXT    NOT NULL,
    state             TEXT    NOT NULL CHECK (state IN ('pending', 'present', 'failed')),
    github_updated_at TEXT,
    key_id            TEXT,
    recorded_us       INTEGER  NOT NULL,
    written_by        TEXT    NOT NULL,
    deploy            INTEGER  NOT NULL DEFAULT 0,
    last_error        TEXT,
    PRIMARY KEY (project_id, location, name)
);
INSERT INTO secret_refs_new (project_id, name, state, github_updated_at, key_id, recorded_us, written_by, deploy, last_error)
    SELECT project_id, name, state, github_updated_at, key_id, recorded_us, written_by, deploy, last_error FROM secret_refs;
DROP TABLE secret_refs;
ALTER TABLE secret_refs_new RENAME TO secret_refs;
-- An organization secret belongs to the one project that first wrote it.
CREATE UNIQUE INDEX secret_refs_organization_name ON secret_refs (name) WHERE location = 'organization';

CREATE TABLE write_requests_new (
    request_id        TEXT    NOT NULL,
    project_id        TEXT    NOT NULL,
    location          TEXT    NOT NULL DEFAULT 'repository',
    name              TEXT    NOT NULL,
    outcome           TEXT    NOT NULL CHECK (outcome IN ('created', 'updated')),
    key_id            TEXT    NOT NULL,
    github_updated_at TEXT,
    recorded_us       INTEGER  NOT NULL,
    PRIMARY KEY (request_id, project_id, location, name)
);
INSERT INTO write_requests_new (request_id, project_id, name, outcome, key_id, github_updated_at, recorded_us)
    SELECT request_id, project_id, name, outcome, key_id, github_updated_at, recorded_us FROM write_requests;
DROP TABLE write_requests;
ALTER TABLE write_requests_new RENAME TO write_requests;
