//! The vault's rollback check per key (issue 12.3): a database writer who deletes, removes or
//! marks deleted the newest version of a key, behind the vault's back, does not make the vault
//! serve the previous value as the newest: the read answers DATA_LOSS. Deletions made through
//! the vault still leave the previous version readable.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use orchestrator_e2e::TestMesh;
use orchestrator_mesh::Service;
use orchestrator_proto::vault::v1 as pb;
use orchestrator_proto::vault::v1::vault_service_client::VaultServiceClient;
use tonic::Code;
use tonic::transport::Channel;

const VAULT: Service = Service::Vault;

type Vault = VaultServiceClient<Channel>;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Postgres,
    Sqlite,
}

async fn start(backend: Backend) -> TestMesh {
    let builder = match backend {
        Backend::Postgres => TestMesh::builder().postgres(),
        Backend::Sqlite => TestMesh::builder(),
    };
    builder.service(VAULT).start().await
}

/// The project the reads are for.
const PROJECT: &str = "p1";

/// Writes a version of `user`'s `key`, granted to [`PROJECT`] (as the scaffolder records
/// grants; idempotent) so that infra may read it.
async fn put(mesh: &TestMesh, api: &mut Vault, user: &str, key: &str, value: &[u8]) {
    mesh.vault_as("scaffolder")
        .await
        .grant_user_secret(pb::GrantUserSecretRequest {
            user_id: user.into(),
            key: key.into(),
            project_id: PROJECT.into(),
        })
        .await
        .unwrap();
    api.put_user_secret(pb::PutUserSecretRequest {
        request_id: String::new(),
        user_id: user.into(),
        key: key.into(),
        value: value.to_vec(),
        expected_version: None,
    })
    .await
    .unwrap();
}

/// The newest version's value, or the code the read was refused with.
async fn newest(client: &mut Vault, user: &str, key: &str) -> Result<Vec<u8>, tonic::Status> {
    client
        .get_user_secret(pb::GetUserSecretRequest {
            user_id: user.into(),
            key: key.into(),
            version: 0,
            project_id: PROJECT.into(),
        })
        .await
        .map(|r| r.into_inner().secret.unwrap().value)
}

async fn newest_refused(client: &mut Vault, user: &str, key: &str) -> tonic::Status {
    match newest(client, user, key).await {
        Ok(value) => panic!(
            "served {:?} as the newest value of {user}/{key}",
            String::from_utf8_lossy(&value)
        ),
        Err(status) => status,
    }
}

async fn newest_version_rolled_back_behind_the_vaults_back_is_data_loss(backend: Backend) {
    let mesh = start(backend).await;
    let mut api = mesh.vault_as("api").await;
    let mut infra = mesh.vault_as("infra").await;
    for user in ["alice", "bob", "carol", "dave"] {
        put(&mesh, &mut api, user, "cf", b"old-token").await;
        put(&mesh, &mut api, user, "cf", b"new-token").await;
        assert_eq!(newest(&mut infra, user, "cf").await.unwrap(), b"new-token");
    }

    // Marked deleted, with no audit record: the previous value must not become the newest.
    mesh.as_dba(
        VAULT,
        "UPDATE user_vault SET deleted_us = 1 WHERE user_id = 'alice' AND version = 2",
    )
    .await;
    let err = newest_refused(&mut infra, "alice", "cf").await;
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains("users/alice/secrets/cf"), "{err:?}");

    // Destroyed the same way.
    mesh.as_dba(
        VAULT,
        "UPDATE user_vault SET destroyed = 1, encrypted_value = NULL, data_key_id = NULL WHERE user_id = 'bob' AND version = 2",
    )
    .await;
    assert_eq!(
        newest_refused(&mut infra, "bob", "cf").await.code(),
        Code::DataLoss
    );

    // The row removed, and the key's counter set back: still refused.
    mesh.as_dba(
        VAULT,
        "DELETE FROM user_vault WHERE user_id = 'carol' AND version = 2; \
         UPDATE user_vault_keys SET current_version = 1 WHERE user_id = 'carol'",
    )
    .await;
    assert_eq!(
        newest_refused(&mut infra, "carol", "cf").await.code(),
        Code::DataLoss
    );

    // Every version removed: not "no such secret" but DATA_LOSS.
    mesh.as_dba(VAULT, "DELETE FROM user_vault WHERE user_id = 'dave'")
        .await;
    assert_eq!(
        newest_refused(&mut infra, "dave", "cf").await.code(),
        Code::DataLoss
    );

    // The older version asked for by number is still what its own record says.
    let v1 = infra
        .get_user_secret(pb::GetUserSecretRequest {
            user_id: "alice".into(),
            key: "cf".into(),
            version: 1,
            project_id: PROJECT.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v1.secret.unwrap().value, b"old-token");
    assert!(mesh.logs(VAULT).contains("rolled back"));
}

async fn deletions_through_the_vault_still_serve_the_previous_version(backend: Backend) {
    let mesh = start(backend).await;
    let mut api = mesh.vault_as("api").await;
    let mut infra = mesh.vault_as("infra").await;
    put(&mesh, &mut api, "erin", "do", b"v1").await;
    put(&mesh, &mut api, "erin", "do", b"v2").await;
    put(&mesh, &mut api, "erin", "do", b"v3").await;
    let delete = |versions: Vec<i64>, destroy: bool| pb::DeleteUserSecretRequest {
        user_id: "erin".into(),
        key: "do".into(),
        versions,
        destroy,
    };
    api.delete_user_secret(delete(vec![3], false))
        .await
        .unwrap();
    assert_eq!(newest(&mut infra, "erin", "do").await.unwrap(), b"v2");
    api.delete_user_secret(delete(vec![2], true)).await.unwrap();
    assert_eq!(newest(&mut infra, "erin", "do").await.unwrap(), b"v1");
    api.delete_user_secret(delete(vec![], false)).await.unwrap();
    assert_eq!(
        newest_refused(&mut infra, "erin", "do").await.code(),
        Code::NotFound
    );
    // A new version after all were deleted is the newest again.
    put(&mesh, &mut api, "erin", "do", b"v4").await;
    assert_eq!(newest(&mut infra, "erin", "do").await.unwrap(), b"v4");
    // The newest one marked deleted behind the vault's back: refused, not v1 served.
    mesh.as_dba(
        VAULT,
        "UPDATE user_vault SET deleted_us = 1 WHERE user_id = 'erin' AND version = 4",
    )
    .await;
    assert_eq!(
        newest_refused(&mut infra, "erin", "do").await.code(),
        Code::DataLoss
    );
}

macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test] async fn $scenario() { super::$scenario(super::Backend::Postgres).await })*
        }
        mod sqlite {
            $(#[tokio::test] async fn $scenario() { super::$scenario(super::Backend::Sqlite).await })*
        }
    };
}

on_both!(
    newest_version_rolled_back_behind_the_vaults_back_is_data_loss,
    deletions_through_the_vault_still_serve_the_previous_version,
);
