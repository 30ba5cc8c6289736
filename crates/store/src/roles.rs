//! Two roles per service on PostgreSQL: the schema's owner, which runs the migrations
//! (`DATABASE_MIGRATION_URL`), and the runtime role the service serves with (`DATABASE_URL`),
//! which may only read and write rows. The runtime role cannot drop a trigger, alter or drop a
//! table, nor change or remove an audit record: it owns nothing.

use sqlx::Row;

use crate::{Database, Dialect, StoreError};

/// A PostgreSQL identifier, quoted.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Database {
    /// The role this database's connections log in as (PostgreSQL), or `None` (SQLite).
    pub async fn current_role(&self) -> Result<Option<String>, StoreError> {
        if self.dialect() != Dialect::Postgres {
            return Ok(None);
        }
        let row = sqlx::query("SELECT CAST(current_user AS TEXT) AS role")
            .fetch_one(self.pool())
            .await?;
        Ok(Some(row.try_get("role")?))
    }

    /// Run as the schema's owner after the migrations: lets `role` use the current schema and
    /// read and write every table in it, except changing or removing audit records and
    /// touching the migrations' own table. Idempotent; replicas starting together take turns
    /// (an advisory lock). Nothing to do on SQLite.
    pub async fn grant_runtime(&self, role: &str) -> Result<(), StoreError> {
        if self.dialect() != Dialect::Postgres {
            return Ok(());
        }
        let mut tx = self.pool().begin().await?;
        // Any constant: "orchestrator grants" (the migrator uses its own lock key).
        sqlx::query("SELECT pg_advisory_xact_lock(7261636865737472)")
            .execute(&mut *tx)
            .await?;
        let schema: String = sqlx::query("SELECT CAST(current_schema() AS TEXT) AS s")
            .fetch_one(&mut *tx)
            .await?
            .try_get("s")?;
        let tables: Vec<String> = sqlx::query(
            "SELECT CAST(tablename AS TEXT) AS t FROM pg_tables WHERE schemaname = current_schema() \
             AND tablename IN ('audit_log', '_sqlx_migrations')",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get("t"))
        .collect::<Result<_, _>>()?;
        let (schema, role) = (ident(&schema), ident(role));
        // Only quoted identifiers are formatted in; there are no values.
        let mut grants = format!(
            "GRANT USAGE ON SCHEMA {schema} TO {role}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}; \
             GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {role};"
        );
        if tables.iter().any(|t| t == "audit_log") {
            grants.push_str(&format!(
                " REVOKE UPDATE, DELETE, TRUNCATE ON {schema}.audit_log FROM {role};"
            ));
        }
        if tables.iter().any(|t| t == "_sqlx_migrations") {
            grants.push_str(&format!(
                " REVOKE ALL ON {schema}._sqlx_migrations FROM {role};"
            ));
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(grants))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(super::ident("vault"), "\"vault\"");
        assert_eq!(super::ident("a\"b"), "\"a\"\"b\"");
    }
}
