-- Secrets are kept in one of four places at GitHub (issue 14): the repository's Actions secrets,
-- a deployment environment's, the repository's Dependabot secrets, or the organization's. A
-- reference and a recorded write name theirs (`repository`, `environment:<name>` lower-cased,
-- `dependabot`, `organization`), so one name can live in several places. Existing rows were
-- all written to the repository's Actions secrets.
ALTER TABLE secret_refs ADD COLUMN location TEXT NOT NULL DEFAULT 'repository';
ALTER TABLE secret_refs DROP CONSTRAINT secret_refs_pkey;
ALTER TABLE secret_refs ADD PRIMARY KEY (project_id, location, name);
-- An organization secret belongs to the one project that first wrote it.
CREATE UNIQUE INDEX secret_refs_organization_name ON secret_refs (name) WHERE location = 'organization';

ALTER TABLE write_requests ADD COLUMN location TEXT NOT NULL DEFAULT 'repository';
ALTER TABLE write_requests DROP CONSTRAINT write_requests_pkey;
ALTER TABLE write_requests ADD PRIMARY KEY (request_id, project_id, location, name);
