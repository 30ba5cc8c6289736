-- See migrations/audit/postgres/0001_audit.sql. SQLite has no roles: the triggers keep the log
-- append-only for the service; the MAC chain detects edits made around them.
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    at_us      INTEGER NOT NULL,
    caller     TEXT    NOT NULL,
    method     TEXT    NOT NULL,
    target     TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    request_id TEXT    NOT NULL,
    detail     TEXT    NOT NULL,
    digest     BLOB,
    mac        BLOB    NOT NULL
);
CREATE INDEX audit_log_target ON audit_log (target, seq);

CREATE TABLE audit_head (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    mac BLOB    NOT NULL
);
INSERT INTO audit_head (id, seq, mac) VALUES (1, 0, zeroblob(32));

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
