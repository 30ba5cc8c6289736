//! The ledger on a real (SQLite) database: chained records, fail-closed work, and a writer that
//! survives a panicking request.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_audit::{AuditKey, Entry, Ledger, verify};
use orchestrator_store::Database;
use orchestrator_store::testing::TestDatabase;
use tonic::Code;

async fn ledger() -> (TestDatabase, Database, Ledger) {
    let test = TestDatabase::sqlite();
    let db = Database::connect(&test.url("audit"), Duration::from_secs(5))
        .await
        .unwrap();
    db.migrate([orchestrator_audit::migrations(db.dialect())])
        .await
        .unwrap();
    let ledger = Ledger::start(db.clone(), AuditKey::from_bytes(&[9; 32]));
    (test, db, ledger)
}

#[tokio::test]
async fn a_panicking_request_fails_alone_and_the_writer_goes_on() {
    let (_test, db, ledger) = ledger().await;
    ledger
        .record(Entry::new(
            "spiffe://o/api",
            "/x.V/Get",
            "users/u/secrets/a/versions/1",
        ))
        .await
        .unwrap();
    let err = ledger
        .write(
            |_conn| -> futures::future::BoxFuture<'_, Result<((), Vec<Entry>), tonic::Status>> {
                Box::pin(async { panic!("a bug in one request's work") })
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    ledger
        .record(Entry::new(
            "spiffe://o/api",
            "/x.V/Get",
            "users/u/secrets/a/versions/1",
        ))
        .await
        .unwrap();
    let report = verify(db.pool(), &AuditKey::from_bytes(&[9; 32]))
        .await
        .unwrap();
    assert_eq!((report.records, report.broken), (2, None));
}

#[tokio::test]
async fn a_refused_change_leaves_no_record_and_no_change() {
    let (_test, db, ledger) = ledger().await;
    let err = ledger
        .write(
            |conn| -> futures::future::BoxFuture<'_, Result<((), Vec<Entry>), tonic::Status>> {
                Box::pin(async move {
                    sqlx::query("CREATE TABLE scratch (x INTEGER)")
                        .execute(&mut *conn)
                        .await
                        .unwrap();
                    Err(tonic::Status::failed_precondition("refused after a change"))
                })
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // The savepoint rolled the change back; nothing was recorded.
    assert!(
        sqlx::query("SELECT * FROM scratch")
            .fetch_all(db.pool())
            .await
            .is_err()
    );
    let report = verify(db.pool(), &AuditKey::from_bytes(&[9; 32]))
        .await
        .unwrap();
    assert_eq!(report.records, 0);
}
