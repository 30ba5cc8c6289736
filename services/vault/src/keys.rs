//! The data keys, unwrapped in memory, checked against the master keyring at start-up.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use orchestrator_store::{Database, StoreError};
use ring::rand::SystemRandom;
use sqlx::{AnyConnection, Row};

use crate::crypto::{DataKey, Keyring};

/// Why the vault refuses to start with its master keyring.
#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
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

/// The unwrapped data keys by id, and which one is primary.
#[derive(Debug)]
pub struct DataKeys {
    keyring: Keyring,
    rng: SystemRandom,
    keys: RwLock<HashMap<i64, Arc<DataKey>>>,
}

struct StoredKey {
    id: i64,
    master: String,
    wrapped: Vec<u8>,
    kcv: Vec<u8>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl DataKeys {
    /// Loads every data key, refusing a keyring that cannot unwrap one of them; creates the
    /// first data key in an empty database; re-wraps data keys under a new primary master key.
    pub async fn open(db: &Database, keyring: Keyring) -> Result<Self, KeyCheckError> {
        let keys = Self {
            keyring,
            rng: SystemRandom::new(),
            keys: RwLock::new(HashMap::new()),
        };
        let mut conn = db.pool().acquire().await.map_err(StoreError::from)?;
        if keys.stored(&mut conn).await?.is_empty() {
            let (_, wrapped, kcv) = keys.keyring.new_data_key(&keys.rng, 1);
            // Replicas starting together race here; one insert wins, the others load it.
            sqlx::query(
                "INSERT INTO data_keys (id, master_key_id, wrapped, kcv, state, encryptions, created_us) \
                 VALUES (1, $1, $2, $3, 'primary', 0, $4) ON CONFLICT DO NOTHING",
            )
            .bind(keys.keyring.primary_id())
            .bind(&wrapped[..])
            .bind(&kcv[..])
            .bind(crate::now_us())
            .execute(&mut *conn)
            .await
            .map_err(StoreError::from)?;
        }
        keys.load(&mut conn).await?;
        keys.rewrap_to_primary_master(&mut conn).await?;
        Ok(keys)
    }

    async fn stored(&self, conn: &mut AnyConnection) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query("SELECT id, master_key_id, wrapped, kcv FROM data_keys ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredKey {
                    id: r.try_get("id")?,
                    master: r.try_get("master_key_id")?,
                    wrapped: r.try_get("wrapped")?,
                    kcv: r.try_get("kcv")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// (Re)loads all data keys from the database, checking each against the keyring.
    pub async fn load(&self, conn: &mut AnyConnection) -> Result<(), KeyCheckError> {
        let mut loaded = HashMap::new();
        for stored in self.stored(conn).await? {
            let Some(kcv) = self.keyring.check_value(&stored.master) else {
                return Err(KeyCheckError::MissingMaster {
                    data_key: stored.id,
                    master: stored.master,
                    held: self.keyring.ids().collect::<Vec<_>>().join(", "),
                });
            };
            if kcv[..] != stored.kcv[..] {
                return Err(KeyCheckError::Mismatch {
                    data_key: stored.id,
                    master: stored.master,
                    found: hex(&kcv),
                    expected: hex(&stored.kcv),
                });
            }
            let key = self
                .keyring
                .unwrap(&stored.master, stored.id, &stored.wrapped)
                .ok_or(KeyCheckError::Corrupt {
                    data_key: stored.id,
                    master: stored.master.clone(),
                })?;
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
        let primary = self.keyring.primary_id().to_owned();
        for stored in self.stored(conn).await? {
            if stored.master == primary {
                continue;
            }
            let raw = self
                .keyring
                .unwrap_raw(&stored.master, stored.id, &stored.wrapped)
                .ok_or(KeyCheckError::Corrupt {
                    data_key: stored.id,
                    master: stored.master.clone(),
                })?;
            let (wrapped, kcv) = self.keyring.wrap_raw(&self.rng, stored.id, &raw);
            // Conditional on the old wrapping: a replica that already did it wins.
            sqlx::query("UPDATE data_keys SET master_key_id = $1, wrapped = $2, kcv = $3 WHERE id = $4 AND master_key_id = $5")
                .bind(&primary)
                .bind(&wrapped[..])
                .bind(&kcv[..])
                .bind(stored.id)
                .bind(&stored.master)
                .execute(&mut *conn)
                .await
                .map_err(StoreError::from)?;
            tracing::info!(data_key = stored.id, from = %stored.master, to = %primary, "data key re-wrapped under the primary master key");
        }
        Ok(())
    }

    pub fn get(&self, id: i64) -> Option<Arc<DataKey>> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    pub fn rng(&self) -> &SystemRandom {
        &self.rng
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }
}
