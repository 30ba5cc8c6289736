-- A data key is never deleted nor renumbered: a ciphertext names its key by id (in its own
-- header, and in `user_vault.data_key_id`) for as long as it exists, and a retired key stays,
-- retired. These triggers replace the foreign key from `user_vault.data_key_id`, which checked
-- every stored and rewrapped row against `data_keys` one by one: a fifth of a rewrap's UPDATE
-- (docs/BENCHMARKS.md, issue 13, seventh round). The vault sets `data_key_id` only to the
-- primary key it counts its encryptions on in the same transaction, so the key exists when the
-- row commits; a key can then only go by breaking these triggers.
CREATE FUNCTION data_keys_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'data keys are never deleted or renumbered';
END;
$$;
CREATE TRIGGER data_keys_kept BEFORE DELETE ON data_keys
    FOR EACH ROW EXECUTE FUNCTION data_keys_kept();
CREATE TRIGGER data_keys_not_renumbered BEFORE UPDATE OF id ON data_keys
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION data_keys_kept();
CREATE TRIGGER data_keys_no_truncate BEFORE TRUNCATE ON data_keys
    FOR EACH STATEMENT EXECUTE FUNCTION data_keys_kept();

ALTER TABLE user_vault DROP CONSTRAINT user_vault_data_key_id_fkey;
