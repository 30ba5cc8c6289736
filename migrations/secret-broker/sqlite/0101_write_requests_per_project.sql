-- A request id is the caller's, and two projects may pick the same one: a recorded write
-- belongs to (request id, project, secret), not to (request id, secret). SQLite cannot change a
-- primary key in place: the table is copied.
CREATE TABLE write_requests_new (
    request_id        TEXT    NOT NULL,
    project_id        TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    outcome           TEXT    NOT NULL CHECK (outcome IN ('created', 'updated')),
    key_id            TEXT    NOT NULL,
    github_updated_at TEXT,
    recorded_us       INTEGER  NOT NULL,
    PRIMARY KEY (request_id, project_id, name)
);
INSERT INTO write_requests_new SELECT request_id, project_id, name, outcome, key_id, github_updated_at, recorded_us FROM write_requests;
DROP TABLE write_requests;
ALTER TABLE write_requests_new RENAME TO write_requests;
