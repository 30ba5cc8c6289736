//! What GetKeyStatus and RotateDataKey report: the master keyring, the data keys with their
//! counts, and the rewrap's progress. Key material never appears, only ids and counts.

use orchestrator_proto::timestamp as ts;
use orchestrator_proto::vault::v1 as pb;
use tonic::Status;

use crate::db::{self, DataKeyStatus, KeyState};
use crate::state::Vault;

/// Every data key, by id.
pub(crate) async fn data_keys(vault: &Vault) -> Result<Vec<pb::DataKey>, Status> {
    let rows = db::data_key_status(vault.db.pool()).await?;
    Ok(rows
        .into_iter()
        .map(|row| data_key(row, vault.limits.rotate_after))
        .collect())
}

fn data_key(row: DataKeyStatus, rotation_threshold: i64) -> pb::DataKey {
    let state = match row.state {
        KeyState::Primary => pb::DataKeyState::Primary,
        KeyState::DecryptOnly => pb::DataKeyState::DecryptOnly,
        KeyState::Retired => pb::DataKeyState::Retired,
    };
    pb::DataKey {
        id: row.id.to_string(),
        state: state as i32,
        master_key_id: row.master_key_id,
        encryption_count: row.encryptions,
        rotation_threshold,
        ciphertext_count: row.ciphertexts,
        create_time: Some(ts(row.created_us)),
        demote_time: None,
    }
}

/// RotateDataKey's answer: the new primary and the previous one.
pub(crate) async fn rotated(
    vault: &Vault,
    previous: i64,
    next: i64,
) -> Result<pb::RotateDataKeyResponse, Status> {
    let keys = data_keys(vault).await?;
    let find = |id: i64| keys.iter().find(|k| k.id == id.to_string()).cloned();
    Ok(pb::RotateDataKeyResponse {
        primary_key: find(next),
        previous_primary_key: find(previous),
    })
}

/// GetKeyStatus: the rewrap counts as running while any value is on a demoted key, whether or
/// not this replica is the one moving it.
pub(crate) async fn report(vault: &Vault) -> Result<pb::GetKeyStatusResponse, Status> {
    let data_keys = data_keys(vault).await?;
    let keyring = vault.keys.keyring();
    let master_keys = keyring
        .ids()
        .map(|id| pb::MasterKey {
            id: id.to_owned(),
            primary: id == keyring.primary_id(),
            wrapped_data_key_count: data_keys.iter().filter(|k| k.master_key_id == id).count()
                as i64,
        })
        .collect();
    let is_primary = |k: &pb::DataKey| k.state == pb::DataKeyState::Primary as i32;
    let pending: i64 = data_keys
        .iter()
        .filter(|k| !is_primary(k))
        .map(|k| k.ciphertext_count)
        .sum();
    let total: i64 = data_keys.iter().map(|k| k.ciphertext_count).sum();
    let primary = data_keys.iter().find(|k| is_primary(k));
    let progress = vault.rewrap.progress();
    let rewrap = pb::RewrapProgress {
        running: progress.running || pending > 0,
        target_data_key_id: primary.map(|k| k.id.clone()).unwrap_or_default(),
        rows_total: total,
        rows_done: total - pending,
        rows_per_second: progress.rows_per_second,
        start_time: progress.started.map(ts),
        update_time: progress.updated.map(ts),
        end_time: progress.ended.filter(|_| pending == 0).map(ts),
    };
    Ok(pb::GetKeyStatusResponse {
        master_keys,
        data_keys,
        rewrap: Some(rewrap),
    })
}
