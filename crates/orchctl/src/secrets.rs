//! `orchctl secrets set|list|delete|reconcile`: a project's GitHub secrets through the broker,
//! in the repository's Actions secrets (the default), a deployment environment's
//! (`--environment NAME`), the repository's Dependabot secrets (`--dependabot`) or the
//! organization's (`--organization`, with `--visibility` on `set`).
//!
//! Values come from a dotenv file or stdin, never from argv; they are held in zeroizing buffers
//! and never printed. The broker keeps references only.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::secretbroker::v1 as pb;
use orchestrator_proto::secretbroker::v1::secret_broker_service_client::SecretBrokerServiceClient;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::conn::{MeshArgs, status_error, status_error_naming, when};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum SecretsCommand {
    /// Push secrets from a dotenv file (or stdin) to the project's repository. Multi-line values
    /// in double or single quotes are supported.
    Set(SetArgs),
    /// The project's secret references: names and presence, never values.
    List(ListArgs),
    /// Delete a secret the broker wrote for the project (never anyone else's).
    Delete(DeleteArgs),
    /// Compare the references with the repository's secrets at GitHub and repair interrupted writes.
    Reconcile(ReconcileArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct BrokerConn {
    #[command(flatten)]
    mesh: MeshArgs,
    /// The secret broker's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50052", value_name = "HOST:PORT")]
    target: String,
}

/// Where the secrets are kept; none of these = the repository's Actions secrets.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct LocationArgs {
    /// A deployment environment of the project's repository, e.g. `production` (created
    /// when missing).
    #[arg(long, value_name = "NAME", group = "location")]
    environment: Option<String>,
    /// The repository's Dependabot secrets.
    #[arg(long, group = "location")]
    dependabot: bool,
    /// The organization's Actions secrets (the broker's organization; `api` only).
    #[arg(long, group = "location")]
    organization: bool,
}

/// Who may use an organization secret.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum VisibilityArg {
    /// Every repository of the organization.
    All,
    /// The organization's private and internal repositories.
    Private,
    /// The repositories of the `--selected-project`s only.
    Selected,
}

impl LocationArgs {
    /// The location for a request; `visibility` and `selected` only for an organization write.
    fn location(
        &self,
        visibility: Option<VisibilityArg>,
        selected: &[String],
    ) -> Option<common::GitHubSecretLocation> {
        use common::git_hub_secret_location::Kind;
        let kind = if let Some(name) = &self.environment {
            Kind::Environment(common::EnvironmentSecretLocation { name: name.clone() })
        } else if self.dependabot {
            Kind::Dependabot(common::DependabotSecretLocation {})
        } else if self.organization {
            let visibility = match visibility {
                None => common::OrganizationSecretVisibility::Unspecified,
                Some(VisibilityArg::All) => common::OrganizationSecretVisibility::All,
                Some(VisibilityArg::Private) => common::OrganizationSecretVisibility::Private,
                Some(VisibilityArg::Selected) => common::OrganizationSecretVisibility::Selected,
            };
            Kind::Organization(common::OrganizationSecretLocation {
                visibility: visibility as i32,
                selected_project_ids: selected.to_vec(),
            })
        } else {
            return None;
        };
        Some(common::GitHubSecretLocation { kind: Some(kind) })
    }

