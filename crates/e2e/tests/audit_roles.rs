//! The runtime role owns nothing (issue 12.3): on PostgreSQL the migrations run as the schema's
//! owner (`DATABASE_MIGRATION_URL`), and the role a service serves with (`DATABASE_URL`) can
//! read and write rows but cannot drop the audit log's triggers, alter a table, change or remove
//! audit records, or grant itself more.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_e2e::TestMesh;
use orchestrator_mesh::Service;
use orchestrator_proto::vault::v1 as pb;
use orchestrator_store::Database;

const VAULT: Service = Service::Vault;

async fn put(mesh: &TestMesh, key: &str) {
    mesh.vault_as("api")
        .await
        .put_user_secret(pb::PutUserSecretRequest {
            user_id: "u1".into(),
            key: key.into(),
            value: b"value".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn the_runtime_role_cannot_drop_triggers_or_alter_tables() {
    let mut mesh = TestMesh::builder().postgres().service(VAULT).start().await;
    put(&mesh, "k1").await;

    let runtime = Database::connect(&mesh.db().url("vault"), Duration::from_secs(5))
        .await
        .unwrap();
    for sql in [
        "DROP TRIGGER audit_log_append_only ON audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER ALL",
        "ALTER TABLE user_vault ADD COLUMN extra BIGINT",
        "DROP TABLE put_requests",
        "CREATE TABLE extra (x BIGINT)",
        "UPDATE audit_log SET target = 'x' WHERE seq = 1",
        "DELETE FROM audit_log WHERE seq = 1",
        "TRUNCATE audit_log",
        "ALTER TABLE audit_log OWNER TO CURRENT_USER",
        "DELETE FROM _sqlx_migrations",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(runtime.pool())
            .await
            .expect_err(sql);
        let message = err.to_string();
        assert!(
            message.contains("must be owner")
                || message.contains("permission denied")
                || message.contains("append-only"),
            "{sql}: {message}"
        );
    }
    // What the service needs, it has.
    sqlx::query("SELECT COUNT(*) FROM user_vault")
        .fetch_one(runtime.pool())
        .await
        .unwrap();
    runtime.pool().close().await;

    // A restart runs the (already applied) migrations and the grants again: still serving.
    mesh.restart(VAULT).await;
    put(&mesh, "k2").await;
    let logs = mesh.logs(VAULT);
    assert!(!logs.contains("DATABASE_MIGRATION_URL:"), "{logs}");
}
