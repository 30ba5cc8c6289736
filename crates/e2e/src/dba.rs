//! The mesh's database as a DBA sees it: the superuser (PostgreSQL) or the file's owner
//! (SQLite), bypassing the services, for tests that tamper with rows behind a service's back or
//! look for what must never be stored.

use orchestrator_mesh::Service;
use orchestrator_store::testing::TestDatabase;
use secrecy::ExposeSecret as _;
use sqlx::{AnyConnection, AssertSqlSafe, Connection as _};

use crate::TestMesh;

impl TestMesh {
    /// Runs `sql` (any number of statements) as the DBA, in `service`'s schema (PostgreSQL) or
    /// on its file (SQLite).
    pub async fn as_dba(&self, service: Service, sql: &str) {
        let mut conn = dba(self.db(), service).await;
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("the DBA's `{sql}` failed: {e}"));
        let _ = conn.close().await;
    }

    /// The `dump` column of each row `sql` returns, read as the DBA in `service`'s schema.
    pub async fn dba_dumps(&self, service: Service, sql: &str) -> Vec<String> {
        let mut conn = dba(self.db(), service).await;
        let rows = sqlx::query(AssertSqlSafe(sql.to_owned()))
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("the DBA's `{sql}` failed: {e}"));
        rows.iter()
            .map(|row| sqlx::Row::try_get(row, "dump").expect("a text `dump` column"))
            .collect()
    }

    /// Asserts that none of `needles` appears in any row of `tables` (schema-qualified), read
    /// as the superuser of the PostgreSQL test database; rows are cast to text, so bytes show
    /// as hex.
    pub async fn assert_absent_from_tables(
        &self,
        service: Service,
        tables: &[&str],
        needles: &[&str],
    ) {
        for table in tables {
            let sql = format!("SELECT CAST(t AS TEXT) AS dump FROM {table} t");
            for dump in self.dba_dumps(service, &sql).await {
                for needle in needles {
                    assert!(
                        !dump.contains(needle),
                        "{table} holds a value it must never hold"
                    );
                }
            }
        }
    }
}

/// A connection as the DBA, searching `service`'s schema first (PostgreSQL).
async fn dba(db: &TestDatabase, service: Service) -> AnyConnection {
    sqlx::any::install_default_drivers();
    let url = db.admin_url(service.name());
    let mut conn = AnyConnection::connect(url.expose_secret())
        .await
        .expect("connect as the DBA");
    if db.is_postgres() {
        let schema = TestDatabase::schema(service.name());
        sqlx::raw_sql(AssertSqlSafe(format!("SET search_path = {schema}")))
            .execute(&mut conn)
            .await
            .expect("search the service's schema");
    }
    conn
}