    /// The location in words, for progress lines.
    fn describe(&self) -> String {
        match (&self.environment, self.dependabot, self.organization) {
            (Some(env), _, _) => format!("environment {env} of project"),
            (None, true, _) => "Dependabot secrets of project".to_owned(),
            (None, false, true) => "organization, owned by project".to_owned(),
            _ => "project".to_owned(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct SetArgs {
    #[command(flatten)]
    conn: BrokerConn,
    /// The project id.
    project: String,
    #[command(flatten)]
    location: LocationArgs,
    /// With `--organization`: who may use the secrets (required there).
    #[arg(long, value_enum, requires = "organization")]
    visibility: Option<VisibilityArg>,
    /// With `--organization --visibility selected`: a project whose repository may use the
    /// secrets (repeat for several; each must be registered at the broker).
    #[arg(
        long = "selected-project",
        value_name = "PROJECT",
        requires = "organization"
    )]
    selected_projects: Vec<String>,
    /// A dotenv file (`NAME=value` lines); without it, the same format is read from stdin.
    #[arg(long, value_name = "PATH")]
    from_env_file: Option<PathBuf>,
    /// Idempotency key: re-running with the same id writes only what is not yet recorded.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ProjectArgs {
    #[command(flatten)]
    conn: BrokerConn,
    /// The project id.
    project: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    project: ProjectArgs,
    #[command(flatten)]
    location: LocationArgs,
    #[command(flatten)]
    out: crate::output::OutputArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DeleteArgs {
    #[command(flatten)]
    conn: BrokerConn,
    /// The project id.
    project: String,
    /// The secret's name (case-insensitive).
    name: String,
    #[command(flatten)]
    location: LocationArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReconcileArgs {
    #[command(flatten)]
    conn: BrokerConn,
    /// The project id.
    project: String,
    /// Report only; repair nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    location: LocationArgs,
}

impl BrokerConn {
    async fn client(&self) -> anyhow::Result<SecretBrokerServiceClient<Channel>> {
        let tls = self.mesh.tls("api")?;
        Ok(SecretBrokerServiceClient::new(
            self.mesh
                .connect(&tls, &self.target, Service::SecretBroker)
                .await?,
        ))
    }
}

pub(crate) fn run(command: SecretsCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match command {
            SecretsCommand::Set(args) => set(args).await,
            SecretsCommand::List(args) => list(args).await,
            SecretsCommand::Delete(args) => delete(args).await,
            SecretsCommand::Reconcile(args) => reconcile(args).await,
        }
    })
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
async fn set(args: SetArgs) -> anyhow::Result<()> {
    let text = Zeroizing::new(match &args.from_env_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read stdin")?;
            s
        }
    });
    let entries = parse_dotenv(&text)?;
    anyhow::ensure!(!entries.is_empty(), "no NAME=value lines found");
    let n = entries.len();
    let source = args
        .from_env_file
        .as_ref()
        .map_or_else(|| "stdin".to_owned(), |p| p.display().to_string());
    // Where each secret came from, to name it in a refusal: `BAD-NAME (line 3 of .env)`.
    let origins: Vec<String> = entries
        .iter()
        .map(|e| format!("secret {} (line {} of {source})", e.name, e.line))
        .collect();
    let secrets: Vec<common::ProjectSecretValue> = entries
        .into_iter()
        .map(|e| common::ProjectSecretValue {
            name: e.name,
            value: e.value.to_vec(),
        })
        .collect();
    let request_id = args.request_id.clone().unwrap_or_else(random_id);
    let mut client = args.conn.client().await?;
    eprintln!(
        "pushing {n} secret(s) to {} {} (GitHub asks for writes one at a time, paced)…",
        args.location.describe(),
        args.project
    );
    let request = pb::SetProjectSecretsRequest {
        request_id: request_id.clone(),
        project_id: args.project.clone(),
        secrets,
        location: args
            .location
            .location(args.visibility, &args.selected_projects),
    };
    let started = Instant::now();
    // Progress while the broker works: elapsed time, once a second.
    let call = client.set_project_secrets(request);
    tokio::pin!(call);
    let response = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                eprint!("\r  … {:.0} s", started.elapsed().as_secs_f64());
            }
        }
    };
    eprintln!();
    let results = response
        .map_err(|s| {
            status_error_naming("SetProjectSecrets", &s, |field| {
                secret_field(field, &origins).unwrap_or_else(|| format!("field {field}"))
            })
        })?
        .into_inner()
        .results;
    let mut failed = 0;
    for r in &results {
        match common::SecretWriteOutcome::try_from(r.outcome)
            .unwrap_or(common::SecretWriteOutcome::Unspecified)
        {
            common::SecretWriteOutcome::Created => println!("  created  {}", r.name),
            common::SecretWriteOutcome::Updated => println!("  updated  {}", r.name),
            _ => {
                failed += 1;
                let why = r
                    .error
                    .as_ref()
                    .map_or_else(String::new, |e| e.message.clone());
                println!("  FAILED   {}: {why}", r.name);
            }
        }
    }
    println!(
        "{} of {n} written in {:.1} s (request id {request_id})",
        n - failed,
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        failed == 0,
        "{failed} secret(s) were not written; re-run with --request-id {request_id} to retry only those"
    );
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn list(
    ListArgs {
        project: args,
        location,
        out,
    }: ListArgs,
) -> anyhow::Result<()> {
    let mut client = args.conn.client().await?;
    let mut token = String::new();
    let mut all = Vec::new();
    if !out.json() {
        println!(
            "{:<32} {:<9} {:<22} WRITTEN BY",
            "NAME", "PRESENCE", "GITHUB UPDATED"
        );
    }
    loop {
        let page = client
            .list_project_secrets(pb::ListProjectSecretsRequest {
                project_id: args.project.clone(),
                page_size: 100,
                page_token: token,
                location: location.location(None, &[]),
            })
            .await
            .map_err(|s| status_error("ListProjectSecrets", &s))?
            .into_inner();
        if out.json() {
            use crate::output::{name, time};
            all.extend(page.secrets.iter().map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "presence": name(common::SecretPresence::try_from(s.presence)),
                    "github_update_time": time(s.github_update_time),
                    "record_time": time(s.record_time),
                    "written_by": s.written_by,
                    "deploy_credential": s.deploy_credential,
                })
            }));
        }
        for s in page.secrets.iter().filter(|_| !out.json()) {
            let presence = common::SecretPresence::try_from(s.presence)
                .map_or("?".to_owned(), |p| format!("{p:?}").to_lowercase());
            let updated = when(s.github_update_time);
            println!(
                "{:<32} {:<9} {:<22} {}",
                s.name, presence, updated, s.written_by
            );
        }
        if page.next_page_token.is_empty() {
            if out.json() {
                crate::output::print_json(
                    &serde_json::json!({ "project_id": args.project, "secrets": all }),
                )?;
            }
            return Ok(());
        }
        token = page.next_page_token;
    }
}

