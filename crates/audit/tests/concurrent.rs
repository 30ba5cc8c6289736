//! Concurrent writes (`Ledger::write_concurrently`) on a real PostgreSQL database: their work
//! runs beside the writer's batches and their records join the one chain; a refusal leaves no
//! trace; a lock cycle with a writer's work is broken on the concurrent side; a head set back
//! is refused.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use orchestrator_audit::{AuditKey, Entry, Ledger, verify};
use orchestrator_store::testing::TestDatabase;
use orchestrator_store::{Database, StoreError};
use tokio::sync::Barrier;
use tonic::Status;

fn key() -> AuditKey {
    AuditKey::from_bytes(&[9; 32])
}

/// A fresh PostgreSQL database with the audit tables and a table of counters `1..=rows`, as
/// its owner (the tests create a table of their own).
async fn postgres(rows: i32) -> (TestDatabase, Database) {
    let test = TestDatabase::postgres(&["audit"]).await;
    let db = Database::connect(&test.migration_url("audit"), Duration::from_secs(5))
        .await
        .unwrap();
    db.migrate([orchestrator_audit::migrations(db.dialect())])
        .await
        .unwrap();
    sqlx::query("CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO counters SELECT i, 0 FROM generate_series(1, $1) AS i")
        .bind(rows)
        .execute(db.pool())
        .await
        .unwrap();
    (test, db)
}

