//! The ledger on a real (SQLite) database: chained records, fail-closed work, and a writer that
//! survives a panicking request.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

mod common;

use std::time::Duration;

use orchestrator_audit::{AuditKey, Entry, Ledger, verify};
use orchestrator_store::Database;
use orchestrator_store::testing::TestDatabase;
use tonic::Code;

/// `url`'s database with the audit tables migrated.
async fn migrated(url: &secrecy::SecretString) -> Database {
    let db = Database::connect(url, Duration::from_secs(5))
        .await
        .unwrap();
    db.migrate([orchestrator_audit::migrations(db.dialect())])
        .await
        .unwrap();
    db
}

async fn ledger() -> (TestDatabase, Database, Ledger<tonic::Status>) {
    let test = TestDatabase::sqlite();
    let db = migrated(&test.url("audit")).await;
    let ledger = Ledger::start(db.clone(), AuditKey::from_bytes(&[9; 32]));
    (test, db, ledger)
}

/// A fresh PostgreSQL database with the audit tables, as the ledger's owner.
async fn postgres() -> (TestDatabase, Database) {
    let test = TestDatabase::postgres(&["audit"]).await;
    let db = migrated(&test.migration_url("audit")).await;
    (test, db)
}

/// Records a read of a secret, durably.
async fn record_a_read(ledger: &Ledger<tonic::Status>) {
    ledger
        .record(Entry::new(
            "spiffe://o/api",
            "/x.V/Get",
            "users/u/secrets/a/versions/1",
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_panicking_request_fails_alone_and_the_writer_goes_on() {
    let (_test, db, ledger) = ledger().await;
    record_a_read(&ledger).await;
    let err = ledger
        .write(
            |_conn| -> futures::future::BoxFuture<'_, Result<((), Vec<Entry>), tonic::Status>> {
                Box::pin(async { panic!("a bug in one request's work") })
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    record_a_read(&ledger).await;
    let report = verify(db.pool(), &AuditKey::from_bytes(&[9; 32]))
        .await
        .unwrap();
    assert_eq!((report.records, report.broken), (2, None));
}

#[tokio::test]
async fn a_refused_change_leaves_no_record_and_no_change() {
    let (_test, db, ledger) = ledger().await;
    refused_change_leaves_no_trace(&db, &ledger).await;
    // On PostgreSQL as well, whose lone work runs without a savepoint.
    let (_test, db) = postgres().await;
    let ledger = Ledger::start(db.clone(), AuditKey::from_bytes(&[9; 32]));
    refused_change_leaves_no_trace(&db, &ledger).await;
}

/// A work alone in its batch changes the schema, then refuses: neither the change nor a record
/// remains, and the writer goes on.
async fn refused_change_leaves_no_trace(db: &Database, ledger: &Ledger<tonic::Status>) {
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
    // Its transaction rolled the change back; nothing was recorded.
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
    record_a_read(ledger).await;
    let report = verify(db.pool(), &AuditKey::from_bytes(&[9; 32]))
        .await
        .unwrap();
    assert_eq!((report.records, report.broken), (1, None));
}

/// The lookup a read's rollback check makes — the newest record about a row that carries a
/// digest — probes the partial index, on PostgreSQL as on SQLite, instead of walking back over
/// every audited read of that row (which would make reads slower the more a row is read).
#[tokio::test]
async fn the_newest_digest_of_a_row_is_one_index_probe() {
    // Per dialect: one write of the row (with a digest), 20,000 reads of it (without), the plan.
    const PG: [&str; 3] = [
        "INSERT INTO audit_log (seq, at_us, caller, method, target, outcome, request_id, detail, digest, mac) \
         VALUES (1, 0, 'c', 'm', 'users/u/keys/k/versions/1', 'ok', '', '', '\\x01'::bytea, '\\x00'::bytea)",
        "INSERT INTO audit_log (seq, at_us, caller, method, target, outcome, request_id, detail, digest, mac) \
         SELECT g, 0, 'c', 'm', 'users/u/keys/k/versions/1', 'ok', '', '', NULL, '\\x00'::bytea \
         FROM generate_series(2, 20001) AS g",
        "EXPLAIN SELECT MAX(seq) FROM audit_log \
         WHERE target = 'users/u/keys/k/versions/1' AND digest IS NOT NULL",
    ];
    const SQLITE: [&str; 3] = [
        "INSERT INTO audit_log (seq, at_us, caller, method, target, outcome, request_id, detail, digest, mac) \
         VALUES (1, 0, 'c', 'm', 'users/u/keys/k/versions/1', 'ok', '', '', x'01', x'00')",
        "INSERT INTO audit_log (seq, at_us, caller, method, target, outcome, request_id, detail, digest, mac) \
         WITH RECURSIVE s(g) AS (SELECT 2 UNION ALL SELECT g + 1 FROM s WHERE g < 20001) \
         SELECT g, 0, 'c', 'm', 'users/u/keys/k/versions/1', 'ok', '', '', NULL, x'00' FROM s",
        "EXPLAIN QUERY PLAN SELECT MAX(seq) FROM audit_log \
         WHERE target = 'users/u/keys/k/versions/1' AND digest IS NOT NULL",
    ];
    for test in [
        TestDatabase::postgres(&["audit"]).await,
        TestDatabase::sqlite(),
    ] {
        // As the schema's owner: the test writes rows and ANALYZEs as a migration would.
        let db = migrated(&test.migration_url("audit")).await;
        let postgres = db.dialect() == orchestrator_store::Dialect::Postgres;
        let [write, reads, explain] = if postgres { PG } else { SQLITE };
        sqlx::query(write).execute(db.pool()).await.unwrap();
        sqlx::query(reads).execute(db.pool()).await.unwrap();
        sqlx::query("ANALYZE audit_log")
            .execute(db.pool())
            .await
            .unwrap();
        let plan: Vec<String> = sqlx::query(explain)
            .fetch_all(db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| {
                use sqlx::Row as _;
                r.try_get::<String, _>(if postgres { 0 } else { 3 })
                    .unwrap_or_default()
            })
            .collect();
        assert!(
            plan.iter().any(|l| l.contains("audit_log_attested")),
            "{:?}: {plan:#?}",
            db.dialect()
        );
    }
}

/// A write that deadlocks with another transaction on the same rows (another replica's
/// un-ledgered lock, an operator's session) and is chosen as the victim is run again by
/// `write_retrying` instead of failing its caller (and, before `StoreError` told them apart,
/// being reported like a unique violation: "name taken").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_loses_a_deadlock_is_retried_and_lands() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::sync::Barrier;

    // As the schema's owner: the test creates a table of its own.
    let (_test, db) = postgres().await;
    for sql in [
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
        "INSERT INTO accounts VALUES (1, 0), (2, 0)",
    ] {
        sqlx::query(sql).execute(db.pool()).await.unwrap();
    }
    let key = || AuditKey::from_bytes(&[9; 32]);
    let ledger: Ledger<tonic::Status> = Ledger::start(db.clone(), key());
    let bump = "UPDATE accounts SET n = n + 1 WHERE id = $1";
    let meet = Arc::new(Barrier::new(2));
    let runs = Arc::new(AtomicU32::new(0));

    // The other transaction: row 2, then row 1, half a second after the ledger's work began
    // waiting for row 2. PostgreSQL looks for deadlocks in the session that has waited
    // deadlock_timeout (1 s), the work's, and aborts that one.
    let other = {
        let (pool, meet) = (db.pool().clone(), meet.clone());
        tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(bump).bind(2).execute(&mut *tx).await.unwrap();
            meet.wait().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            sqlx::query(bump).bind(1).execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        })
    };
    // The ledger's work: row 1, then row 2.
    let counted = runs.clone();
    let work = ledger.write_retrying(move |conn| {
        let (meet, run) = (meet.clone(), counted.fetch_add(1, Ordering::SeqCst));
        Box::pin(async move {
            let store = |e| tonic::Status::from(orchestrator_store::StoreError::from(e));
            sqlx::query(bump)
                .bind(1)
                .execute(&mut *conn)
                .await
                .map_err(store)?;
            if run == 0 {
                meet.wait().await;
            }
            sqlx::query(bump)
                .bind(2)
                .execute(&mut *conn)
                .await
                .map_err(store)?;
            Ok((
                (),
                vec![Entry::new("spiffe://o/api", "/x.V/Move", "accounts")],
            ))
        })
    });
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .expect("no deadlock detected")
        .unwrap();
    other.await.unwrap();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the deadlock's victim ran once more"
    );
    let totals: Vec<i32> = sqlx::query_scalar("SELECT n FROM accounts ORDER BY id")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(totals, [2, 2]);
    let report = verify(db.pool(), &key()).await.unwrap();
    assert_eq!((report.records, report.broken), (1, None));
}

