//! Fresh databases for tests: each test gets its own PostgreSQL database (with a login role and
//! a schema per service, as in production) or its own SQLite file, removed when dropped.
//!
//! PostgreSQL comes from `ORCH_TEST_DATABASE_URL` (scripts/test sets it; default
//! `postgres://postgres@127.0.0.1:5432/postgres`), which must be allowed to create databases
//! and roles.

use std::sync::atomic::{AtomicU64, Ordering};

use secrecy::SecretString;
use sqlx::{Connection, Executor};

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Postgres {
        admin: String,
        base: String,
        database: String,
        roles: Vec<String>,
    },
    Sqlite {
        dir: tempfile::TempDir,
    },
}

fn admin_url() -> String {
    std::env::var("ORCH_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{:x}{:x}{:x}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Replaces the database name (the path) of a PostgreSQL URL, and optionally its user.
fn with_database(url: &str, database: &str, user: Option<&str>) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let query = tail
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let authority = match user {
        Some(user) => format!("{user}@{host}"),
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}/{database}{query}")
}

impl TestDatabase {
    /// A fresh PostgreSQL database with, for each of `services`, a schema of the same name
    /// (`secret-broker` -> `secret_broker`) owned by one login role ([`Self::migration_url`])
    /// and used by another that owns nothing ([`Self::url`]), both searching only it.
    pub async fn postgres(services: &[&str]) -> Self {
        Self::postgres_at(&admin_url(), services).await
    }

    /// Like [`TestDatabase::postgres`], on the server at `admin` (a [`PgCluster`], say).
    pub async fn postgres_at(admin: &str, services: &[&str]) -> Self {
        let admin = admin.to_owned();
        let prefix = format!("t{}", unique());
        let database = format!("orch_{prefix}");
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to ORCH_TEST_DATABASE_URL");
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .await
            .expect("create database");
        let mut roles = Vec::new();
        let mut db = sqlx::PgConnection::connect(&with_database(&admin, &database, None))
            .await
            .expect("connect");
        for service in services {
            let schema = service.replace('-', "_");
            let role = format!("{prefix}_{schema}");
            // As in production: the owner runs the migrations, the service runs as `role`,
            // which owns nothing (`Database::grant_runtime` lets it read and write rows).
            db.execute(sqlx::AssertSqlSafe(format!(
                "CREATE ROLE {role}_owner LOGIN; \
                 CREATE ROLE {role} LOGIN; \
                 CREATE SCHEMA {schema} AUTHORIZATION {role}_owner; \
                 ALTER ROLE {role}_owner IN DATABASE {database} SET search_path = {schema}; \
                 ALTER ROLE {role} IN DATABASE {database} SET search_path = {schema}; \
                 REVOKE ALL ON SCHEMA public FROM PUBLIC; \
                 GRANT CONNECT ON DATABASE {database} TO {role}_owner; \
                 GRANT CONNECT ON DATABASE {database} TO {role};"
            )))
            .await
            .expect("create role and schema");
            roles.push(role);
        }
        Self {
            kind: Kind::Postgres {
                base: admin.clone(),
                admin: with_database(&admin, &database, None),
                database,
                roles,
            },
        }
    }

    /// A fresh SQLite file in a temporary folder.
    pub fn sqlite() -> Self {
        Self {
            kind: Kind::Sqlite {
                dir: tempfile::tempdir().expect("temp dir"),
            },
        }
    }

    /// The URL a service runs its migrations with (`DATABASE_MIGRATION_URL`): as the owner of
    /// `service`'s schema (PostgreSQL), or the file.
    pub fn migration_url(&self, service: &str) -> SecretString {
        match &self.kind {
            Kind::Postgres {
                admin,
                database,
                roles,
                ..
            } => {
                let schema = service.replace('-', "_");
                let role = roles
                    .iter()
                    .find(|r| r.ends_with(&format!("_{schema}")))
                    .expect("a role for this service");
                SecretString::from(with_database(
                    admin,
                    database,
                    Some(&format!("{role}_owner")),
                ))
            }
            Kind::Sqlite { .. } => self.url(service),
        }
    }

    /// The URL a service connects with: as the runtime role of `service` (PostgreSQL) or to
    /// the file.
    pub fn url(&self, service: &str) -> SecretString {
        SecretString::from(match &self.kind {
            Kind::Postgres {
                admin,
                database,
                roles,
                ..
            } => {
                let schema = service.replace('-', "_");
                let role = roles
                    .iter()
                    .find(|r| r.ends_with(&format!("_{schema}")))
                    .expect("a role for this service");
                with_database(admin, database, Some(role))
            }
            Kind::Sqlite { dir } => format!(
                "sqlite://{}?mode=rwc",
                dir.path().join(format!("{service}.db")).display()
            ),
        })
    }

    /// A superuser URL to the same database (PostgreSQL), or the file URL (SQLite): for tests
    /// that play a malicious DBA.
    pub fn admin_url(&self, service: &str) -> SecretString {
        match &self.kind {
            Kind::Postgres { admin, .. } => SecretString::from(admin.clone()),
            Kind::Sqlite { .. } => self.url(service),
        }
    }

    /// The schema of `service`'s tables (PostgreSQL), for superuser queries.
    pub fn schema(service: &str) -> String {
        service.replace('-', "_")
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.kind, Kind::Postgres { .. })
    }

    pub fn dialect(&self) -> crate::Dialect {
        if self.is_postgres() {
            crate::Dialect::Postgres
        } else {
            crate::Dialect::Sqlite
        }
    }

    /// `service`'s database as the service opens it (its runtime role on PostgreSQL), with
    /// `migrations` applied by the schema's owner.
    pub async fn open(
        &self,
        service: &str,
        migrations: impl IntoIterator<Item = sqlx::migrate::Migrator>,
    ) -> crate::Database {
        let patience = std::time::Duration::from_secs(10);
        let db = crate::Database::connect(&self.url(service), patience)
            .await
            .expect("connect to the test database");
        let owner = crate::Database::connect(&self.migration_url(service), patience)
            .await
            .expect("connect to the test database as the schema's owner");
        owner
            .migrate(migrations)
            .await
            .expect("migrate the test database");
        if let Some(role) = db.current_role().await.expect("the runtime role") {
            owner
                .grant_runtime(&role)
                .await
                .expect("grant the runtime role");
        }
        owner.pool().close().await;
        db
    }

    /// A fresh database of each dialect for `service` (SQLite, then PostgreSQL), opened with
    /// `migrations(dialect)`; each `TestDatabase` keeps its database alive.
    pub async fn both(
        service: &str,
        migrations: impl Fn(crate::Dialect) -> Vec<sqlx::migrate::Migrator>,
    ) -> Vec<(Self, crate::Database)> {
        let mut out = Vec::new();
        for test in [Self::sqlite(), Self::postgres(&[service]).await] {
            let db = test.open(service, migrations(test.dialect())).await;
            out.push((test, db));
        }
        out
    }
}

