//! The vault over real mTLS, against PostgreSQL (a fresh database, own role and schema) and
//! SQLite: values, versions, check-and-set, deletion, tampering, audit, key checks.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use orchestrator_e2e::{Secret, TestMesh, VAULT_KEY_ID, violated_fields};
use orchestrator_mesh::Service;
use orchestrator_proto::vault::v1 as pb;
use orchestrator_proto::vault::v1::vault_service_client::VaultServiceClient;
use orchestrator_store::testing::TestDatabase;
use secrecy::ExposeSecret;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const VAULT: Service = Service::Vault;

type Vault = VaultServiceClient<Channel>;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Postgres,
    Sqlite,
}

async fn start(backend: Backend) -> TestMesh {
    start_with(backend, &[]).await
}

/// A vault on `backend`, with `settings`.
async fn start_with(backend: Backend, settings: &[(&str, &str)]) -> TestMesh {
    let builder = match backend {
        Backend::Postgres => TestMesh::builder().postgres(),
        Backend::Sqlite => TestMesh::builder(),
    };
    settings
        .iter()
        .fold(builder.service(VAULT), |b, (var, value)| {
            b.env(VAULT, var, *value)
        })
        .start()
        .await
}

fn put(user: &str, key: &str, value: &[u8], expected: Option<i64>) -> pb::PutUserSecretRequest {
    pb::PutUserSecretRequest {
        request_id: String::new(),
        user_id: user.into(),
        key: key.into(),
        value: value.to_vec(),
        expected_version: expected,
    }
}

/// Reads a secret that must be readable.
async fn read(client: &mut Vault, user: &str, key: &str, version: i64) -> pb::UserSecret {
    client
        .get_user_secret(get(user, key, version))
        .await
        .unwrap()
        .into_inner()
        .secret
        .unwrap()
}

