//! The pool's and a held connection's behaviour against a real PostgreSQL: a connection the
//! server dropped while it sat idle is replaced before use, a held one is kept between uses,
//! and a plan cached while a table was empty still finds rows by index or ctid.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_store::Database;
use orchestrator_store::testing::TestDatabase;
use sqlx::{AnyConnection, Executor as _, Row as _};

async fn postgres() -> (TestDatabase, Database) {
    let test = TestDatabase::postgres(&["store"]).await;
    let db = test.open("store", []).await;
    (test, db)
}

/// A connection of the database's admin, which may end any other.
async fn admin(test: &TestDatabase) -> Database {
    Database::connect(&test.admin_url("store"), Duration::from_secs(10))
        .await
        .unwrap()
}

async fn backend(conn: &mut AnyConnection) -> i32 {
    sqlx::query("SELECT pg_backend_pid() AS pid")
        .fetch_one(conn)
        .await
        .unwrap()
        .get("pid")
}

/// Terminates `pid` from the admin's connection, as a server restart would, and waits until
/// the server no longer lists it.
async fn terminate(db: &Database, pid: i32) {
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(db.pool())
        .await
        .unwrap();
    for _ in 0..50 {
        let alive: i64 = sqlx::query("SELECT COUNT(*) AS n FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(db.pool())
            .await
            .unwrap()
            .get("n");
        if alive == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("backend {pid} was not terminated");
}

/// Longer than the idle time after which a connection is pinged before use.
const IDLE: Duration = Duration::from_millis(1_100);

#[tokio::test]
async fn a_held_connection_is_kept_between_uses_and_replaced_once_discarded() {
    let (_test, db) = postgres().await;
    let mut held = db.hold();
    let first = backend(held.get().await.unwrap()).await;
    assert_eq!(backend(held.get().await.unwrap()).await, first);
    let tx = held.begin_write().await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(backend(held.get().await.unwrap()).await, first);
    held.discard();
    assert_ne!(backend(held.get().await.unwrap()).await, first);
}

#[tokio::test]
async fn a_held_connection_dropped_by_the_server_while_idle_is_replaced_before_use() {
    let (test, db) = postgres().await;
    let mut held = db.hold();
    let first = backend(held.get().await.unwrap()).await;
    terminate(&admin(&test).await, first).await;
    tokio::time::sleep(IDLE).await;
    let conn = held.get().await.unwrap();
    assert_ne!(backend(conn).await, first);
}

#[tokio::test]
async fn a_pooled_connection_dropped_by_the_server_while_idle_is_replaced_before_use() {
    let (test, db) = postgres().await;
    let first = backend(&mut db.pool().acquire().await.unwrap()).await;
    // Back in the pool (its release ping done) before the server drops it.
    while db.pool().num_idle() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    terminate(&admin(&test).await, first).await;
    tokio::time::sleep(IDLE).await;
    for _ in 0..4 {
        sqlx::query("SELECT 1")
            .execute(db.pool())
            .await
            .expect("a dead idle connection is replaced, not handed out");
    }
}

#[tokio::test]
async fn a_plan_cached_while_a_table_was_empty_finds_rows_by_index_or_ctid() {
    let (_test, db) = postgres().await;
    let mut conn = db.pool().acquire().await.unwrap();
    // The plan a prepared statement keeps after its first executions, made now, on an empty
    // table: it must not scan the table whole once the table has grown.
    conn.execute(
        "CREATE TEMPORARY TABLE t (id BIGINT PRIMARY KEY, v TEXT); \
         PREPARE by_ctid (tid[]) AS DELETE FROM t WHERE ctid = ANY ($1); \
         PREPARE by_id (bigint) AS SELECT v FROM t WHERE id = $1; \
         SET plan_cache_mode = force_generic_plan",
    )
    .await
    .unwrap();
    for (statement, scan) in [
        ("EXPLAIN EXECUTE by_ctid ('{\"(0,1)\"}')", "Tid Scan"),
        ("EXPLAIN EXECUTE by_id (1)", "Index Scan"),
    ] {
        let plan: Vec<String> = sqlx::query(statement)
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>(0))
            .collect();
        assert!(
            plan.iter().any(|line| line.contains(scan)),
            "{statement}: {plan:?}"
        );
    }
}