#[test]
fn unique_violations_and_lost_races_are_told_apart() {
    use orchestrator_audit::Retryable as _;
    assert!(orchestrator_store::concurrent_change().is_retryable());
    assert!(!tonic::Status::aborted("some other abort").is_retryable());
    let duplicate = orchestrator_store::StoreError::Duplicate("unique".into());
    assert!(!duplicate.is_retryable());
    assert!(!tonic::Status::from(duplicate).is_retryable());
}

/// Two writers (two replicas) on one PostgreSQL database: each appends reads' records from the
/// head it last committed, by a compare-and-set on it. When the other moved the head, that
/// statement writes nothing and the batch takes the locking path: one linear chain, every
/// record in it. A head set back under a running writer is refused, not appended to.
#[tokio::test]
async fn replicas_append_to_one_chain_and_a_head_set_back_is_refused() {
    let (test, db) = postgres().await;
    let key = || AuditKey::from_bytes(&[9; 32]);
    let a: Ledger<tonic::Status> = Ledger::start(db.clone(), key());
    let b: Ledger<tonic::Status> = Ledger::start(db.clone(), key());
    let read = |n: usize| {
        Entry::new(
            "spiffe://o/infra",
            "/x.V/Get",
            format!("users/u/secrets/k{n}/versions/1"),
        )
    };
    // Turns (each writer's known head is stale every time), then both at once.
    for n in 0..10 {
        let ledger = if n % 2 == 0 { &a } else { &b };
        ledger.record(read(n)).await.unwrap();
    }
    let both = (0..200).map(|n| {
        let ledger = if n % 2 == 0 { a.clone() } else { b.clone() };
        async move { ledger.record(read(n)).await }
    });
    for result in futures::future::join_all(both).await {
        result.unwrap();
    }
    let report = verify(db.pool(), &key()).await.unwrap();
    assert_eq!((report.records, report.broken), (210, None));

    // `a` writes the newest record; the database's owner then removes it (behind the
    // triggers) and sets the head back by one: `a` must not chain from there.
    a.record(read(500)).await.unwrap();
    common::set_head_back(&test, 210).await;
    let err = a.record(read(999)).await.unwrap_err();
    assert!(
        matches!(err, orchestrator_audit::AuditError::Tampered(_)),
        "{err:?}"
    );
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(count, 210, "nothing appended after the head was set back");
}

