-- A data key is never deleted nor renumbered: a ciphertext names its key by id (in its own
-- header, and in `user_vault.data_key_id`) for as long as it exists, and a retired key stays,
-- retired. (PostgreSQL drops the foreign key from `user_vault.data_key_id` for these triggers,
-- for speed; SQLite keeps it, since dropping a constraint there means rebuilding the table.)
CREATE TRIGGER data_keys_kept BEFORE DELETE ON data_keys
BEGIN
    SELECT RAISE(ABORT, 'data keys are never deleted or renumbered');
END;
CREATE TRIGGER data_keys_not_renumbered BEFORE UPDATE OF id ON data_keys
    WHEN OLD.id IS NOT NEW.id
BEGIN
    SELECT RAISE(ABORT, 'data keys are never deleted or renumbered');
END;
