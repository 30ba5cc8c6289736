//! `orchctl project create|get|list`: projects through the scaffolder, as `api`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context as _;
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::scaffolder::v1 as pb;
use orchestrator_proto::scaffolder::v1::scaffolder_service_client::ScaffolderServiceClient;
use tonic::transport::Channel;

use crate::conn::{MeshArgs, resumable, status_error};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ProjectCommand {
    /// Create a project: its repository, the deploy workflow, and (optionally) initial secrets.
    Create(CreateArgs),
    /// A project, with the presence of each of its secrets (never a value).
    Get(GetArgs),
    /// Projects, optionally of one user.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct ScaffolderConn {
    #[command(flatten)]
    mesh: MeshArgs,
    /// The scaffolder's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "HOST:PORT")]
    target: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    conn: ScaffolderConn,
    /// The repository name.
    #[arg(long)]
    name: String,
    /// The owning user.
    #[arg(long)]
    user: String,
    /// `docker-ssh` or `ansible`.
    #[arg(long, default_value = "docker-ssh")]
    template: String,
    #[arg(long, default_value = "")]
    description: String,
    /// Make the repository public (default: private).
    #[arg(long)]
    public: bool,
    /// An app secret: `key=GITHUB_SECRET_NAME` (repeatable); `key` becomes the app's env var.
    #[arg(long = "secret", value_name = "KEY=NAME")]
    secrets: Vec<String>,
    /// A user's own key from the vault: `key=user_id:vault_key` (repeatable).
    #[arg(long = "vault-secret", value_name = "KEY=USER:KEY")]
    vault_secrets: Vec<String>,
    /// Initial values, as a dotenv file of GitHub secret names (never on the command line).
    #[arg(long, value_name = "PATH")]
    initial_secrets_file: Option<PathBuf>,
    /// Idempotency key: re-running with the same id resumes the same project.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    conn: ScaffolderConn,
    #[command(flatten)]
    out: crate::output::OutputArgs,
    /// The project id.
    project: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    conn: ScaffolderConn,
    #[command(flatten)]
    out: crate::output::OutputArgs,
    /// Only this user's projects.
    #[arg(long)]
    user: Option<String>,
}

impl ScaffolderConn {
    async fn client(&self) -> anyhow::Result<ScaffolderServiceClient<Channel>> {
        let tls = self.mesh.tls("api")?;
        Ok(ScaffolderServiceClient::new(
            self.mesh
                .connect(&tls, &self.target, Service::Scaffolder)
                .await?,
        ))
    }
}

pub(crate) fn run(command: ProjectCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match command {
            ProjectCommand::Create(args) => create(args).await,
            ProjectCommand::Get(args) => get(args).await,
            ProjectCommand::List(args) => list(args).await,
        }
    })
}

fn target(spec: &str) -> anyhow::Result<(String, common::SecretTarget)> {
    let (key, name) = spec
        .split_once('=')
        .with_context(|| format!("`{spec}`: expected key=NAME"))?;
    let target = common::secret_target::Target::GithubSecret(common::GitHubSecretTarget {
        name: name.to_owned(),
        location: None,
    });
    Ok((
        key.to_owned(),
        common::SecretTarget {
            target: Some(target),
        },
    ))
}

fn vault_target(spec: &str) -> anyhow::Result<(String, common::SecretTarget)> {
    let (key, entry) = spec
        .split_once('=')
        .with_context(|| format!("`{spec}`: expected key=USER:KEY"))?;
    let (user_id, vault_key) = entry
        .split_once(':')
        .with_context(|| format!("`{spec}`: expected key=USER:KEY"))?;
    let target = common::secret_target::Target::VaultEntry(common::VaultEntryRef {
        user_id: user_id.into(),
        key: vault_key.into(),
        version: 0,
    });
    Ok((
        key.to_owned(),
        common::SecretTarget {
            target: Some(target),
        },
    ))
}

