//! `orchctl`, the operator CLI of the orchestrator mesh.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

mod audit;
mod conn;
mod demo;
mod deploy;
mod health;
mod infra;
mod output;
mod project;
mod ready;
mod secrets;
mod up;
mod vault;

#[derive(Debug, Parser)]
#[command(
    name = "orchctl",
    version,
    about = "Operate the orchestrator secrets mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The development PKI.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Run the whole mesh locally: dev PKI, the four services as separate processes, each with
    /// only its own environment. Stops them all on Ctrl-C.
    Up(up::UpArgs),
    /// Check the gRPC health of the four services over mTLS.
    Health(health::HealthArgs),
    /// Exit 0 when a service's admin port answers `GET /readyz` with 200 (container
    /// healthchecks: no shell or curl needed).
    Ready(ready::ReadyArgs),
    /// The services' audit logs.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Servers through the infra service (as `api`), with live progress.
    Infra {
        #[command(subcommand)]
        command: infra::InfraCommand,
    },
    /// Projects through the scaffolder (as `api`): a repository, its deploy workflow, its secrets.
    Project {
        #[command(subcommand)]
        command: project::ProjectCommand,
    },
    /// A project's GitHub Actions secrets, through the secret broker (as `api`). Values never
    /// appear on the command line or in the output.
    Secrets {
        #[command(subcommand)]
        command: secrets::SecretsCommand,
    },
    /// Deployment files derived from the policy (`deploy kubernetes`: the NetworkPolicies).
    Deploy {
        #[command(subcommand)]
        command: deploy::DeployCommand,
    },
    /// Users' secrets in the vault (as the `api` identity). Values never appear on the command
    /// line or in the output.
    Vault {
        #[command(subcommand)]
        command: vault::VaultCommand,
    },
    /// The seed's four flows narrated against the mesh `orchctl up` runs: a project, a bot token,
    /// a server with its progress, and what each service holds and does not. Under a minute.
    Demo(demo::DemoArgs),
    /// Print a shell completion script: `source <(orchctl completions bash)`, or save it where
    /// your shell loads completions (zsh: a file `_orchctl` on $fpath; fish:
    /// ~/.config/fish/completions/orchctl.fish).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create a development CA and one certificate per identity (keeps existing files).
    Init {
        /// Where to write `ca.crt`, `<identity>.crt` and their 0600 keys.
        #[arg(long, default_value = ".orchestrator/pki")]
        dir: PathBuf,
        /// SPIFFE trust domain of the certificates.
        #[arg(long, default_value = "orchestrator.local", env = "ORCH_TRUST_DOMAIN")]
        trust_domain: String,
        /// Validity of the identity certificates, in days.
        #[arg(long, default_value_t = 90)]
        days: i64,
        /// Identities to issue (default: the four services, api and operator).
        #[arg(long = "identity", value_name = "NAME")]
        identities: Vec<String>,
    },
}

#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pki {
            command:
                PkiCommand::Init {
                    dir,
                    trust_domain,
                    days,
                    identities,
                },
        } => pki_init(&dir, &trust_domain, days, &identities),
        Command::Up(args) => up::run(args),
        Command::Health(args) => health::run(args),
        Command::Ready(args) => ready::run(args),
        // Its own exit codes: 1 for a broken chain, 2 when it could not be checked.
        Command::Audit { command } => return audit::run(command),
        Command::Vault { command } => vault::run(command),
        Command::Secrets { command } => secrets::run(command),
        Command::Project { command } => project::run(command),
        Command::Infra { command } => infra::run(command),
        Command::Deploy { command } => deploy::run(command),
        Command::Demo(args) => demo::run(args),
        Command::Completions { shell } => completions(shell),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orchctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
fn pki_init(
    dir: &std::path::Path,
    trust_domain: &str,
    days: i64,
    identities: &[String],
) -> anyhow::Result<()> {
    let _: orchestrator_mesh::TrustDomain = trust_domain.parse()?;
    let names: Vec<&str> = if identities.is_empty() {
        orchestrator_pki::DEFAULT_IDENTITIES.to_vec()
    } else {
        identities.iter().map(String::as_str).collect()
    };
    for name in &names {
        let _: orchestrator_mesh::IdentityName = name.parse()?;
    }
    let report = orchestrator_pki::init(dir, trust_domain, &names, days)?;
    for name in &report.created {
        println!(
            "created {}/{name}.crt (key {name}.key, mode 0600)",
            dir.display()
        );
    }
    for name in &report.kept {
        println!("kept    {}/{name}.crt", dir.display());
    }
    Ok(())
}

/// The completion script, written whole (a closed pipe, as with `| head`, is not an error).
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "orchctl", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
