-- Repository identity is case-insensitive, as on GitHub: `Acme/App` and `acme/app` are one
-- repository, so they can be registered once, to one project.
CREATE UNIQUE INDEX repositories_identity ON repositories (lower(owner), lower(name));
