-- Servers and the operations that provision and destroy them. Public keys only: the deploy
-- private key goes to the broker when it is generated and is never stored here.
CREATE TABLE servers (
    id                   TEXT    PRIMARY KEY,
    project_id           TEXT    NOT NULL,
    provider             TEXT    NOT NULL,
    provider_server_id   TEXT,
    state                TEXT    NOT NULL,
    hostname             TEXT    NOT NULL,
    ipv4                 TEXT,
    region               TEXT    NOT NULL,
    size                 TEXT    NOT NULL,
    image                TEXT    NOT NULL,
    deploy_user          TEXT    NOT NULL,
    deploy_public_key    TEXT,
    host_public_key      TEXT,
    provider_credentials TEXT    NOT NULL,
    dns_record_id        TEXT,
    operation_id         TEXT    NOT NULL,
    created_us           BIGINT  NOT NULL,
    updated_us           BIGINT  NOT NULL,
    ready_us             BIGINT,
    destroyed_us         BIGINT
);

-- steps: JSON array of {step, state, detail}, in order.
CREATE TABLE operations (
    id          TEXT    PRIMARY KEY,
    request_id  TEXT    UNIQUE,
    kind        TEXT    NOT NULL,
    server_id   TEXT    NOT NULL,
    project_id  TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    steps       TEXT    NOT NULL,
    message     TEXT    NOT NULL,
    error       TEXT,
    created_us  BIGINT  NOT NULL,
    updated_us  BIGINT  NOT NULL,
    ended_us    BIGINT
);
