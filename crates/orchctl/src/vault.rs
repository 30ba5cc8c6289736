//! `orchctl vault put|list|delete`: a user's secrets in the vault, over mTLS as `api`.
//!
//! A value is read from a file or from stdin, never from argv (which every local user can read
//! in `/proc`), held in a zeroizing buffer, and never printed.

use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use orchestrator_mesh::Service;
use orchestrator_proto::vault::v1 as pb;
use orchestrator_proto::vault::v1::vault_service_client::VaultServiceClient;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::conn::{MeshArgs, status_error};

/// The largest value the vault accepts (see `vault.proto`).
const MAX_VALUE: usize = 65_536;
/// How long one RPC may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Subcommand)]
pub(crate) enum VaultCommand {
    /// Store a new version of a user's secret. The value comes from --file or stdin, never argv.
    Put(PutArgs),
    /// List a user's secrets: names, versions and times, never values.
    List(ListArgs),
    /// Soft-delete (or, with --destroy, destroy for good) versions of a user's secret.
    Delete(DeleteArgs),
    /// Revoke a user's grant of a key to a project: infra can no longer use it for that project.
    Revoke(RevokeArgs),
}

/// Where the vault is and who calls it.
#[derive(Debug, clap::Args)]
pub(crate) struct VaultConn {
    #[command(flatten)]
    mesh: MeshArgs,
    /// The vault's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50053", value_name = "HOST:PORT")]
    target: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PutArgs {
    #[command(flatten)]
    conn: VaultConn,
    /// The owning user.
    #[arg(long)]
    user: String,
    /// The key name.
    #[arg(long)]
    key: String,
    /// Read the value from this file instead of stdin.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Drop one trailing newline (LF or CRLF) from the value.
    #[arg(long)]
    strip_newline: bool,
    /// Check-and-set: write only if the key's current version is N (0 = create only).
    #[arg(long, value_name = "N")]
    expected_version: Option<i64>,
    /// Idempotency key (a UUID): a retry with the same id writes nothing new.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    conn: VaultConn,
    #[command(flatten)]
    out: crate::output::OutputArgs,
    /// The owning user.
    #[arg(long)]
    user: String,
    /// Keys per page requested from the vault (all pages are fetched).
    #[arg(long, default_value_t = 100)]
    page_size: i32,
    /// Also list keys whose versions are all deleted or destroyed.
    #[arg(long)]
    show_deleted: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DeleteArgs {
    #[command(flatten)]
    conn: VaultConn,
    /// The owning user.
    #[arg(long)]
    user: String,
    /// The key name.
    #[arg(long)]
    key: String,
    /// A version to delete (repeatable; default: every kept version).
    #[arg(long = "version", value_name = "N")]
    versions: Vec<i64>,
    /// Remove the ciphertexts for good instead of a soft delete.
    #[arg(long)]
    destroy: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RevokeArgs {
    #[command(flatten)]
    conn: VaultConn,
    /// The owning user.
    #[arg(long)]
    user: String,
    /// The key name.
    #[arg(long)]
    key: String,
    /// The project the key was granted to.
    #[arg(long)]
    project: String,
}

pub(crate) fn run(command: VaultCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    match command {
        VaultCommand::Put(args) => {
            // Read the value before connecting, so a slow stdin does not hold a connection open.
            let value = read_value(args.file.as_deref(), args.strip_newline)?;
            runtime.block_on(put(&args, value))
        }
        VaultCommand::List(args) => runtime.block_on(list(&args)),
        VaultCommand::Delete(args) => runtime.block_on(delete(&args)),
        VaultCommand::Revoke(args) => runtime.block_on(revoke(&args)),
    }
}

async fn client(conn: &VaultConn) -> anyhow::Result<VaultServiceClient<Channel>> {
    let tls = conn.mesh.tls("api")?;
    let channel = conn
        .mesh
        .connect(&tls, &conn.target, Service::Vault)
        .await?;
    Ok(VaultServiceClient::new(channel))
}

/// Runs one RPC with a deadline, turning a failure into a readable error.
async fn call<T>(
    what: &str,
    rpc: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(RPC_TIMEOUT, rpc).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status_error(what, &status)),
        Err(_) => anyhow::bail!("{what}: no answer within {}s", RPC_TIMEOUT.as_secs()),
    }
}

#[allow(clippy::print_stdout)]
async fn put(args: &PutArgs, mut value: Zeroizing<Vec<u8>>) -> anyhow::Result<()> {
    let mut client = client(&args.conn).await?;
    let request = pb::PutUserSecretRequest {
        request_id: args.request_id.clone().unwrap_or_default(),
        user_id: args.user.clone(),
        key: args.key.clone(),
        // Moved, not copied: the only other copies are the ones tonic encodes.
        value: std::mem::take(&mut *value),
        expected_version: args.expected_version,
    };
    let response = call("PutUserSecret", client.put_user_secret(request)).await?;
    let version = response.secret.map_or(0, |s| s.current_version);
    println!(
        "stored vault secret {} for user {}: version {version}",
        args.key, args.user
    );
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn list(args: &ListArgs) -> anyhow::Result<()> {
    let mut client = client(&args.conn).await?;
    let mut secrets = Vec::new();
    let mut page_token = String::new();
    loop {
        let response = call(
            "ListUserSecrets",
            client.list_user_secrets(pb::ListUserSecretsRequest {
                user_id: args.user.clone(),
                page_size: args.page_size,
                page_token: page_token.clone(),
                show_deleted: args.show_deleted,
            }),
        )
        .await?;
        secrets.extend(response.secrets);
        if response.next_page_token.is_empty() {
            break;
        }
        anyhow::ensure!(
            response.next_page_token != page_token,
            "the vault returned the same page token twice"
        );
        page_token = response.next_page_token;
    }
    if args.out.json() {
        return crate::output::print_json(&serde_json::json!({
            "user_id": args.user,
            "secrets": secrets.iter().map(json_row).collect::<Vec<_>>(),
        }));
    }
    if secrets.is_empty() {
        println!("no vault secrets for user {}", args.user);
        return Ok(());
    }
    let header = [
        "KEY".to_owned(),
        "CURRENT".to_owned(),
        "VERSIONS (LIVE/DELETED/DESTROYED)".to_owned(),
        "UPDATED".to_owned(),
    ];
    let rows: Vec<[String; 4]> = secrets.iter().map(row).collect();
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        println!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    Ok(())
}

/// One secret's names, versions and times as JSON. No value exists here.
fn json_row(secret: &pb::UserSecretMetadata) -> serde_json::Value {
    use crate::output::time;
    serde_json::json!({
        "key": secret.key,
        "current_version": secret.current_version,
        "versions": secret.versions.iter().map(|v| serde_json::json!({
            "version": v.version,
            "create_time": time(v.create_time),
            "delete_time": time(v.delete_time),
            "destroyed": v.destroyed,
        })).collect::<Vec<_>>(),
        "create_time": time(secret.create_time),
        "update_time": time(secret.update_time),
    })
}

/// One table row: key, current version, version counts, update time. No value exists here.
fn row(secret: &pb::UserSecretMetadata) -> [String; 4] {
    let (mut live, mut deleted, mut destroyed) = (0, 0, 0);
    for v in &secret.versions {
        if v.destroyed {
            destroyed += 1;
        } else if v.delete_time.is_some() {
            deleted += 1;
        } else {
            live += 1;
        }
    }
    let updated = secret.update_time.map_or_else(
        || "-".to_owned(),
        |mut t| {
            t.nanos = 0;
            t.to_string()
        },
    );
    [
        secret.key.clone(),
        secret.current_version.to_string(),
        format!("{live}/{deleted}/{destroyed}"),
        updated,
    ]
}

#[allow(clippy::print_stdout)]
async fn delete(args: &DeleteArgs) -> anyhow::Result<()> {
    let mut client = client(&args.conn).await?;
    call(
        "DeleteUserSecret",
        client.delete_user_secret(pb::DeleteUserSecretRequest {
            user_id: args.user.clone(),
            key: args.key.clone(),
            versions: args.versions.clone(),
            destroy: args.destroy,
        }),
    )
    .await?;
    let verb = if args.destroy { "destroyed" } else { "deleted" };
    let which = if args.versions.is_empty() {
        "every version".to_owned()
    } else {
        let list: Vec<String> = args.versions.iter().map(i64::to_string).collect();
        format!(
            "version{} {}",
            if list.len() == 1 { "" } else { "s" },
            list.join(", ")
        )
    };
    println!(
        "{verb} {which} of vault secret {} for user {}",
        args.key, args.user
    );
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn revoke(args: &RevokeArgs) -> anyhow::Result<()> {
    let mut client = client(&args.conn).await?;
    call(
        "RevokeUserSecretGrant",
        client.revoke_user_secret_grant(pb::RevokeUserSecretGrantRequest {
            user_id: args.user.clone(),
            key: args.key.clone(),
            project_id: args.project.clone(),
        }),
    )
    .await?;
    println!(
        "revoked the grant of vault secret {} of user {} to project {}",
        args.key, args.user, args.project
    );
    Ok(())
}

/// The value, from `file` or else stdin, in a buffer allocated once (so no reallocation leaves
/// a copy behind) and zeroized on drop.
#[allow(clippy::print_stderr)]
fn read_value(file: Option<&Path>, strip_newline: bool) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    // Room for the largest value, a CRLF to strip, and one byte to notice a value too large.
    let limit = MAX_VALUE + 3;
    let mut value = Zeroizing::new(Vec::with_capacity(limit));
    match file {
        Some(path) => std::fs::File::open(path)
            .and_then(|f| f.take(limit as u64).read_to_end(&mut value))
            .with_context(|| format!("cannot read the value from {}", path.display()))?,
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("value (input is not hidden; end with Ctrl-D):");
            }
            stdin
                .lock()
                .take(limit as u64)
                .read_to_end(&mut value)
                .context("cannot read the value from stdin")?
        }
    };
    if strip_newline && value.last() == Some(&b'\n') {
        value.pop();
        if value.last() == Some(&b'\r') {
            value.pop();
        }
    }
    anyhow::ensure!(!value.is_empty(), "the value is empty");
    anyhow::ensure!(
        value.len() <= MAX_VALUE,
        "the value is larger than the vault's limit of {MAX_VALUE} bytes"
    );
    Ok(value)
}
