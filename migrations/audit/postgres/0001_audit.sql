-- The audit log of one service (in that service's schema). Each record carries a MAC over the
-- previous record's MAC and its own fields, keyed by the service's AUDIT_KEY, which the
-- database never holds. audit_head holds the newest (seq, mac), locked by each appending
-- transaction so the chain stays linear across replicas.
CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY,
    at_us      BIGINT NOT NULL,
    caller     TEXT   NOT NULL,
    method     TEXT   NOT NULL,
    target     TEXT   NOT NULL,
    outcome    TEXT   NOT NULL,
    request_id TEXT   NOT NULL,
    detail     TEXT   NOT NULL,
    digest     BYTEA,
    mac        BYTEA  NOT NULL
);
CREATE INDEX audit_log_target ON audit_log (target, seq);

CREATE TABLE audit_head (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    mac BYTEA  NOT NULL
);
INSERT INTO audit_head (id, seq, mac) VALUES (1, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- Records are append-only, even for the role that owns them: no UPDATE, DELETE or TRUNCATE
-- privilege, and a trigger for whoever has one anyway. (The MAC chain detects edits by anyone
-- who bypasses both, e.g. a superuser.)
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM CURRENT_USER;
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
