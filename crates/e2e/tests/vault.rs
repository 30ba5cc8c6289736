//! The vault over real mTLS, against PostgreSQL (a fresh database, own role and schema) and
//! SQLite: values, versions, check-and-set, deletion, tampering, audit, key checks.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use orchestrator_e2e::{Launch, Pki, Proc};
use orchestrator_mesh::Service;
use orchestrator_proto::vault::v1 as pb;
use orchestrator_proto::vault::v1::vault_service_client::VaultServiceClient;
use orchestrator_store::testing::TestDatabase;
use secrecy::ExposeSecret;
use sqlx::Connection as _;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Postgres,
    Sqlite,
}

struct Harness {
    _pki: Pki,
    db: TestDatabase,
    vault: Proc,
    audit_key: String,
    audit_key_file: String,
    master_key_file: String,
    api: VaultServiceClient<Channel>,
    infra: VaultServiceClient<Channel>,
    operator: VaultServiceClient<Channel>,
}

async fn start(backend: Backend) -> Harness {
    start_with(backend, |l| l).await
}

async fn start_with(backend: Backend, tweak: impl FnOnce(Launch) -> Launch) -> Harness {
    let pki = Pki::new().unwrap();
    let db = match backend {
        Backend::Postgres => TestDatabase::postgres(&["vault", "infra"]).await,
        Backend::Sqlite => TestDatabase::sqlite(),
    };
    let launch = tweak(
        Launch::new(Service::Vault, &pki)
            .unwrap()
            .database(&db.url("vault")),
    );
    let audit_key_file = launch.get("AUDIT_KEY_FILE").unwrap().to_owned();
    let master_key_file = launch
        .get("VAULT_MASTER_KEY_FILE")
        .unwrap_or_default()
        .to_owned();
    let audit_key = std::fs::read_to_string(&audit_key_file).unwrap();
    let vault = launch.spawn().await.unwrap();
    let client = |name: &str| {
        let tls = pki.client(name).unwrap();
        let vault = &vault;
        async move { VaultServiceClient::new(vault.channel(&tls).await.unwrap()) }
    };
    let (api, infra, operator) = (
        client("api").await,
        client("infra").await,
        client("operator").await,
    );
    Harness {
        _pki: pki,
        db,
        vault,
        audit_key,
        audit_key_file,
        master_key_file,
        api,
        infra,
        operator,
    }
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
async fn read(
    client: &mut VaultServiceClient<Channel>,
    user: &str,
    key: &str,
    version: i64,
) -> pb::UserSecret {
    client
        .get_user_secret(get(user, key, version))
        .await
        .unwrap()
        .into_inner()
        .secret
        .unwrap()
}

/// A vault client on `proc` as `name`.
async fn client_of(proc: &Proc, pki: &Pki, name: &str) -> VaultServiceClient<Channel> {
    VaultServiceClient::new(proc.channel(&pki.client(name).unwrap()).await.unwrap())
}

fn get(user: &str, key: &str, version: i64) -> pb::GetUserSecretRequest {
    pb::GetUserSecretRequest {
        user_id: user.into(),
        key: key.into(),
        version,
    }
}

/// Runs SQL as the database superuser (PostgreSQL) or on the file (SQLite): a malicious DBA.
async fn as_dba(h: &Harness, sql: &str) {
    let url = h.db.admin_url("vault");
    let sql = if h.db.is_postgres() {
        format!("SET search_path = vault; {sql}")
    } else {
        sql.to_owned()
    };
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url.expose_secret())
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .unwrap();
}

