-- Reads check a row against the newest audit record that carries a digest for it. Every read is
-- itself audited under the same target (without a digest), so on (target, seq) alone that
-- lookup walks back over every earlier read of the row: 26 ms after 200,000 reads of one
-- version, growing without bound. Indexing only the records with a digest keeps it one probe
-- (0.05 ms in the same test; docs/BENCHMARKS.md).
CREATE INDEX audit_log_attested ON audit_log (target, seq) WHERE digest IS NOT NULL;
