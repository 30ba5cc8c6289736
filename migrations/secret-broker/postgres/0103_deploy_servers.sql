-- Which project each infra server's deploy credentials belong to (issue 11): bound by the first
-- SetDeployCredentials that names the server, never rebound. A server's credentials are refused
-- for any other project (SERVER_OF_ANOTHER_PROJECT). Existing rows: none needed, a server is bound
-- at its next handover (a rotation) to the project it hands over for.
CREATE TABLE deploy_servers (
    server_id  TEXT   PRIMARY KEY,
    project_id TEXT   NOT NULL,
    bound_us   BIGINT NOT NULL
);