/// A user's secrets, as ListUserSecrets answers (the first page).
async fn listed(api: &mut Vault, user: &str) -> pb::ListUserSecretsResponse {
    api.list_user_secrets(pb::ListUserSecretsRequest {
        user_id: user.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

/// Writes a secret that must be writable.
async fn put_ok(client: &mut Vault, request: pb::PutUserSecretRequest) {
    client.put_user_secret(request).await.unwrap();
}

/// The code a read that must fail ends with.
async fn get_refused(client: &mut Vault, user: &str, key: &str, version: i64) -> Code {
    client
        .get_user_secret(get(user, key, version))
        .await
        .unwrap_err()
        .code()
}

/// The project every read of these tests is for.
const PROJECT: &str = "prj-vault-tests";

fn get(user: &str, key: &str, version: i64) -> pb::GetUserSecretRequest {
    pb::GetUserSecretRequest {
        user_id: user.into(),
        key: key.into(),
        version,
        project_id: PROJECT.into(),
    }
}

/// `user`'s `keys` granted to [`PROJECT`], as the scaffolder records grants: what a test's
/// reads need before they are about anything else.
async fn grant(mesh: &TestMesh, user: &str, keys: &[&str]) {
    let mut scaffolder = mesh.vault_as("scaffolder").await;
    for key in keys {
        scaffolder
            .grant_user_secret(pb::GrantUserSecretRequest {
                user_id: user.into(),
                key: (*key).into(),
                project_id: PROJECT.into(),
            })
            .await
            .unwrap();
    }
}

/// Keys `k0`..`k{n-1}` of `u1` (those of [`put_many`]) granted to [`PROJECT`], 16 at a time.
async fn grant_many(mesh: &TestMesh, n: usize) {
    let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    for chunk in keys.chunks(16) {
        let grants = chunk
            .iter()
            .map(|k| grant(mesh, "u1", std::slice::from_ref(k)));
        futures::future::join_all(grants).await;
    }
}

async fn round_trip_versions_and_cas(backend: Backend) {
    let mesh = start(backend).await;
    let mut api = mesh.vault_as("api").await;
    let mut infra = mesh.vault_as("infra").await;
    grant(&mesh, "u1", &["do/token", "nope"]).await;
    grant(&mesh, "u2", &["do/token"]).await;
    let first = api
        .put_user_secret(put("u1", "do/token", b"v1-secret", Some(0)))
        .await;
    let first = first
        .unwrap_or_else(|e| panic!("{e:?}\n{}", mesh.logs(VAULT)))
        .into_inner();
    assert_eq!(first.secret.unwrap().current_version, 1);

    // Create-only again: refused with the current version in the ErrorInfo.
    let err = api
        .put_user_secret(put("u1", "do/token", b"x", Some(0)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let info = err.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "VERSION_MISMATCH");
    assert_eq!(info.metadata["current_version"], "1");

    put_ok(&mut api, put("u1", "do/token", b"v2-secret", Some(1))).await;
    let stale = api
        .put_user_secret(put("u1", "do/token", b"x", Some(1)))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    put_ok(&mut api, put("u1", "do/token", b"v3-secret", None)).await;

    let latest = read(&mut infra, "u1", "do/token", 0).await;
    assert_eq!(
        (latest.version, latest.value.as_slice()),
        (3, &b"v3-secret"[..])
    );
    let v1 = read(&mut infra, "u1", "do/token", 1).await;
    assert_eq!(v1.value, b"v1-secret");

    // Another user's key of the same name is another secret.
    assert_eq!(
        get_refused(&mut infra, "u2", "do/token", 0).await,
        Code::NotFound
    );

    // Batch: all or nothing.
    let batch = pb::BatchGetUserSecretsRequest {
        requests: vec![get("u1", "do/token", 1), get("u1", "do/token", 2)],
    };
    let got = infra
        .batch_get_user_secrets(batch)
        .await
        .unwrap()
        .into_inner()
        .secrets;
    assert_eq!(
        got.iter().map(|s| s.value.clone()).collect::<Vec<_>>(),
        vec![b"v1-secret".to_vec(), b"v2-secret".to_vec()]
    );
    let batch = pb::BatchGetUserSecretsRequest {
        requests: vec![get("u1", "do/token", 1), get("u1", "nope", 0)],
    };
    let err = infra.batch_get_user_secrets(batch).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("requests[1]"), "{}", err.message());

    // List: names, versions and times, never values.
    let list = listed(&mut api, "u1").await;
    assert_eq!(list.secrets.len(), 1);
    assert_eq!(list.secrets[0].versions.len(), 3);
    // Not a value anywhere in what List sends (the message has no value field; check the bytes).
    let wire = prost::Message::encode_to_vec(&list);
    for value in [&b"v1-secret"[..], b"v2-secret", b"v3-secret"] {
        assert!(!wire.windows(value.len()).any(|w| w == value));
    }
    // Pages: each key with its own versions, in key order, across page boundaries.
    for (key, versions) in [("a", 1), ("b", 3), ("c", 2)] {
        for n in 0..versions {
            put_ok(
                &mut api,
                put("u9", key, format!("{key}{n}").as_bytes(), None),
            )
            .await;
        }
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .list_user_secrets(pb::ListUserSecretsRequest {
                user_id: "u9".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(
            page.secrets
                .iter()
                .map(|s| (s.key.clone(), s.versions.len(), s.current_version)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        vec![("a".into(), 1, 1), ("b".into(), 3, 3), ("c".into(), 2, 2)]
    );

    // Soft delete of the newest version: the latest live one is now 2; destroy removes for good.
    let deleted = api
        .delete_user_secret(pb::DeleteUserSecretRequest {
            user_id: "u1".into(),
            key: "do/token".into(),
            versions: vec![3],
            destroy: false,
        })
        .await
        .unwrap()
        .into_inner()
        .secret
        .unwrap();
    assert!(
        deleted
            .versions
            .iter()
            .find(|v| v.version == 3)
            .unwrap()
            .delete_time
            .is_some()
    );
    let latest = read(&mut infra, "u1", "do/token", 0).await;
    assert_eq!(latest.version, 2);
    assert_eq!(
        get_refused(&mut infra, "u1", "do/token", 3).await,
        Code::NotFound
    );
    let destroy = pb::DeleteUserSecretRequest {
        user_id: "u1".into(),
        key: "do/token".into(),
        versions: vec![],
        destroy: true,
    };
    api.delete_user_secret(destroy.clone()).await.unwrap();
    api.delete_user_secret(destroy).await.unwrap(); // idempotent
    assert_eq!(
        get_refused(&mut infra, "u1", "do/token", 0).await,
        Code::NotFound
    );

    // Bad input: every violation at once, nothing written.
    let err = api
        .put_user_secret(put("", "bad key!", b"", Some(-1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = violated_fields(&err);
    assert_eq!(fields, vec!["user_id", "key", "value", "expected_version"]);
    assert!(mesh.logs(VAULT).contains("PutUserSecret"));
}

async fn tampering_is_detected(backend: Backend) {
    let mesh = start(backend).await;
    let mut api = mesh.vault_as("api").await;
    let mut infra = mesh.vault_as("infra").await;
    put_ok(&mut api, put("alice", "cf", b"alice-token", None)).await;
    put_ok(&mut api, put("bob", "cf", b"bob-token", None)).await;
    grant(&mesh, "alice", &["cf"]).await;
    grant(&mesh, "bob", &["cf"]).await;
    grant(&mesh, "carol", &["do"]).await;

    // Copy alice's ciphertext into bob's row: it must not decrypt as bob's.
    mesh.as_dba(VAULT, "UPDATE user_vault SET encrypted_value = (SELECT encrypted_value FROM user_vault WHERE user_id = 'alice') WHERE user_id = 'bob'").await;
    assert_eq!(
        get_refused(&mut infra, "bob", "cf", 0).await,
        Code::DataLoss
    );
    assert_eq!(
        read(&mut infra, "alice", "cf", 0).await.value,
        b"alice-token"
    );

    // Roll back a deletion (a restore, a DBA): the row looks live again, the audit chain says no.
    api.delete_user_secret(pb::DeleteUserSecretRequest {
        user_id: "alice".into(),
        key: "cf".into(),
        versions: vec![1],
        destroy: false,
    })
    .await
    .unwrap();
    mesh.as_dba(
        VAULT,
        "UPDATE user_vault SET deleted_us = NULL WHERE user_id = 'alice'",
    )
    .await;
    let err = infra
        .get_user_secret(get("alice", "cf", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");

    // Replace a row with an older ciphertext of the same (user, key, version): write v1, keep
    // its ciphertext, destroy it, write the old bytes back.
    put_ok(&mut api, put("carol", "do", b"carol-token", None)).await;
    mesh.as_dba(VAULT, "CREATE TABLE stash AS SELECT encrypted_value, data_key_id FROM user_vault WHERE user_id = 'carol'").await;
    api.delete_user_secret(pb::DeleteUserSecretRequest {
        user_id: "carol".into(),
        key: "do".into(),
        versions: vec![],
        destroy: true,
    })
    .await
    .unwrap();
    mesh.as_dba(
        VAULT,
        "UPDATE user_vault SET destroyed = 0, deleted_us = NULL, \
         encrypted_value = (SELECT encrypted_value FROM stash), data_key_id = (SELECT data_key_id FROM stash) WHERE user_id = 'carol'",
    )
    .await;
    assert_eq!(
        get_refused(&mut infra, "carol", "do", 0).await,
        Code::DataLoss
    );
}

async fn audit_chain_verifies_and_names_an_edited_record(backend: Backend) {
    let mesh = start(backend).await;
    let mut api = mesh.vault_as("api").await;
    let mut infra = mesh.vault_as("infra").await;
    grant_many(&mesh, 5).await;
    for i in 0..5 {
        put_ok(&mut api, put("u1", &format!("k{i}"), b"value", None)).await;
        infra
            .get_user_secret(get("u1", &format!("k{i}"), 0))
            .await
            .unwrap();
    }
    // Verification reads as the service's own role: SELECT is all it needs. Each put writes
    // two records (the version's, the key's newest live version), each read one.
    let report = audit_report(&mesh).await;
    // Five grants, five writes of two records each, five reads.
    assert_eq!(report.records, 20, "{report:?}");
    assert_eq!(report.broken, None);

    // The service's own role cannot edit or delete audit rows.
    let own = orchestrator_store::Database::connect(
        &mesh.db().url("vault"),
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(
        sqlx::query("UPDATE audit_log SET target = 'x' WHERE seq = 3")
            .execute(own.pool())
            .await
            .is_err()
    );
    assert!(
        sqlx::query("DELETE FROM audit_log WHERE seq = 3")
            .execute(own.pool())
            .await
            .is_err()
    );

    // Someone who bypasses both (a superuser without triggers) edits record 3: verify names it.
    let bypass = if mesh.db().is_postgres() {
        "SET session_replication_role = replica; UPDATE audit_log SET target = 'users/u1/secrets/other/versions/1' WHERE seq = 3"
    } else {
        "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET target = 'users/u1/secrets/other/versions/1' WHERE seq = 3"
    };
    mesh.as_dba(VAULT, bypass).await;
    let report = audit_report(&mesh).await;
    let broken = report.broken.expect("the edit is found");
    assert_eq!(broken.seq, 3, "{broken:?}");
    assert!(broken.reason.contains("MAC"), "{broken:?}");
}

async fn canary_is_only_ever_ciphertext(backend: Backend) {
    let canary = format!("canary-{}", orchestrator_e2e::random_key());
    let mesh = start_with(backend, &[("RUST_LOG", "trace")]).await;
    let mut api = mesh.vault_as("api").await;
    let mut infra = mesh.vault_as("infra").await;
    put_ok(&mut api, put("u1", "token", canary.as_bytes(), None)).await;
    grant(&mesh, "u1", &["token"]).await;
    let got = read(&mut infra, "u1", "token", 0).await;
    assert_eq!(got.value, canary.as_bytes());
    let _ = api
        .put_user_secret(put("u1", "token", canary.as_bytes(), Some(0)))
        .await
        .unwrap_err();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let logs = mesh.logs(VAULT);
    assert!(logs.contains("TRACE") || logs.contains("DEBUG") || logs.contains("rpc finished"));
    assert!(!logs.contains(&canary), "the canary reached the logs");

    // Every table, every column, as text and as bytes.
    let tables = [
        "audit_log",
        "audit_head",
        "data_keys",
        "user_vault_keys",
        "user_vault",
        "put_requests",
    ];
    for table in tables {
        let sql = if mesh.db().is_postgres() {
            format!("SELECT CAST(t AS TEXT) AS dump FROM vault.{table} t")
        } else {
            dump_sqlite(table)
        };
        for dump in mesh.dba_dumps(VAULT, &sql).await {
            assert!(!dump.contains(&canary), "{table} holds the canary in clear");
            let hex: String = canary.bytes().map(|b| format!("{b:02x}")).collect();
            assert!(
                !dump.to_lowercase().contains(&hex),
                "{table} holds the canary's bytes"
            );
        }
    }
}

/// SQLite has no row-to-text cast: concatenate every column, blobs as hex.
fn dump_sqlite(table: &str) -> String {
    let columns: &[&str] = match table {
        "audit_log" => &[
            "seq",
            "caller",
            "method",
            "target",
            "outcome",
            "request_id",
            "detail",
            "hex(digest)",
            "hex(mac)",
        ],
        "audit_head" => &["seq", "hex(mac)"],
        "data_keys" => &["id", "master_key_id", "hex(wrapped)", "hex(kcv)", "state"],
        "user_vault_keys" => &["user_id", "key", "current_version"],
        "user_vault" => &["user_id", "key", "version", "hex(encrypted_value)"],
        _ => &["request_id", "user_id", "key", "version"],
    };
    let expr = columns
        .iter()
        .map(|c| format!("COALESCE({c}, '')"))
        .collect::<Vec<_>>()
        .join(" || '|' || ");
    format!("SELECT {expr} AS dump FROM {table}")
}

async fn wrong_master_key_refuses_start(backend: Backend) {
    let mut mesh = start(backend).await;
    let mut api = mesh.vault_as("api").await;
    put_ok(&mut api, put("u1", "k", b"v", None)).await;
    mesh.kill(VAULT).await;
    let (code, output) = mesh
        .launch(VAULT)
        .without("VAULT_MASTER_KEY_FILE")
        .env(
            "VAULT_MASTER_KEY",
            format!("{VAULT_KEY_ID}:{}", orchestrator_e2e::random_key()),
        )
        .run_to_exit()
        .await
        .unwrap();
    assert_ne!(code, Some(0));
    assert!(output.contains("does not match data key 1"), "{output}");
    assert!(output.contains("key check value"), "{output}");
}

async fn role_separation(backend: Backend) {
    let mesh = start(backend).await;
    if !mesh.db().is_postgres() {
        return; // SQLite: separate files per service, no roles.
    }
    let infra = orchestrator_store::Database::connect(
        &mesh.db().url("infra"),
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    let Err(err) = sqlx::query("SELECT * FROM vault.user_vault")
        .fetch_all(infra.pool())
        .await
    else {
        panic!("infra's role read the vault's table");
    };
    assert!(err.to_string().contains("permission denied"), "{err}");
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

/// Like `on_both!`, for scenarios that need a multi-threaded runtime (concurrent clients).
macro_rules! on_both_more {
    ($($scenario:ident),* $(,)?) => {
        mod postgres_concurrent {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $scenario() { super::$scenario(super::Backend::Postgres).await })*
        }
        mod sqlite_concurrent {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $scenario() { super::$scenario(super::Backend::Sqlite).await })*
        }
    };
}

/// A Put retried with its request id writes nothing more and answers what the first call
/// answered (the version it wrote, even after later writes); the id for another secret is
/// refused.
async fn a_put_retried_with_its_request_id_writes_once(backend: Backend) {
    let mesh = start(backend).await;
    let mut api = mesh.vault_as("api").await;
    let mut first = put("u1", "k", b"v1", None);
    first.request_id = "put-1".into();
    let written = api
        .put_user_secret(first.clone())
        .await
        .unwrap()
        .into_inner()
        .secret
        .unwrap();
    assert_eq!(written.current_version, 1);
    put_ok(&mut api, put("u1", "k", b"v2", None)).await;
    let again = api
        .put_user_secret(first.clone())
        .await
        .unwrap()
        .into_inner()
        .secret
        .unwrap();
    assert_eq!(
        again.current_version, 1,
        "the retry answers the version it wrote"
    );
    assert_eq!(again.versions.len(), 2, "and writes nothing");
    let mut elsewhere = first;
    elsewhere.key = "other".into();
    let refused = api.put_user_secret(elsewhere).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
}

on_both!(
    a_put_retried_with_its_request_id_writes_once,
    round_trip_versions_and_cas,
    tampering_is_detected,
    audit_chain_verifies_and_names_an_edited_record,
    canary_is_only_ever_ciphertext,
    wrong_master_key_refuses_start,
    role_separation,
    versions_are_pruned_and_keys_rotate_by_count,
    a_new_master_key_rewraps_data_keys_only,
);

/// Concurrent requests share batches (a lookup statement, a Put work item) and are answered
/// as if each ran alone: a refused Put (a stale check-and-set) spoils no other Put of its
/// batch, a repeated request id writes once, and a read of a key not granted is refused while
/// the reads around it are served their own values.
async fn batched_requests_are_answered_as_if_alone(backend: Backend) {
    let mesh = start(backend).await;
    let (api, infra) = (mesh.vault_as("api").await, mesh.vault_as("infra").await);
    put_ok(&mut api.clone(), put("u1", "shared", b"v1", None)).await;
    let calls = (0..48).map(|i| {
        let mut api = api.clone();
        async move {
            let request = match i % 3 {
                // Sixteen writers that all saw version 1: one wins.
                0 => put("u1", "shared", format!("cas-{i}").as_bytes(), Some(1)),
                // Pairs with one request id: each pair writes once.
                1 => {
                    let mut p = put("u1", &format!("idem-{}", i / 6), b"same", None);
                    p.request_id = format!("req-{}", i / 6);
                    p
                }
                _ => put(
                    "u1",
                    &format!("k{i}"),
                    format!("value-{i}").as_bytes(),
                    None,
                ),
            };
            (i, api.put_user_secret(request).await)
        }
    });
    let answers = futures::future::join_all(calls).await;
    let mut cas_won = Vec::new();
    for (i, answer) in answers {
        match (i % 3, answer) {
            (0, Ok(won)) => cas_won.push((i, won.into_inner().secret.unwrap().current_version)),
            (0, Err(refused)) => {
                assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
            }
            (1, answer) => assert_eq!(
                answer.unwrap().into_inner().secret.unwrap().current_version,
                1
            ),
            (_, answer) => assert_eq!(
                answer.unwrap().into_inner().secret.unwrap().current_version,
                1
            ),
        }
    }
    assert_eq!(
        cas_won.len(),
        1,
        "exactly one check-and-set at version 1 wins: {cas_won:?}"
    );
    let (winner, version) = cas_won[0];
    assert_eq!(version, 2);
    let listed = listed(&mut api.clone(), "u1").await;
    let idem: Vec<_> = listed
        .secrets
        .iter()
        .filter(|s| s.key.starts_with("idem-"))
        .collect();
    assert_eq!(idem.len(), 8);
    assert!(
        idem.iter().all(|s| s.versions.len() == 1),
        "a repeated request id wrote twice"
    );

    // Reads: granted and not granted keys, all at once.
    let granted: Vec<String> = (0..48)
        .filter(|i| i % 3 == 2 && i % 2 == 0)
        .map(|i| format!("k{i}"))
        .collect();
    let granted: Vec<&str> = granted.iter().map(String::as_str).collect();
    grant(&mesh, "u1", &granted).await;
    grant(&mesh, "u1", &["shared"]).await;
    let not_granted = get_refused(&mut infra.clone(), "u1", "k5", 0).await;
    let reads = (0..48).filter(|i| i % 3 == 2).map(|i| {
        let mut infra = infra.clone();
        async move {
            (
                i,
                infra.get_user_secret(get("u1", &format!("k{i}"), 0)).await,
            )
        }
    });
    for (i, read) in futures::future::join_all(reads).await {
        if i % 2 == 0 {
            let secret = read.unwrap().into_inner().secret.unwrap();
            assert_eq!(secret.value, format!("value-{i}").into_bytes(), "k{i}");
        } else {
            assert_eq!(read.unwrap_err().code(), not_granted, "k{i}");
        }
    }
    let shared = read(&mut infra.clone(), "u1", "shared", 0).await;
    assert_eq!(shared.value, format!("cas-{winner}").into_bytes());
    assert_eq!(audit_report(&mesh).await.broken, None);
}

/// Unconditional Puts of one key at once (sharing batches, several of them to a batch) take
/// versions in turn, as if each ran alone: every caller gets a version of its own and the
/// versions kept right after it, each kept version reads back the value of the Put that took
/// it, the older ones are pruned, and the chain verifies.
async fn puts_of_one_key_at_once_take_versions_in_turn(backend: Backend) {
    const PUTS: i64 = 24;
    let mesh = start_with(backend, &[("VAULT_KEEP_VERSIONS", "3")]).await;
    let (api, mut infra) = (mesh.vault_as("api").await, mesh.vault_as("infra").await);
    grant(&mesh, "u1", &["hot"]).await;
    let calls = (0..PUTS).map(|i| {
        let mut api = api.clone();
        async move {
            let value = format!("hot-{i}");
            let request = put("u1", "hot", value.as_bytes(), None);
            let answer = api.put_user_secret(request).await.unwrap().into_inner();
            (value, answer.secret.unwrap())
        }
    });
    let answers = futures::future::join_all(calls).await;
    let mut taken: Vec<i64> = answers.iter().map(|(_, s)| s.current_version).collect();
    taken.sort_unstable();
    assert_eq!(taken, (1..=PUTS).collect::<Vec<_>>(), "a version each");
    for (_, secret) in &answers {
        let version = secret.current_version;
        let kept: Vec<i64> = secret.versions.iter().map(|v| v.version).collect();
        let expected: Vec<i64> = ((version - 2).max(1)..=version).rev().collect();
        assert_eq!(kept, expected, "kept right after version {version}");
    }
    for (value, secret) in &answers {
        let version = secret.current_version;
        if version > PUTS - 3 {
            let stored = read(&mut infra, "u1", "hot", version).await;
            assert_eq!(stored.value, value.as_bytes(), "version {version}");
        } else {
            let refused = get_refused(&mut infra, "u1", "hot", version).await;
            assert_eq!(refused, Code::NotFound, "version {version} was pruned");
        }
    }
    assert_eq!(audit_report(&mesh).await.broken, None);
}

async fn put_many(api: &Vault, n: usize) {
    let mut tasks = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(n.div_ceil(16)) {
        let (mut api, chunk) = (api.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for i in chunk {
                put_ok(
                    &mut api,
                    put(
                        "u1",
                        &format!("k{i}"),
                        format!("value-{i}").as_bytes(),
                        None,
                    ),
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn key_status(operator: &mut Vault) -> pb::GetKeyStatusResponse {
    operator
        .get_key_status(pb::GetKeyStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits until no ciphertext is left on a demoted key.
async fn wait_for_rewrap(operator: &mut Vault) -> pb::GetKeyStatusResponse {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let status = key_status(operator).await;
        let rewrap = status.rewrap.clone().unwrap();
        if rewrap.rows_done == rewrap.rows_total && !rewrap.running {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rewrap did not finish: {rewrap:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn rotation_while_eight_readers_read(backend: Backend) {
    let mesh = start_with(backend, &[("VAULT_REWRAP_BATCH", "25")]).await;
    let api = mesh.vault_as("api").await;
    let infra = mesh.vault_as("infra").await;
    let mut operator = mesh.vault_as("operator").await;
    const KEYS: usize = 300;
    put_many(&api, KEYS).await;
    grant_many(&mesh, KEYS).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..8 {
        let (mut infra, stop) = (infra.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut i) = (0, Vec::new(), r);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let k = i % KEYS;
                match infra.get_user_secret(get("u1", &format!("k{k}"), 0)).await {
                    Ok(r)
                        if r.get_ref().secret.as_ref().unwrap().value
                            == format!("value-{k}").as_bytes() =>
                    {
                        ok += 1
                    }
                    other => failed.push(format!("{other:?}")),
                }
                i += 7;
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let rotated = operator
        .rotate_data_key(pb::RotateDataKeyRequest {
            expected_primary_key_id: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.primary_key.unwrap().id, "2");
    // A stale expectation is refused, not applied twice.
    let stale = operator
        .rotate_data_key(pb::RotateDataKeyRequest {
            expected_primary_key_id: "1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    let status = wait_for_rewrap(&mut operator).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for r in readers {
        let (o, f) = r.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} failed reads, first: {}",
        failed.len(),
        failed[0]
    );
    assert!(ok > 100, "only {ok} reads");
    let old = status.data_keys.iter().find(|k| k.id == "1").unwrap();
    let new = status.data_keys.iter().find(|k| k.id == "2").unwrap();
    assert_eq!(old.ciphertext_count, 0);
    assert_eq!(new.ciphertext_count, KEYS as i64);
    assert_eq!(new.state, pb::DataKeyState::Primary as i32);
    // The pass that emptied it retired it.
    assert_eq!(old.state, pb::DataKeyState::Retired as i32);
    let report = audit_report(&mesh).await;
    assert_eq!(report.broken, None);
}

/// The vault's audit chain, verified with its key as its own role.
async fn audit_report(mesh: &TestMesh) -> orchestrator_audit::VerifyReport {
    let key = orchestrator_audit::AuditKey::from_base64(&secrecy::SecretString::from(
        mesh.secret(Secret::AuditKey(VAULT)),
    ))
    .unwrap();
    let db = orchestrator_store::Database::connect(
        &mesh.db().url("vault"),
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    orchestrator_audit::verify(db.pool(), &key).await.unwrap()
}

async fn a_crash_mid_rewrap_resumes(backend: Backend) {
    let mut mesh = start_with(backend, &[("VAULT_REWRAP_BATCH", "10")]).await;
    let api = mesh.vault_as("api").await;
    let mut operator = mesh.vault_as("operator").await;
    const KEYS: usize = 400;
    put_many(&api, KEYS).await;
    grant_many(&mesh, KEYS).await;
    operator
        .rotate_data_key(pb::RotateDataKeyRequest::default())
        .await
        .unwrap();
    // Kill it while the rewrap is part-way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let rewrap = key_status(&mut operator).await.rewrap.unwrap();
        if rewrap.rows_done > 0 {
            assert!(
                rewrap.rows_done < rewrap.rows_total,
                "too fast to interrupt: {rewrap:?}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    mesh.kill(VAULT).await;

    // Same database, same keys, new process.
    mesh.restart(VAULT).await;
    let mut operator = mesh.vault_as("operator").await;
    let mut infra = mesh.vault_as("infra").await;
    let status = wait_for_rewrap(&mut operator).await;
    assert_eq!(
        status
            .data_keys
            .iter()
            .find(|k| k.id == "1")
            .unwrap()
            .ciphertext_count,
        0
    );
    for i in (0..KEYS).step_by(37) {
        let s = infra
            .get_user_secret(get("u1", &format!("k{i}"), 0))
            .await
            .unwrap()
            .into_inner()
            .secret
            .unwrap();
        assert_eq!(s.value, format!("value-{i}").as_bytes());
    }
    assert_eq!(audit_report(&mesh).await.broken, None);
}

on_both_more!(
    batched_requests_are_answered_as_if_alone,
    puts_of_one_key_at_once_take_versions_in_turn,
    rotation_while_eight_readers_read,
    a_crash_mid_rewrap_resumes
);

/// The database goes away and comes back: calls fail fast with UNAVAILABLE, `/readyz` says so,
/// and everything recovers without restarting the vault.
#[tokio::test]
async fn database_down_means_unavailable_then_recovery() {
    use orchestrator_store::testing::PgCluster;
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let mesh = TestMesh::builder()
        .database(TestDatabase::postgres_at(&cluster.admin_url(), &["vault"]).await)
        .service(VAULT)
        .start()
        .await;
    let vault = mesh.proc(VAULT);
    let mut api = mesh.vault_as("api").await;
    let mut infra = mesh.vault_as("infra").await;
    put_ok(&mut api, put("u1", "k", b"before", None)).await;
    grant(&mesh, "u1", &["k"]).await;
    assert_eq!(vault.admin_get("/readyz").await.unwrap().0, 200);

    cluster.stop();
    let started = std::time::Instant::now();
    let err = infra.get_user_secret(get("u1", "k", 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        api.put_user_secret(put("u1", "k", b"during", None))
            .await
            .unwrap_err()
            .code(),
        Code::Unavailable
    );
    let (code, body) = vault.admin_get("/readyz").await.unwrap();
    assert_eq!((code, body.trim()), (503, "not ready: database"));

    cluster.start_again();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match infra.get_user_secret(get("u1", "k", 0)).await {
            Ok(r) => {
                assert_eq!(r.into_inner().secret.unwrap().value, b"before");
                break;
            }
            Err(e) => assert!(std::time::Instant::now() < deadline, "no recovery: {e:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    put_ok(&mut api, put("u1", "k", b"after", None)).await;
    assert_eq!(vault.admin_get("/readyz").await.unwrap().0, 200);
}

async fn versions_are_pruned_and_keys_rotate_by_count(backend: Backend) {
    let mesh = start_with(
        backend,
        &[("VAULT_KEEP_VERSIONS", "3"), ("VAULT_ROTATE_AFTER", "4")],
    )
    .await;
    let (mut api, mut infra, mut operator) = (
        mesh.vault_as("api").await,
        mesh.vault_as("infra").await,
        mesh.vault_as("operator").await,
    );
    grant(&mesh, "u1", &["k"]).await;
    for i in 1..=6 {
        put_ok(&mut api, put("u1", "k", format!("v{i}").as_bytes(), None)).await;
    }
    let list = listed(&mut api, "u1").await;
    let versions: Vec<i64> = list.secrets[0].versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, vec![6, 5, 4]);
    assert_eq!(get_refused(&mut infra, "u1", "k", 2).await, Code::NotFound);
    // The 4th encryption crossed the threshold: a new data key took over by itself (and its
    // rewrap counts too, so with so small a threshold several keys follow).
    let status = key_status(&mut operator).await;
    let primary = status
        .data_keys
        .iter()
        .find(|k| k.state == pb::DataKeyState::Primary as i32)
        .unwrap();
    assert_ne!(primary.id, "1", "{status:?}");
    assert_eq!(primary.rotation_threshold, 4);
    for demoted in status
        .data_keys
        .iter()
        .filter(|k| k.state != pb::DataKeyState::Primary as i32)
    {
        assert!(
            demoted.encryption_count >= 4,
            "{demoted:?} was rotated early"
        );
    }
    let status = wait_for_rewrap(&mut operator).await;
    assert_eq!(
        status
            .data_keys
            .iter()
            .map(|k| k.ciphertext_count)
            .sum::<i64>(),
        3
    );
    for v in 4..=6 {
        let s = read(&mut infra, "u1", "k", v).await;
        assert_eq!(s.value, format!("v{v}").as_bytes());
    }
}

async fn a_new_master_key_rewraps_data_keys_only(backend: Backend) {
    let mut mesh = start(backend).await;
    let mut api = mesh.vault_as("api").await;
    put_ok(&mut api, put("u1", "k", b"kept", None)).await;
    grant(&mesh, "u1", &["k"]).await;
    let old = mesh.secret(Secret::VaultMasterKey);
    mesh.kill(VAULT).await;
    // The new key first (primary), the old one still present to unwrap.
    let with_keyring = |mesh: &TestMesh, keyring: String| {
        mesh.launch(VAULT)
            .without("VAULT_MASTER_KEY_FILE")
            .env("VAULT_MASTER_KEY", keyring)
    };
    let new = format!("k2:{}", orchestrator_e2e::random_key());
    let launch = with_keyring(&mesh, format!("{new},{old}"));
    mesh.spawn(launch).await;
    assert!(
        mesh.logs(VAULT)
            .contains("re-wrapped under the primary master key"),
        "{}",
        mesh.logs(VAULT)
    );
    let mut infra = mesh.vault_as("infra").await;
    assert_eq!(read(&mut infra, "u1", "k", 0).await.value, b"kept");
    let mut operator = mesh.vault_as("operator").await;
    let status = key_status(&mut operator).await;
    assert!(
        status
            .master_keys
            .iter()
            .any(|m| m.id == "k2" && m.primary && m.wrapped_data_key_count == 1),
        "{status:?}"
    );
    mesh.kill(VAULT).await;
    // The old master key can now be removed.
    let launch = with_keyring(&mesh, new);
    mesh.spawn(launch).await;
    let mut infra = mesh.vault_as("infra").await;
    assert_eq!(read(&mut infra, "u1", "k", 0).await.value, b"kept");
}

/// If the audit record cannot be written, the change does not happen (fail closed).
#[tokio::test]
async fn no_audit_record_no_change() {
    let mesh = start(Backend::Postgres).await;
    let mut api = mesh.vault_as("api").await;
    let mut infra = mesh.vault_as("infra").await;
    put_ok(&mut api, put("u1", "k", b"v1", None)).await;
    grant(&mesh, "u1", &["k"]).await;
    let role = mesh.db().url("vault");
    let role = role
        .expose_secret()
        .split("://")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    mesh.as_dba(VAULT, &format!("REVOKE INSERT ON audit_log FROM {role}"))
        .await;
    let err = api
        .put_user_secret(put("u1", "k", b"v2", None))
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    // Reads fail too: a value is released only after its read is recorded.
    assert!(infra.get_user_secret(get("u1", "k", 0)).await.is_err());
    mesh.as_dba(VAULT, &format!("GRANT INSERT ON audit_log TO {role}"))
        .await;
    let s = read(&mut infra, "u1", "k", 0).await;
    assert_eq!(
        (s.version, s.value.as_slice()),
        (1, &b"v1"[..]),
        "the failed write left a trace"
    );
}

/// Two replicas on one PostgreSQL database, started together: one chain, one key set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_database() {
    let mesh = start(Backend::Postgres).await;
    let (a, b) = tokio::join!(mesh.launch(VAULT).spawn(), mesh.launch(VAULT).spawn());
    let (a, b) = (a.unwrap(), b.unwrap());
    let client = |p, name| {
        let mesh = &mesh;
        async move { Vault::new(mesh.channel_to(p, name).await) }
    };
    let (mut api_a, mut infra_b, mut op_a) = (
        client(&a, "api").await,
        client(&b, "infra").await,
        client(&a, "operator").await,
    );
    let mut writers = Vec::new();
    for (i, p) in [&a, &b, &a, &b].into_iter().enumerate() {
        let mut api = client(p, "api").await;
        writers.push(tokio::spawn(async move {
            for j in 0..25 {
                put_ok(&mut api, put("u1", &format!("w{i}-{j}"), b"x", None)).await;
            }
        }));
    }
    put_ok(&mut api_a, put("u1", "shared", b"from-a", None)).await;
    grant(&mesh, "u1", &["shared"]).await;
    // Rotated on A, read and written through B: B learns the new key from the database.
    op_a.rotate_data_key(pb::RotateDataKeyRequest::default())
        .await
        .unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let mut api_b = client(&b, "api").await;
    put_ok(&mut api_b, put("u1", "after", b"from-b", None)).await;
    assert_eq!(read(&mut infra_b, "u1", "shared", 0).await.value, b"from-a");
    wait_for_rewrap(&mut op_a).await;
    let report = audit_report(&mesh).await;
    assert_eq!(report.broken, None, "{report:?}");
    assert!(report.records > 100);
}

/// A replica seals a Put under the primary data key it last counted on. After another replica
/// rotated, its next Put finds the new primary when it counts under the audit head, and runs
/// again sealed under that one: no value lands on a demoted key after the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_after_another_replica_rotated_lands_on_the_new_primary() {
    let mesh = start(Backend::Postgres).await;
    let (a, b) = tokio::join!(mesh.launch(VAULT).spawn(), mesh.launch(VAULT).spawn());
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut api_b = Vault::new(mesh.channel_to(&b, "api").await);
    let mut infra_b = Vault::new(mesh.channel_to(&b, "infra").await);
    let mut op_a = Vault::new(mesh.channel_to(&a, "operator").await);
    put_ok(&mut api_b, put("u1", "before", b"one", None)).await;
    op_a.rotate_data_key(pb::RotateDataKeyRequest::default())
        .await
        .unwrap();
    put_ok(&mut api_b, put("u1", "after", b"two", None)).await;
    let db = orchestrator_store::Database::connect(
        &mesh.db().url("vault"),
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    let (on, primary): (i64, i64) = sqlx::query_as(
        "SELECT v.data_key_id, (SELECT id FROM data_keys WHERE state = 'primary') \
         FROM user_vault v WHERE v.user_id = 'u1' AND v.key = 'after'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!((on, primary), (2, 2), "stored under the new primary");
    grant(&mesh, "u1", &["after"]).await;
    assert_eq!(read(&mut infra_b, "u1", "after", 0).await.value, b"two");
    let report = audit_report(&mesh).await;
    assert_eq!(report.broken, None, "{report:?}");
}
