-- Time4VPS takeovers (the running reinstall task, so a restart waits for it instead of
-- starting another) and where each server's DNS credential comes from.
ALTER TABLE servers ADD COLUMN provider_task_id TEXT;
ALTER TABLE servers ADD COLUMN dns_credentials TEXT NOT NULL DEFAULT '{"platform":{}}';
