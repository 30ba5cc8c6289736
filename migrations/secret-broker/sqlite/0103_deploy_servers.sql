-- See migrations/secret-broker/postgres/0102_deploy_servers.sql.
CREATE TABLE deploy_servers (
    server_id  TEXT    PRIMARY KEY,
    project_id TEXT    NOT NULL,
    bound_us   INTEGER NOT NULL
);