async fn round_trip_versions_and_cas(backend: Backend) {
    let mut h = start(backend).await;
    let first = h
        .api
        .put_user_secret(put("u1", "do/token", b"v1-secret", Some(0)))
        .await;
    let first = first
        .unwrap_or_else(|e| panic!("{e:?}\n{}", h.vault.logs()))
        .into_inner();
    assert_eq!(first.secret.unwrap().current_version, 1);

    // Create-only again: refused with the current version in the ErrorInfo.
    let err = h
        .api
        .put_user_secret(put("u1", "do/token", b"x", Some(0)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let info = err.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "VERSION_MISMATCH");
    assert_eq!(info.metadata["current_version"], "1");

    h.api
        .put_user_secret(put("u1", "do/token", b"v2-secret", Some(1)))
        .await
        .unwrap();
    let stale = h
        .api
        .put_user_secret(put("u1", "do/token", b"x", Some(1)))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    h.api
        .put_user_secret(put("u1", "do/token", b"v3-secret", None))
        .await
        .unwrap();

    let latest = read(&mut h.infra, "u1", "do/token", 0).await;
    assert_eq!(
        (latest.version, latest.value.as_slice()),
        (3, &b"v3-secret"[..])
    );
    let v1 = read(&mut h.infra, "u1", "do/token", 1).await;
    assert_eq!(v1.value, b"v1-secret");

    // Another user's key of the same name is another secret.
    assert_eq!(
        h.infra
            .get_user_secret(get("u2", "do/token", 0))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // Batch: all or nothing.
    let batch = pb::BatchGetUserSecretsRequest {
        requests: vec![get("u1", "do/token", 1), get("u1", "do/token", 2)],
    };
    let got = h
        .infra
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
    let err = h.infra.batch_get_user_secrets(batch).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("requests[1]"), "{}", err.message());

    // List: names, versions and times, never values.
    let list = h
        .api
        .list_user_secrets(pb::ListUserSecretsRequest {
            user_id: "u1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
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
            h.api
                .put_user_secret(put("u9", key, format!("{key}{n}").as_bytes(), None))
                .await
                .unwrap();
        }
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .api
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
    let deleted = h
        .api
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
    let latest = read(&mut h.infra, "u1", "do/token", 0).await;
    assert_eq!(latest.version, 2);
    assert_eq!(
        h.infra
            .get_user_secret(get("u1", "do/token", 3))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let destroy = pb::DeleteUserSecretRequest {
        user_id: "u1".into(),
        key: "do/token".into(),
        versions: vec![],
        destroy: true,
    };
    h.api.delete_user_secret(destroy.clone()).await.unwrap();
    h.api.delete_user_secret(destroy).await.unwrap(); // idempotent
    assert_eq!(
        h.infra
            .get_user_secret(get("u1", "do/token", 0))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // Bad input: every violation at once, nothing written.
    let err = h
        .api
        .put_user_secret(put("", "bad key!", b"", Some(-1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<_> = err
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|f| f.field.clone())
        .collect();
    assert_eq!(fields, vec!["user_id", "key", "value", "expected_version"]);
    assert!(h.vault.logs().contains("PutUserSecret"));
}

async fn tampering_is_detected(backend: Backend) {
    let mut h = start(backend).await;
    h.api
        .put_user_secret(put("alice", "cf", b"alice-token", None))
        .await
        .unwrap();
    h.api
        .put_user_secret(put("bob", "cf", b"bob-token", None))
        .await
        .unwrap();

    // Copy alice's ciphertext into bob's row: it must not decrypt as bob's.
    as_dba(&h, "UPDATE user_vault SET encrypted_value = (SELECT encrypted_value FROM user_vault WHERE user_id = 'alice') WHERE user_id = 'bob'").await;
    assert_eq!(
        h.infra
            .get_user_secret(get("bob", "cf", 0))
            .await
            .unwrap_err()
            .code(),
        Code::DataLoss
    );
    assert_eq!(
        read(&mut h.infra, "alice", "cf", 0).await.value,
        b"alice-token"
    );

    // Roll back a deletion (a restore, a DBA): the row looks live again, the audit chain says no.
    h.api
        .delete_user_secret(pb::DeleteUserSecretRequest {
            user_id: "alice".into(),
            key: "cf".into(),
            versions: vec![1],
            destroy: false,
        })
        .await
        .unwrap();
    as_dba(
        &h,
        "UPDATE user_vault SET deleted_us = NULL WHERE user_id = 'alice'",
    )
    .await;
    let err = h
        .infra
        .get_user_secret(get("alice", "cf", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");

    // Replace a row with an older ciphertext of the same (user, key, version): write v1, keep
    // its ciphertext, destroy it, write the old bytes back.
    h.api
        .put_user_secret(put("carol", "do", b"carol-token", None))
        .await
        .unwrap();
    as_dba(&h, "CREATE TABLE stash AS SELECT encrypted_value, data_key_id FROM user_vault WHERE user_id = 'carol'").await;
    h.api
        .delete_user_secret(pb::DeleteUserSecretRequest {
            user_id: "carol".into(),
            key: "do".into(),
            versions: vec![],
            destroy: true,
        })
        .await
        .unwrap();
    as_dba(
        &h,
        "UPDATE user_vault SET destroyed = 0, deleted_us = NULL, \
         encrypted_value = (SELECT encrypted_value FROM stash), data_key_id = (SELECT data_key_id FROM stash) WHERE user_id = 'carol'",
    )
    .await;
    assert_eq!(
        h.infra
            .get_user_secret(get("carol", "do", 0))
            .await
            .unwrap_err()
            .code(),
        Code::DataLoss
    );
}

async fn audit_chain_verifies_and_names_an_edited_record(backend: Backend) {
    let mut h = start(backend).await;
    for i in 0..5 {
        h.api
            .put_user_secret(put("u1", &format!("k{i}"), b"value", None))
            .await
            .unwrap();
        h.infra
            .get_user_secret(get("u1", &format!("k{i}"), 0))
            .await
            .unwrap();
    }
    let key = orchestrator_audit::AuditKey::from_base64(&secrecy::SecretString::from(
        h.audit_key.clone(),
    ))
    .unwrap();
    // Verification reads as the service's own role: SELECT is all it needs.
    let db = orchestrator_store::Database::connect(
        &h.db.url("vault"),
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    let verify = |db: orchestrator_store::Database| {
        let key = &key;
        async move { orchestrator_audit::verify(db.pool(), key).await.unwrap() }
    };
    let report = verify(db.clone()).await;
    assert_eq!(report.records, 10, "{report:?}");
    assert_eq!(report.broken, None);

    // The service's own role cannot edit or delete audit rows.
    let own = orchestrator_store::Database::connect(
        &h.db.url("vault"),
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
    let bypass = if h.db.is_postgres() {
        "SET session_replication_role = replica; UPDATE audit_log SET target = 'users/u1/secrets/other/versions/1' WHERE seq = 3"
    } else {
        "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET target = 'users/u1/secrets/other/versions/1' WHERE seq = 3"
    };
    as_dba(&h, bypass).await;
    let report = verify(db).await;
    let broken = report.broken.expect("the edit is found");
    assert_eq!(broken.seq, 3, "{broken:?}");
    assert!(broken.reason.contains("MAC"), "{broken:?}");
}

async fn canary_is_only_ever_ciphertext(backend: Backend) {
    let canary = format!("canary-{}", orchestrator_e2e::random_key());
    let mut h = start_with(backend, |l| l.env("RUST_LOG", "trace")).await;
    h.api
        .put_user_secret(put("u1", "token", canary.as_bytes(), None))
        .await
        .unwrap();
    let got = read(&mut h.infra, "u1", "token", 0).await;
    assert_eq!(got.value, canary.as_bytes());
    let _ = h
        .api
        .put_user_secret(put("u1", "token", canary.as_bytes(), Some(0)))
        .await
        .unwrap_err();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let logs = h.vault.logs();
    assert!(logs.contains("TRACE") || logs.contains("DEBUG") || logs.contains("rpc finished"));
    assert!(!logs.contains(&canary), "the canary reached the logs");

    // Every table, every column, as text and as bytes.
    let url = h.db.admin_url("vault");
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url.expose_secret())
        .await
        .unwrap();
    let tables = [
        "audit_log",
        "audit_head",
        "data_keys",
        "user_vault_keys",
        "user_vault",
        "put_requests",
    ];
    for table in tables {
        let sql = if h.db.is_postgres() {
            format!("SELECT CAST(t AS TEXT) AS dump FROM vault.{table} t")
        } else {
            dump_sqlite(table)
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        for row in rows {
            let dump: String = sqlx::Row::try_get(&row, "dump").unwrap();
            assert!(!dump.contains(&canary), "{table} holds the canary in clear");
            let hex: String = canary.bytes().map(|b| format!("{b:02x}")).collect();
            assert!(
                !dump.to_lowercase().contains(&hex),
                "{table} holds the canary's bytes"
            );
        }
    }
    drop(h.operator);
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
    let h = start(backend).await;
    let mut api = h.api.clone();
    api.put_user_secret(put("u1", "k", b"v", None))
        .await
        .unwrap();
    drop(h.vault);
    let pki = Pki::new().unwrap();
    let (code, output) = Launch::new(Service::Vault, &pki)
        .unwrap()
        .database(&h.db.url("vault"))
        .without("VAULT_MASTER_KEY_FILE")
        .env(
            "VAULT_MASTER_KEY",
            format!("k1:{}", orchestrator_e2e::random_key()),
        )
        .run_to_exit()
        .await
        .unwrap();
    assert_ne!(code, Some(0));
    assert!(output.contains("does not match data key 1"), "{output}");
    assert!(output.contains("key check value"), "{output}");
}

async fn role_separation(backend: Backend) {
    let h = start(backend).await;
    if !h.db.is_postgres() {
        return; // SQLite: separate files per service, no roles.
    }
    let infra = orchestrator_store::Database::connect(
        &h.db.url("infra"),
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
    let mut h = start(backend).await;
    let mut first = put("u1", "k", b"v1", None);
    first.request_id = "put-1".into();
    let written = h
        .api
        .put_user_secret(first.clone())
        .await
        .unwrap()
        .into_inner()
        .secret
        .unwrap();
    assert_eq!(written.current_version, 1);
    h.api
        .put_user_secret(put("u1", "k", b"v2", None))
        .await
        .unwrap();
    let again = h
        .api
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
    let refused = h.api.put_user_secret(elsewhere).await.unwrap_err();
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

async fn put_many(api: &VaultServiceClient<Channel>, n: usize) {
    let mut tasks = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(n.div_ceil(16)) {
        let (mut api, chunk) = (api.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for i in chunk {
                api.put_user_secret(put(
                    "u1",
                    &format!("k{i}"),
                    format!("value-{i}").as_bytes(),
                    None,
                ))
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn key_status(operator: &mut VaultServiceClient<Channel>) -> pb::GetKeyStatusResponse {
    operator
        .get_key_status(pb::GetKeyStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits until no ciphertext is left on a demoted key.
async fn wait_for_rewrap(operator: &mut VaultServiceClient<Channel>) -> pb::GetKeyStatusResponse {
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
    let mut h = start_with(backend, |l| l.env("VAULT_REWRAP_BATCH", "25")).await;
    const KEYS: usize = 300;
    put_many(&h.api, KEYS).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..8 {
        let (mut infra, stop) = (h.infra.clone(), stop.clone());
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
    let rotated = h
        .operator
        .rotate_data_key(pb::RotateDataKeyRequest {
            expected_primary_key_id: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.primary_key.unwrap().id, "2");
    // A stale expectation is refused, not applied twice.
    let stale = h
        .operator
        .rotate_data_key(pb::RotateDataKeyRequest {
            expected_primary_key_id: "1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    let status = wait_for_rewrap(&mut h.operator).await;
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
    let report = audit_report(&h).await;
    assert_eq!(report.broken, None);
}

async fn audit_report(h: &Harness) -> orchestrator_audit::VerifyReport {
    let key = orchestrator_audit::AuditKey::from_base64(&secrecy::SecretString::from(
        h.audit_key.clone(),
    ))
    .unwrap();
    let db = orchestrator_store::Database::connect(
        &h.db.url("vault"),
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    orchestrator_audit::verify(db.pool(), &key).await.unwrap()
}

async fn a_crash_mid_rewrap_resumes(backend: Backend) {
    let mut h = start_with(backend, |l| l.env("VAULT_REWRAP_BATCH", "10")).await;
    const KEYS: usize = 400;
    put_many(&h.api, KEYS).await;
    h.operator
        .rotate_data_key(pb::RotateDataKeyRequest::default())
        .await
        .unwrap();
    // Kill it while the rewrap is part-way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let rewrap = key_status(&mut h.operator).await.rewrap.unwrap();
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
    h.vault.kill().await;

    // Same database, same keys, new process.
    let pki = Pki::new().unwrap();
    let vault = Launch::new(Service::Vault, &pki)
        .unwrap()
        .database(&h.db.url("vault"))
        .env("AUDIT_KEY_FILE", h.audit_key_file.clone())
        .env("VAULT_MASTER_KEY_FILE", h.master_key_file.clone())
        .spawn()
        .await
        .unwrap();
    let mut operator = client_of(&vault, &pki, "operator").await;
    let mut infra = client_of(&vault, &pki, "infra").await;
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
    assert_eq!(audit_report(&h).await.broken, None);
}

on_both_more!(
    rotation_while_eight_readers_read,
    a_crash_mid_rewrap_resumes
);

/// The database goes away and comes back: calls fail fast with UNAVAILABLE, `/readyz` says so,
/// and everything recovers without restarting the vault.
#[tokio::test]
async fn database_down_means_unavailable_then_recovery() {
    use orchestrator_store::testing::PgCluster;
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let db = TestDatabase::postgres_at(&cluster.admin_url(), &["vault"]).await;
    let pki = Pki::new().unwrap();
    let vault = Launch::new(Service::Vault, &pki)
        .unwrap()
        .database(&db.url("vault"))
        .spawn()
        .await
        .unwrap();
    let mut api = client_of(&vault, &pki, "api").await;
    let mut infra = client_of(&vault, &pki, "infra").await;
    api.put_user_secret(put("u1", "k", b"before", None))
        .await
        .unwrap();
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
    api.put_user_secret(put("u1", "k", b"after", None))
        .await
        .unwrap();
    assert_eq!(vault.admin_get("/readyz").await.unwrap().0, 200);
    drop(db);
}

async fn versions_are_pruned_and_keys_rotate_by_count(backend: Backend) {
    let mut h = start_with(backend, |l| {
        l.env("VAULT_KEEP_VERSIONS", "3")
            .env("VAULT_ROTATE_AFTER", "4")
    })
    .await;
    for i in 1..=6 {
        h.api
            .put_user_secret(put("u1", "k", format!("v{i}").as_bytes(), None))
            .await
            .unwrap();
    }
    let list = h
        .api
        .list_user_secrets(pb::ListUserSecretsRequest {
            user_id: "u1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<i64> = list.secrets[0].versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, vec![6, 5, 4]);
    assert_eq!(
        h.infra
            .get_user_secret(get("u1", "k", 2))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // The 4th encryption crossed the threshold: a new data key took over by itself (and its
    // rewrap counts too, so with so small a threshold several keys follow).
    let status = key_status(&mut h.operator).await;
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
    let status = wait_for_rewrap(&mut h.operator).await;
    assert_eq!(
        status
            .data_keys
            .iter()
            .map(|k| k.ciphertext_count)
            .sum::<i64>(),
        3
    );
    for v in 4..=6 {
        let s = read(&mut h.infra, "u1", "k", v).await;
        assert_eq!(s.value, format!("v{v}").as_bytes());
    }
}

async fn a_new_master_key_rewraps_data_keys_only(backend: Backend) {
    let mut h = start(backend).await;
    h.api
        .put_user_secret(put("u1", "k", b"kept", None))
        .await
        .unwrap();
    let old = std::fs::read_to_string(&h.master_key_file).unwrap();
    h.vault.kill().await;
    // The new key first (primary), the old one still present to unwrap.
    let pki = Pki::new().unwrap();
    let launch = |keyring: String| {
        Launch::new(Service::Vault, &pki)
            .unwrap()
            .database(&h.db.url("vault"))
            .env("AUDIT_KEY_FILE", h.audit_key_file.clone())
            .without("VAULT_MASTER_KEY_FILE")
            .env("VAULT_MASTER_KEY", keyring)
    };
    let new = format!("k2:{}", orchestrator_e2e::random_key());
    let vault = launch(format!("{new},{old}")).spawn().await.unwrap();
    assert!(
        vault
            .logs()
            .contains("re-wrapped under the primary master key"),
        "{}",
        vault.logs()
    );
    let mut infra = client_of(&vault, &pki, "infra").await;
    assert_eq!(read(&mut infra, "u1", "k", 0).await.value, b"kept");
    let mut operator = client_of(&vault, &pki, "operator").await;
    let status = key_status(&mut operator).await;
    assert!(
        status
            .master_keys
            .iter()
            .any(|m| m.id == "k2" && m.primary && m.wrapped_data_key_count == 1),
        "{status:?}"
    );
    drop(vault);
    // The old master key can now be removed.
    let vault = launch(new).spawn().await.unwrap();
    let mut infra = client_of(&vault, &pki, "infra").await;
    assert_eq!(read(&mut infra, "u1", "k", 0).await.value, b"kept");
}

/// If the audit record cannot be written, the change does not happen (fail closed).
#[tokio::test]
async fn no_audit_record_no_change() {
    let mut h = start(Backend::Postgres).await;
    h.api
        .put_user_secret(put("u1", "k", b"v1", None))
        .await
        .unwrap();
    let role = h.db.url("vault");
    let role = role
        .expose_secret()
        .split("://")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    as_dba(&h, &format!("REVOKE INSERT ON audit_log FROM {role}")).await;
    let err = h
        .api
        .put_user_secret(put("u1", "k", b"v2", None))
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    // Reads fail too: a value is released only after its read is recorded.
    assert!(h.infra.get_user_secret(get("u1", "k", 0)).await.is_err());
    as_dba(&h, &format!("GRANT INSERT ON audit_log TO {role}")).await;
    let s = read(&mut h.infra, "u1", "k", 0).await;
    assert_eq!(
        (s.version, s.value.as_slice()),
        (1, &b"v1"[..]),
        "the failed write left a trace"
    );
}

/// Two replicas on one PostgreSQL database, started together: one chain, one key set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_database() {
    let h = start(Backend::Postgres).await;
    let pki = Pki::new().unwrap();
    let (a, b) = tokio::join!(
        Launch::new(Service::Vault, &pki)
            .unwrap()
            .database(&h.db.url("vault"))
            .env("AUDIT_KEY_FILE", h.audit_key_file.clone())
            .env("VAULT_MASTER_KEY_FILE", h.master_key_file.clone())
            .spawn(),
        Launch::new(Service::Vault, &pki)
            .unwrap()
            .database(&h.db.url("vault"))
            .env("AUDIT_KEY_FILE", h.audit_key_file.clone())
            .env("VAULT_MASTER_KEY_FILE", h.master_key_file.clone())
            .spawn(),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let client = |p: &Proc, name: &str| {
        let tls = pki.client(name).unwrap();
        let addr = p.grpc;
        async move {
            VaultServiceClient::new(
                orchestrator_e2e::channel(&tls, addr, "vault")
                    .await
                    .unwrap(),
            )
        }
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
                api.put_user_secret(put("u1", &format!("w{i}-{j}"), b"x", None))
                    .await
                    .unwrap();
            }
        }));
    }
    api_a
        .put_user_secret(put("u1", "shared", b"from-a", None))
        .await
        .unwrap();
    // Rotated on A, read and written through B: B learns the new key from the database.
    op_a.rotate_data_key(pb::RotateDataKeyRequest::default())
        .await
        .unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let mut api_b = client(&b, "api").await;
    api_b
        .put_user_secret(put("u1", "after", b"from-b", None))
        .await
        .unwrap();
    assert_eq!(read(&mut infra_b, "u1", "shared", 0).await.value, b"from-a");
    wait_for_rewrap(&mut op_a).await;
    let report = audit_report(&h).await;
    assert_eq!(report.broken, None, "{report:?}");
    assert!(report.records > 100);
}
