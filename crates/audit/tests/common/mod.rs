//! Helpers the ledger's test files share.

use std::time::Duration;

use orchestrator_store::Database;
use orchestrator_store::testing::TestDatabase;

/// As the database's owner (behind the append-only triggers): removes record `seq + 1`, the
/// newest, and sets the head back to record `seq`, as a restore from an older copy would.
pub(crate) async fn set_head_back(test: &TestDatabase, seq: i64) {
    let admin = Database::connect(&test.admin_url("audit"), Duration::from_secs(5))
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit.audit_log DISABLE TRIGGER audit_log_append_only")
        .execute(admin.pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit.audit_log WHERE seq = $1")
        .bind(seq + 1)
        .execute(admin.pool())
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit.audit_head SET seq = $1, \
         mac = (SELECT mac FROM audit.audit_log WHERE seq = $1) WHERE id = 1",
    )
    .bind(seq)
    .execute(admin.pool())
    .await
    .unwrap();
}