/// Adds one to counter `id` in `conn`'s transaction.
async fn bump(conn: &mut sqlx::AnyConnection, id: i32) -> Result<(), Status> {
    sqlx::query("UPDATE counters SET n = n + 1 WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await
        .map(drop)
        .map_err(|e| Status::from(StoreError::from(e)))
}

fn bumped(id: i32) -> Entry {
    Entry::new("spiffe://o/api", "/x.V/Bump", format!("counters/{id}"))
}

async fn counters(db: &Database) -> Vec<i32> {
    sqlx::query_scalar("SELECT n FROM counters ORDER BY id")
        .fetch_all(db.pool())
        .await
        .unwrap()
}

/// Concurrent writes, the writer's works and reads' records, all at once: every change is
/// there, each with its record, in one unbroken chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_and_the_writer_share_one_chain() {
    let (_test, db) = postgres(20).await;
    let ledger: Ledger<Status> = Ledger::start(db.clone(), key());
    let mut tasks = Vec::new();
    for n in 0..300 {
        let ledger = ledger.clone();
        let id = n % 20 + 1;
        tasks.push(tokio::spawn(async move {
            match n % 3 {
                0 => {
                    ledger
                        .write_concurrently(|tx| {
                            Box::pin(async move {
                                bump(tx.conn(), id).await?;
                                Ok(((), vec![bumped(id)]))
                            })
                        })
                        .await
                }
                1 => {
                    ledger
                        .write_retrying(move |conn| {
                            Box::pin(async move {
                                bump(conn, id).await?;
                                Ok(((), vec![bumped(id)]))
                            })
                        })
                        .await
                }
                _ => ledger
                    .record(Entry::new("spiffe://o/infra", "/x.V/Get", "counters"))
                    .await
                    .map_err(Status::from),
            }
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    // 200 bumps over 20 counters, 100 reads' records.
    assert_eq!(counters(&db).await, [10; 20]);
    let report = verify(db.pool(), &key()).await.unwrap();
    assert_eq!((report.records, report.broken), (300, None));
    let bumps: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE method = '/x.V/Bump'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(bumps, 200);
}

/// A work's own refusal rolls back what it changed, with no record; a lost race (a retryable
/// error) runs the work again, and only the attempt that commits leaves its change and record.
#[tokio::test]
async fn a_refused_concurrent_write_leaves_no_trace_and_a_lost_race_runs_again() {
    let (_test, db) = postgres(1).await;
    let ledger: Ledger<Status> = Ledger::start(db.clone(), key());
    let refused = ledger
        .write_concurrently(|tx| {
            Box::pin(async move {
                bump(tx.conn(), 1).await?;
                tx.lock_head().await?;
                Err::<((), Vec<Entry>), _>(Status::failed_precondition("no"))
            })
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let runs = Arc::new(AtomicU32::new(0));
    ledger
        .write_concurrently(|tx| {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                bump(tx.conn(), 1).await?;
                if run == 0 {
                    return Err(orchestrator_store::concurrent_change());
                }
                Ok(((), vec![bumped(1)]))
            })
        })
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(counters(&db).await, [1]);
    let report = verify(db.pool(), &key()).await.unwrap();
    assert_eq!((report.records, report.broken), (1, None));
}

/// The one lock cycle the order of locks allows: a concurrent write holds a row and waits for
/// the head, which a writer's work holds while it waits for that row. The concurrent write
/// gives up its wait (its lock timeout, well before PostgreSQL's deadlock check at 1 s, which
/// would abort the writer's whole batch) and runs again after the writer's work committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_cycle_with_the_writer_is_broken_on_the_concurrent_side() {
    let (_test, db) = postgres(1).await;
    let ledger: Ledger<Status> = Ledger::start(db.clone(), key());
    let meet = Arc::new(Barrier::new(2));
    let runs = Arc::new(AtomicU32::new(0));
    let concurrent = {
        let (ledger, meet, runs) = (ledger.clone(), meet.clone(), runs.clone());
        tokio::spawn(async move {
            ledger
                .write_concurrently(|tx| {
                    let (meet, run) = (meet.clone(), runs.fetch_add(1, Ordering::SeqCst));
                    Box::pin(async move {
                        bump(tx.conn(), 1).await?;
                        if run == 0 {
                            // The writer's work holds the head now; let it reach for the row.
                            meet.wait().await;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Ok(((), vec![bumped(1)]))
                    })
                })
                .await
        })
    };
    let writer = ledger.write(move |conn| {
        Box::pin(async move {
            meet.wait().await;
            bump(conn, 1).await?;
            Ok(((), vec![bumped(1)]))
        })
    });
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the writer's work finished")
        .expect("the writer's work was not the one aborted");
    concurrent.await.unwrap().unwrap();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the concurrent write ran again"
    );
    assert_eq!(counters(&db).await, [2]);
    let report = verify(db.pool(), &key()).await.unwrap();
    assert_eq!((report.records, report.broken), (2, None));
}

/// A concurrent write checks the head it takes against the newest this process saw: a head set
/// back (the database restored from an older copy) is refused, nothing appended.
#[tokio::test]
async fn a_concurrent_write_refuses_a_head_set_back() {
    let (test, db) = postgres(1).await;
    let ledger: Ledger<Status> = Ledger::start(db.clone(), key());
    for _ in 0..3 {
        ledger
            .record(Entry::new("spiffe://o/infra", "/x.V/Get", "counters"))
            .await
            .unwrap();
    }
    common::set_head_back(&test, 2).await;
    let err = ledger
        .write_concurrently(|tx| {
            Box::pin(async move {
                bump(tx.conn(), 1).await?;
                Ok(((), vec![bumped(1)]))
            })
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    assert_eq!(counters(&db).await, [0], "the change rolled back");
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(count, 2, "nothing appended after the head was set back");
}

/// A concurrent write that appends by a statement of its own (`append_if_head_cte!`) does so
/// from the head this process last committed only while no higher head was seen since: after
/// a write that took a higher head rolled back, a database set back to the committed head is
/// refused, as the locking path refuses it, nothing appended.
#[tokio::test]
async fn an_append_of_its_own_refuses_a_head_set_back_below_one_seen() {
    const APPEND: &str = concat!(
        "WITH ",
        orchestrator_audit::append_if_head_cte!(),
        " SELECT 1 AS one FROM head"
    );
    let (test, db) = postgres(1).await;
    let a: Ledger<Status> = Ledger::start(db.clone(), key());
    let b: Ledger<Status> = Ledger::start(db.clone(), key());
    // Appends `bumped(1)` by the statement of its own when it can; whether it did.
    let append = |ledger: Ledger<Status>| async move {
        ledger
            .write_concurrently(|tx| {
                Box::pin(async move {
                    let entries = vec![bumped(1)];
                    if let Some((query, appending)) =
                        tx.bind_append(sqlx::query(APPEND), &entries)?
                    {
                        let row = query
                            .fetch_optional(tx.conn())
                            .await
                            .map_err(|e| Status::from(StoreError::from(e)))?;
                        if row.is_some() {
                            tx.appended(appending);
                            return Ok((true, Vec::new()));
                        }
                    }
                    Ok((false, entries))
                })
            })
            .await
    };
    assert!(!append(a.clone()).await.unwrap(), "no head known yet");
    assert!(append(a.clone()).await.unwrap(), "the head it committed");
    assert!(append(a.clone()).await.unwrap());
    // Another replica appends record 4; `a` takes the head (4), and its work is refused.
    b.record(Entry::new("spiffe://o/infra", "/x.V/Get", "counters"))
        .await
        .unwrap();
    let refused = a
        .write_concurrently(|tx| {
            Box::pin(async move {
                tx.lock_head().await?;
                Err::<((), Vec<Entry>), _>(Status::failed_precondition("refused"))
            })
        })
        .await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::FailedPrecondition);
    // Record 4 removed: the head is back at the one `a` committed.
    common::set_head_back(&test, 3).await;
    let err = append(a.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(count, 3, "nothing appended after the head was set back");
}