/// On PostgreSQL a batch's records travel as one JSON document: text with quotes, backslashes,
/// newlines and non-ASCII, and binary digests of every byte value, come back exactly as
/// written, both through the known-head append and the locking one, and the chain verifies.
#[tokio::test]
async fn records_keep_every_byte_through_the_batch_append() {
    let (_test, db) = postgres().await;
    let ledger: Ledger<tonic::Status> = Ledger::start(db.clone(), AuditKey::from_bytes(&[9; 32]));
    let awkward = |n: u8| {
        Entry::new(
            "spiffe://o/infra",
            "/x.V/Get",
            format!("users/\"q\\u{n}'/secrets/k\n\t{n}/versions/é✓"),
        )
        .detail(format!("for project {{\"json\": [{n}]}} \\\\ end"))
        .request_id(format!("req-{n}-\u{1F512}"))
        .digest((0..=255u8).map(|b| b.wrapping_add(n)).collect::<Vec<u8>>())
    };
    // The first record takes the locking path (no known head yet), the rest the known head.
    let batch = (0..40u8).map(|n| ledger.record(awkward(n)));
    for result in futures::future::join_all(batch).await {
        result.unwrap();
    }
    // And a change's records, through the locking path again.
    let change = awkward(200);
    ledger
        .write(move |_conn| Box::pin(async move { Ok::<_, tonic::Status>(((), vec![change])) }))
        .await
        .unwrap();
    let rows: Vec<(String, String, String, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT target, detail, request_id, digest FROM audit_log ORDER BY seq")
            .fetch_all(db.pool())
            .await
            .unwrap();
    let mut expected: Vec<_> = (0..40u8).chain([200]).map(awkward).collect();
    let mut got = rows;
    expected.sort_by_key(|e| e.target.clone());
    got.sort_by_key(|r| r.0.clone());
    assert_eq!(got.len(), expected.len());
    for (row, entry) in got.iter().zip(&expected) {
        assert_eq!(row.0, entry.target);
        assert_eq!(row.1, entry.detail);
        assert_eq!(row.2, entry.request_id);
        assert_eq!(row.3, entry.digest);
    }
    let report = verify(db.pool(), &AuditKey::from_bytes(&[9; 32]))
        .await
        .unwrap();
    assert_eq!((report.records, report.broken), (41, None));
}