#[allow(clippy::print_stdout)]
async fn reconcile(args: ReconcileArgs) -> anyhow::Result<()> {
    let mut client = args.conn.client().await?;
    let report = client
        .reconcile_project_secrets(pb::ReconcileProjectSecretsRequest {
            project_id: args.project.clone(),
            dry_run: args.dry_run,
            location: args.location.location(None, &[]),
        })
        .await
        .map_err(|s| status_error("ReconcileProjectSecrets", &s))?
        .into_inner();
    for f in &report.findings {
        let kind = pb::ReconcileFindingKind::try_from(f.kind)
            .map_or("?".to_owned(), |k| format!("{k:?}").to_lowercase());
        println!(
            "  {kind:<10} {}{}",
            f.name,
            if f.repaired { "  (repaired)" } else { "" }
        );
    }
    println!(
        "{} in sync, {} finding(s)",
        report.in_sync_count,
        report.findings.len()
    );
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let mut client = args.conn.client().await?;
    let deleted = client
        .delete_project_secret(pb::DeleteProjectSecretRequest {
            project_id: args.project.clone(),
            name: args.name.clone(),
            location: args.location.location(None, &[]),
        })
        .await
        .map_err(|s| status_error("DeleteProjectSecret", &s))?
        .into_inner()
        .deleted_at_github;
    println!(
        "deleted {}{}",
        args.name.to_ascii_uppercase(),
        if deleted {
            ""
        } else {
            " (it was already gone at GitHub)"
        }
    );
    Ok(())
}

/// `secrets[i].name` or `.value` as the secret and line it came from (`origins[i]`).
fn secret_field(field: &str, origins: &[String]) -> Option<String> {
    let rest = field.strip_prefix("secrets[")?;
    let (index, part) = rest.split_once("].")?;
    let origin = origins.get(index.parse::<usize>().ok()?)?;
    Some(match part {
        "name" => origin.clone(),
        other => format!("{origin}, its {other}"),
    })
}

/// A request id: 16 random bytes as hex.
pub(crate) fn random_id() -> String {
    orchestrator_store::random_hex(16)
}

/// One `NAME=value` of a dotenv file, with the line it starts on (1-based).
#[derive(Debug)]
pub(crate) struct DotenvEntry {
    pub(crate) name: String,
    pub(crate) value: Zeroizing<Vec<u8>>,
    pub(crate) line: usize,
}

/// Parses dotenv text: `NAME=value`, optional `export `, `#` comments, and values in double
/// quotes (with `\n`, `\"`, `\\` escapes) or single quotes (literal), which may span lines.
pub(crate) fn parse_dotenv(text: &str) -> anyhow::Result<Vec<DotenvEntry>> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (name, rest) = line
            .split_once('=')
            .with_context(|| format!("line {}: expected NAME=value", n + 1))?;
        let name = name.trim().to_owned();
        anyhow::ensure!(!name.is_empty(), "line {}: empty name", n + 1);
        let rest = rest.trim_start();
        let mut value = Zeroizing::new(Vec::new());
        if let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
            let mut body = Zeroizing::new(rest[1..].to_owned());
            // Until the closing quote, possibly on a later line.
            loop {
                if let Some(end) = closing_quote(&body, quote) {
                    body.truncate(end);
                    break;
                }
                let (_, next) = lines.next().with_context(|| {
                    format!("line {}: unterminated {quote}-quoted value", n + 1)
                })?;
                body.push('\n');
                body.push_str(next);
            }
            if quote == '"' {
                let mut chars = body.chars();
                while let Some(c) = chars.next() {
                    let c = if c == '\\' {
                        match chars.next() {
                            Some('n') => '\n',
                            Some('t') => '\t',
                            Some(other) => other,
                            None => '\\',
                        }
                    } else {
                        c
                    };
                    let mut buf = [0; 4];
                    value.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            } else {
                value.extend_from_slice(body.as_bytes());
            }
        } else {
            value.extend_from_slice(rest.trim_end().as_bytes());
        }
        out.push(DotenvEntry {
            name,
            value,
            line: n + 1,
        });
    }
    Ok(out)
}

