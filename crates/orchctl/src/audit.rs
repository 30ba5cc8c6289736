//! `orchctl audit verify`: checks a service's audit hash chain with its `AUDIT_KEY`.
//!
//! Secrets (the database URL, which may hold a password, and the key) are never taken from argv:
//! they come from files named by flags, from the environment (`VAR` or `VAR_FILE`), or from the
//! local mesh's state directory.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use orchestrator_audit::AuditKey;
use orchestrator_devenv::{Secret, StateDir};
use orchestrator_mesh::{Env, Service};
use orchestrator_store::Database;
use secrecy::SecretString;
use zeroize::Zeroizing;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuditCommand {
    /// Check a service's audit chain: sequence, every record's MAC, and the head. Names the first
    /// broken record. With --checkpoint, also that the database is not behind (or diverging
    /// from) any checkpoint the service logged. Exit status: 0 intact, 1 broken or behind a
    /// checkpoint, 2 could not check.
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The service whose audit log to check: scaffolder, secret-broker, vault or infra.
    #[arg(long, value_parser = parse_service)]
    service: Service,
    /// A file holding the service's DATABASE_URL (default: $DATABASE_URL or $DATABASE_URL_FILE,
    /// else the local mesh's `<state-dir>/data/<service>.db`, opened read-only).
    #[arg(long, value_name = "PATH")]
    database_url_file: Option<PathBuf>,
    /// A file holding the service's AUDIT_KEY (default: $AUDIT_KEY or $AUDIT_KEY_FILE, else the
    /// local mesh's `<state-dir>/secrets/<service>/audit_key`).
    #[arg(long, value_name = "PATH")]
    audit_key_file: Option<PathBuf>,
    /// The state directory of the local mesh (`orchctl up`), the last fallback for both.
    #[arg(long, default_value = ".orchestrator")]
    state_dir: PathBuf,
    /// Checkpoints the service logged (`audit checkpoint checkpoint={...}` lines, text or JSON
    /// logs, or the JSON object alone), from a file or `-` for stdin: the database must hold
    /// each one's record with its MAC. Without one, a chain cut back together with its head
    /// (by the database's owner) verifies.
    #[arg(long, value_name = "FILE|-")]
    checkpoint: Option<PathBuf>,
}

/// What `verify` found: the chain's report, and the checkpoints checked (their count, the
/// newest record they name, and the first the database fails).
struct Outcome {
    report: orchestrator_audit::VerifyReport,
    checkpoints: Option<(usize, i64, Option<String>)>,
}