/// Runs each `scenario(TestDatabase)` as two tests, `sqlite::<name>` and `postgres::<name>`,
/// each on a fresh database of `service`:
/// `on_both_dialects!("vault"; versions_take_turns, reads_are_checked);`
#[macro_export]
macro_rules! on_both_dialects {
    ($service:expr; $($scenario:ident),+ $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario($crate::testing::TestDatabase::sqlite()).await
            })+
        }
        mod postgres {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario($crate::testing::TestDatabase::postgres(&[$service]).await).await
            })+
        }
    };
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Kind::Postgres {
            base,
            database,
            roles,
            ..
        } = &self.kind
        else {
            return;
        };
        let (base, database, roles) = (base.clone(), database.clone(), roles.clone());
        // Async drop does not exist: clean up on a thread with its own small runtime.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(mut conn) = sqlx::PgConnection::connect(&base).await else {
                    return;
                };
                let _ = conn
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                    )))
                    .await;
                for role in roles {
                    let _ = conn
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP ROLE IF EXISTS {role}; DROP ROLE IF EXISTS {role}_owner"
                        )))
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A PostgreSQL server of its own, for tests that stop and restart the database. Started from
/// the system's binaries (`/usr/lib/postgresql/*/bin`) in a temporary folder; as root, it runs
/// as the `postgres` user, since PostgreSQL refuses to run as root.
#[derive(Debug)]
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PgCluster {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().expect("temp dir");
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if as_postgres {
            let status = std::process::Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("addr")
            .port();
        let cluster = Self {
            dir,
            bin,
            port,
            as_postgres,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        cluster.start_again();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let out = cmd.args(args).output().expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts (again) the stopped server on the same port and data.
    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log, "-w", "-o", &opts, "start"],
        );
    }

    /// Stops the server at once (`immediate`: like a crash, connections drop).
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}
