-- A request id is the caller's, and two projects may pick the same one: a recorded write
-- belongs to (request id, project, secret), not to (request id, secret).
ALTER TABLE write_requests DROP CONSTRAINT write_requests_pkey;
ALTER TABLE write_requests ADD PRIMARY KEY (request_id, project_id, name);