/// A `--service` value: one of the four service names.
pub(crate) fn parse_service(name: &str) -> Result<Service, String> {
    name.parse().map_err(|_| {
        let names: Vec<&str> = Service::ALL.iter().map(|s| s.name()).collect();
        format!(
            "unknown service `{name}` (expected one of: {})",
            names.join(", ")
        )
    })
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
pub(crate) fn run(command: AuditCommand) -> ExitCode {
    let AuditCommand::Verify(args) = command;
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(verify(&args)));
    match result {
        Ok(Outcome {
            report,
            checkpoints,
        }) => {
            let service = args.service.name();
            match report.broken {
                None => match checkpoints {
                    Some((_, _, Some(why))) => {
                        println!("audit chain of {service} BEHIND A CHECKPOINT: {why}");
                        ExitCode::from(1)
                    }
                    Some((count, newest, None)) => {
                        println!(
                            "audit chain of {service}: {} records, head {}, OK; {count} checkpoint(s) up to record {newest} hold",
                            report.records, report.head
                        );
                        ExitCode::SUCCESS
                    }
                    None => {
                        println!(
                            "audit chain of {service}: {} records, head {}, OK",
                            report.records, report.head
                        );
                        eprintln!(
                            "orchctl: note: without --checkpoint, records cut from the end \
                             together with the head (by the database's owner) do not show"
                        );
                        ExitCode::SUCCESS
                    }
                },
                Some(broken) => {
                    println!(
                        "audit chain of {service} BROKEN at record {}: {}",
                        broken.seq, broken.reason
                    );
                    if broken.seq == 1 && broken.reason.starts_with("MAC mismatch") {
                        eprintln!(
                            "orchctl: hint: a MAC mismatch at the first record also means the \
                             AUDIT_KEY is not {service}'s"
                        );
                    }
                    ExitCode::from(1)
                }
            }
        }
        Err(e) => {
            eprintln!("orchctl: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn verify(args: &VerifyArgs) -> anyhow::Result<Outcome> {
    let env = Env::from_process();
    let service = args.service.name();
    let checkpoints = match &args.checkpoint {
        None => None,
        Some(path) => Some(read_checkpoints(path, service)?),
    };
    let url = match (&args.database_url_file, env.secret("DATABASE_URL")?) {
        (Some(path), _) => read_secret_file(path, "--database-url-file")?,
        (None, Some(url)) => url,
        (None, None) => {
            let db = StateDir::new(&args.state_dir).database(args.service);
            anyhow::ensure!(
                db.exists(),
                "no DATABASE_URL given (--database-url-file, DATABASE_URL or DATABASE_URL_FILE), \
                 and the local mesh has no database at {} (does {service} keep one, and has it run \
                 under `orchctl up --state-dir {}`?)",
                db.display(),
                args.state_dir.display()
            );
            SecretString::from(format!("sqlite://{}?mode=ro", db.display()))
        }
    };
    let key = match (&args.audit_key_file, env.secret("AUDIT_KEY")?) {
        (Some(path), _) => read_secret_file(path, "--audit-key-file")?,
        (None, Some(key)) => key,
        (None, None) => {
            let path = StateDir::new(&args.state_dir)
                .secrets()
                .path(Secret::AuditKey(args.service));
            anyhow::ensure!(
                path.exists(),
                "no AUDIT_KEY given (--audit-key-file, AUDIT_KEY or AUDIT_KEY_FILE), and the \
                 local mesh has no key at {}",
                path.display()
            );
            read_secret_file(&path, "the local mesh's audit key")?
        }
    };
    let key = AuditKey::from_base64(&key)?;
    let db = Database::connect(&url, Duration::from_secs(5))
        .await
        .with_context(|| format!("cannot open the database of {service}"))?;
    let report = orchestrator_audit::verify(db.pool(), &key)
        .await
        .with_context(|| format!("cannot read the audit log of {service}"))?;
    let checkpoints = match checkpoints {
        None => None,
        Some(checkpoints) => {
            let mut failed = None;
            for checkpoint in &checkpoints {
                if let Err(why) = orchestrator_audit::check_checkpoint(db.pool(), &key, checkpoint)
                    .await
                    .with_context(|| format!("cannot read the audit log of {service}"))?
                {
                    failed = Some(why);
                    break;
                }
            }
            let newest = checkpoints.iter().map(|c| c.seq).max().unwrap_or(0);
            Some((checkpoints.len(), newest, failed))
        }
    };
    db.pool().close().await;
    Ok(Outcome {
        report,
        checkpoints,
    })
}

/// Every checkpoint of `service` in the file at `path` (`-`: stdin).
fn read_checkpoints(
    path: &Path,
    service: &str,
) -> anyhow::Result<Vec<orchestrator_audit::Checkpoint>> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("--checkpoint -: cannot read stdin")?;
    } else {
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("--checkpoint: cannot read {}", path.display()))?;
    }
    Ok(orchestrator_audit::Checkpoint::parse_all(&text, service)?)
}

/// A secret from a file; one trailing newline (or CRLF) is dropped.
fn read_secret_file(path: &Path, what: &str) -> anyhow::Result<SecretString> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("{what}: cannot open {}", path.display()))?;
    // Sized up front, so that growing the buffer leaves no copies of the secret behind.
    let size = file.metadata().map_or(0, |m| m.len());
    let mut text = Zeroizing::new(String::with_capacity(
        usize::try_from(size).unwrap_or(0).saturating_add(1),
    ));
    file.read_to_string(&mut text)
        .with_context(|| format!("{what}: cannot read {}", path.display()))?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    Ok(SecretString::from(value.to_owned()))
}
