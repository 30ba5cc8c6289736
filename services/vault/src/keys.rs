//! The data keys, unwrapped in memory, checked against the master keyring at start-up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use orchestrator_store::{Database, StoreError, now_us};
use ring::rand::SystemRandom;
use sqlx::AnyConnection;

use crate::crypto::{DataKey, Keyring};
use crate::db::{self, StoredKey, Wrapping};

/// Why the vault refuses to start with its master keyring.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyCheckError {
    #[error(
        "data key {data_key} is wrapped by master key `{master}`, which VAULT_MASTER_KEY does not hold \
         (it holds: {held}); add that key back to the keyring"
    )]
    MissingMaster {
        data_key: i64,
        master: String,
        held: String,
    },
    #[error(
        "VAULT_MASTER_KEY entry `{master}` does not match data key {data_key}: its key check value is \
         {found}, the data key was wrapped by a key with check value {expected}. This is the wrong master key."
    )]
    Mismatch {
        data_key: i64,
        master: String,
        found: String,
        expected: String,
    },
    #[error(
        "data key {data_key} does not unwrap with master key `{master}` although the check values match: the stored key is corrupt"
    )]
    Corrupt { data_key: i64, master: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Callers learn that the vault cannot use a data key, not which master keys it holds or their
/// check values: those go to the operator's log. A database error keeps its own status.
impl From<KeyCheckError> for tonic::Status {
    fn from(e: KeyCheckError) -> Self {
        match e {
            KeyCheckError::Store(e) => e.into(),
            other => {
                tracing::error!(error = %other, "a data key cannot be used");
                tonic::Status::internal("a data key cannot be used; see the vault's log")
            }
        }
    }
}

/// The unwrapped data keys by id.
#[derive(Debug)]
pub(crate) struct DataKeys {
    keyring: Keyring,
    rng: SystemRandom,
    keys: RwLock<HashMap<i64, Arc<DataKey>>>,
    /// The primary data key's id as this process last counted on it (0: not yet). Only a hint
    /// for sealing ahead of the count: the count, under the audit head, is what decides.
    primary_hint: AtomicI64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl DataKeys {
    /// Loads every data key, refusing a keyring that cannot unwrap one of them; creates the
    /// first data key in an empty database; re-wraps data keys under a new primary master key.
    // Architecture Invariant: a wrong master key stops the start, naming the key.
    pub(crate) async fn open(db: &Database, keyring: Keyring) -> Result<Self, KeyCheckError> {
        let keys = Self {
            keyring,
            rng: SystemRandom::new(),
            keys: RwLock::new(HashMap::new()),
            primary_hint: AtomicI64::new(0),
        };
        let mut conn = db.pool().acquire().await.map_err(StoreError::from)?;
        if db::stored_data_keys(&mut conn).await?.is_empty() {
            let (_, wrapped, kcv) = keys.keyring.new_data_key(&keys.rng, 1);
            let first = Wrapping {
                master_key_id: keys.keyring.primary_id(),
                wrapped: &wrapped,
                kcv: &kcv,
            };
            db::insert_first_data_key(&mut conn, first, now_us()).await?;
        }
        keys.load(&mut conn).await?;
        keys.rewrap_to_primary_master(&mut conn).await?;
        Ok(keys)
    }

    /// (Re)loads all data keys from the database, checking each against the keyring.
    async fn load(&self, conn: &mut AnyConnection) -> Result<(), KeyCheckError> {
        let mut loaded = HashMap::new();
        for stored in db::stored_data_keys(conn).await? {
            let Some(kcv) = self.keyring.check_value(&stored.master_key_id) else {
                return Err(KeyCheckError::MissingMaster {
                    data_key: stored.id,
                    master: stored.master_key_id,
                    held: self.keyring.ids().collect::<Vec<_>>().join(", "),
                });
            };
            if kcv[..] != stored.kcv[..] {
                return Err(KeyCheckError::Mismatch {
                    data_key: stored.id,
                    master: stored.master_key_id,
                    found: hex(&kcv),
                    expected: hex(&stored.kcv),
                });
            }
            let key = self
                .keyring
                .unwrap(&stored.master_key_id, stored.id, &stored.wrapped)
                .ok_or_else(|| corrupt(&stored))?;
            loaded.insert(stored.id, Arc::new(key));
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    /// After a new master key was put first in VAULT_MASTER_KEY: re-wrap the data keys (only
    /// them; values stay as they are) under it.
    async fn rewrap_to_primary_master(
        &self,
        conn: &mut AnyConnection,
    ) -> Result<(), KeyCheckError> {
        let primary = self.keyring.primary_id();
        for stored in db::stored_data_keys(conn).await? {
            if stored.master_key_id == primary {
                continue;
            }
            let raw = self
                .keyring
                .unwrap_raw(&stored.master_key_id, stored.id, &stored.wrapped)
                .ok_or_else(|| corrupt(&stored))?;
            let (wrapped, kcv) = self.keyring.wrap_raw(&self.rng, stored.id, &raw);
            let to = Wrapping {
                master_key_id: primary,
                wrapped: &wrapped,
                kcv: &kcv,
            };
            db::rewrap_data_key(conn, stored.id, &stored.master_key_id, to).await?;
            tracing::info!(data_key = stored.id, from = %stored.master_key_id, to = %primary, "data key re-wrapped under the primary master key");
        }
        Ok(())
    }

    pub(crate) fn get(&self, id: i64) -> Option<Arc<DataKey>> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Data key `id`, reloading the keys through `conn` when this process does not know it yet
    /// (another replica rotated). `None` when the database does not know it either.
    pub(crate) async fn get_or_load(
        &self,
        conn: &mut AnyConnection,
        id: i64,
    ) -> Result<Option<Arc<DataKey>>, KeyCheckError> {
        if let Some(key) = self.get(id) {
            return Ok(Some(key));
        }
        self.load(conn).await?;
        Ok(self.get(id))
    }

    /// Like [`DataKeys::get_or_load`], with a connection from `db`'s pool taken only if needed.
    pub(crate) async fn get_or_load_from(
        &self,
        db: &Database,
        id: i64,
    ) -> Result<Option<Arc<DataKey>>, KeyCheckError> {
        if let Some(key) = self.get(id) {
            return Ok(Some(key));
        }
        let mut conn = db.pool().acquire().await.map_err(StoreError::from)?;
        self.get_or_load(&mut conn, id).await
    }

    /// The primary data key's id as last counted on, if any (see [`DataKeys::set_primary_hint`]).
    pub(crate) fn primary_hint(&self) -> Option<i64> {
        Some(self.primary_hint.load(Ordering::Relaxed)).filter(|id| *id != 0)
    }

    /// Notes the primary data key's id, as a count of encryptions on it found it.
    pub(crate) fn set_primary_hint(&self, id: i64) {
        self.primary_hint.store(id, Ordering::Relaxed);
    }

    pub(crate) fn rng(&self) -> &SystemRandom {
        &self.rng
    }

    pub(crate) fn keyring(&self) -> &Keyring {
        &self.keyring
    }
}

fn corrupt(stored: &StoredKey) -> KeyCheckError {
    KeyCheckError::Corrupt {
        data_key: stored.id,
        master: stored.master_key_id.clone(),
    }
}