#[allow(clippy::print_stdout)]
async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let template = match args.template.as_str() {
        "docker-ssh" => pb::ProjectTemplate::DockerSsh,
        "ansible" => pb::ProjectTemplate::Ansible,
        other => anyhow::bail!("unknown template `{other}` (docker-ssh or ansible)"),
    };
    let mut entries = HashMap::new();
    for spec in &args.secrets {
        let (k, t) = target(spec)?;
        entries.insert(k, t);
    }
    for spec in &args.vault_secrets {
        let (k, t) = vault_target(spec)?;
        entries.insert(k, t);
    }
    let initial_secrets = match &args.initial_secrets_file {
        None => Vec::new(),
        Some(path) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            );
            crate::secrets::parse_dotenv(&text)?
                .into_iter()
                .map(|e| common::ProjectSecretValue {
                    name: e.name,
                    value: e.value.to_vec(),
                })
                .collect()
        }
    };
    let request_id = args
        .request_id
        .clone()
        .unwrap_or_else(crate::secrets::random_id);
    let mut client = args.conn.client().await?;
    let response = client
        .create_project(pb::CreateProjectRequest {
            request_id: request_id.clone(),
            name: args.name.clone(),
            user_id: args.user.clone(),
            template: template as i32,
            description: args.description.clone(),
            visibility: if args.public {
                pb::RepositoryVisibility::Public
            } else {
                pb::RepositoryVisibility::Private
            } as i32,
            secrets_ref: Some(common::SecretsRef { entries }),
            initial_secrets,
        })
        .await
        .map_err(|s| {
            let error = status_error("CreateProject", &s);
            // Only where something may have been recorded: a refusal created nothing to resume.
            if resumable(s.code()) {
                anyhow::anyhow!("{error:#}\n  (retry with --request-id {request_id} to resume)")
            } else {
                error
            }
        })?
        .into_inner();
    let project = response.project.context("no project in the answer")?;
    print_project(&project);
    for r in &response.initial_secret_results {
        let outcome = common::SecretWriteOutcome::try_from(r.outcome)
            .map_or("?".to_owned(), |o| format!("{o:?}").to_lowercase());
        println!("  secret {:<28} {outcome}", r.name);
    }
    Ok(())
}

/// A project as JSON: its state, repository and each secret's presence (never a value).
fn project_json(p: &pb::Project) -> serde_json::Value {
    use crate::output::{name, time};
    let presence: serde_json::Map<String, serde_json::Value> = p
        .secret_presence
        .iter()
        .map(|(k, v)| (k.clone(), name(common::SecretPresence::try_from(*v))))
        .collect();
    serde_json::json!({
        "id": p.id,
        "name": p.name,
        "user_id": p.user_id,
        "state": name(pb::ProjectState::try_from(p.state)),
        "creation_step": name(pb::ProjectCreationStep::try_from(p.creation_step)),
        "repository": p.repository.as_ref().map(|r| format!("{}/{}", r.owner, r.name)),
        "secret_presence": presence,
        "failure": p.failure.as_ref().map(|f| serde_json::json!({"reason": f.reason, "message": f.message})),
        "create_time": time(p.create_time),
        "update_time": time(p.update_time),
        "ready_time": time(p.ready_time),
    })
}

#[allow(clippy::print_stdout)]
fn print_project(p: &pb::Project) {
    let state = pb::ProjectState::try_from(p.state)
        .map_or("?".to_owned(), |s| format!("{s:?}").to_lowercase());
    let step = pb::ProjectCreationStep::try_from(p.creation_step)
        .map_or("?".to_owned(), |s| format!("{s:?}"));
    let repo = p
        .repository
        .as_ref()
        .map_or(String::new(), |r| format!("{}/{}", r.owner, r.name));
    println!("{}  {}  {state} ({step})  {repo}", p.id, p.name);
    let mut presence: Vec<_> = p.secret_presence.iter().collect();
    presence.sort();
    for (key, value) in presence {
        let value = common::SecretPresence::try_from(*value)
            .map_or("?".to_owned(), |v| format!("{v:?}").to_lowercase());
        println!("  {key:<24} {value}");
    }
    if let Some(f) = &p.failure {
        println!("  last failure: {} {}", f.reason, f.message);
    }
}

async fn get(args: GetArgs) -> anyhow::Result<()> {
    let mut client = args.conn.client().await?;
    let project = client
        .get_project(pb::GetProjectRequest {
            project_id: args.project.clone(),
            view: pb::ProjectView::Full as i32,
        })
        .await
        .map_err(|s| status_error("GetProject", &s))?
        .into_inner()
        .project
        .context("no project in the answer")?;
    if args.out.json() {
        return crate::output::print_json(&project_json(&project));
    }
    print_project(&project);
    Ok(())
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let mut client = args.conn.client().await?;
    let mut token = String::new();
    let mut all = Vec::new();
    loop {
        let page = client
            .list_projects(pb::ListProjectsRequest {
                page_size: 100,
                page_token: token,
                user_id: args.user.clone().unwrap_or_default(),
                ..Default::default()
            })
            .await
            .map_err(|s| status_error("ListProjects", &s))?
            .into_inner();
        for p in &page.projects {
            if args.out.json() {
                all.push(project_json(p));
            } else {
                print_project(p);
            }
        }
        if page.next_page_token.is_empty() {
            if args.out.json() {
                crate::output::print_json(&serde_json::json!({ "projects": all }))?;
            }
            return Ok(());
        }
        token = page.next_page_token;
    }
}