/// The index of the closing `quote` in `s` (a double quote preceded by a backslash is escaped).
fn closing_quote(s: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if quote == '"' && c == '\\' && !escaped {
            escaped = true;
            continue;
        }
        if c == quote && !escaped {
            return Some(i);
        }
        escaped = false;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_with_quotes_comments_and_multiline_values() {
        let text = "# comment\nexport A=plain value  \nB=\"line1\\nline2 \\\"q\\\"\"\nKEY='-----BEGIN KEY-----\nabc\n-----END KEY-----'\n\nC=\n";
        let parsed = parse_dotenv(text).unwrap();
        let as_str: Vec<(String, String)> = parsed
            .iter()
            .map(|e| (e.name.clone(), String::from_utf8(e.value.to_vec()).unwrap()))
            .collect();
        let lines: Vec<usize> = parsed.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4, 8]);
        assert_eq!(
            as_str,
            vec![
                ("A".into(), "plain value".into()),
                ("B".into(), "line1\nline2 \"q\"".into()),
                (
                    "KEY".into(),
                    "-----BEGIN KEY-----\nabc\n-----END KEY-----".into()
                ),
                ("C".into(), String::new()),
            ]
        );
        assert!(parse_dotenv("X='never closed\n").is_err());
        let origins = vec!["secret A (line 2 of .env)".to_owned()];
        assert_eq!(
            secret_field("secrets[0].name", &origins).unwrap(),
            origins[0]
        );
        assert_eq!(
            secret_field("secrets[0].value", &origins).unwrap(),
            "secret A (line 2 of .env), its value"
        );
        assert!(secret_field("secrets[7].name", &origins).is_none());
        assert!(secret_field("request_id", &origins).is_none());
        assert!(parse_dotenv("no equals sign").is_err());
    }

    mod props {
        //! Property tests of `.env` import: any text parses or fails with a line number, never
        //! a panic; what a dotenv writer renders parses back to the same names and values.
        use super::super::*;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            ProptestConfig {
                failure_persistence: None,
                // PROPTEST_CASES (the long run) wins over the short run.
                ..ProptestConfig::with_cases(
                    std::env::var("PROPTEST_CASES")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(256),
                )
            }
        }

        fn dotenv_like() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "((export )?[A-Z_ ]{0,6}=? ?[\"'#a-z\\\\\n ]{0,12}\r?\n){0,6}",
            ]
        }

        /// How a value is written: plain, double-quoted (escaped) or single-quoted (literal).
        fn render(value: &str, style: u8) -> String {
            let plain = !value.contains('\n')
                && value.trim() == value
                && !value.starts_with(['"', '\''])
                && !value.is_empty();
            let single = !value.contains(['\'', '\r']);
            match style {
                0 if plain => value.to_owned(),
                1 if single => format!("'{value}'"),
                _ => {
                    let escaped = value
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    format!("\"{escaped}\"")
                }
            }
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn prop_dotenv_never_panics(text in dotenv_like()) {
                match parse_dotenv(&text) {
                    Ok(entries) => {
                        let mut last = 0;
                        for e in entries {
                            prop_assert!(!e.name.is_empty() && e.name.trim() == e.name);
                            prop_assert!(e.line > last && e.line <= text.lines().count());
                            last = e.line;
                        }
                    }
                    Err(e) => prop_assert!(e.to_string().starts_with("line "), "{e}"),
                }
            }

            #[test]
            fn prop_dotenv_render_parse_round_trip(
                entries in proptest::collection::vec(
                    ("[A-Za-z_][A-Za-z0-9_]{0,16}", "\\PC{0,24}|[ a-z\n\r\t\"'\\\\]{0,12}", 0u8..3, any::<bool>(), any::<bool>()),
                    0..6,
                ),
            ) {
                let mut text = String::new();
                let mut lines = Vec::new();
                for (name, value, style, export, comment) in &entries {
                    if *comment {
                        text.push_str("# a comment = \"'\n\n");
                    }
                    lines.push(text.lines().count() + 1);
                    let export = if *export { "export " } else { "" };
                    text.push_str(&format!("{export}{name}={}\n", render(value, *style)));
                }
                let parsed = parse_dotenv(&text).unwrap();
                prop_assert_eq!(parsed.len(), entries.len());
                for ((e, (name, value, ..)), line) in parsed.iter().zip(&entries).zip(lines) {
                    prop_assert_eq!(&e.name, name);
                    prop_assert_eq!(String::from_utf8(e.value.to_vec()).unwrap(), value.clone());
                    prop_assert_eq!(e.line, line);
                }
            }
        }
    }
}
