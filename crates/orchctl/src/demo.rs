//! `orchctl demo`: the seed's four flows, narrated against the mesh `orchctl up` runs (found
//! through its state folder, so `--port 0` works): a project created, a bot token pushed, a server
//! provisioned with its progress, and what each service holds and does not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::infra::v1 as infra;
use orchestrator_proto::infra::v1::infra_service_client::InfraServiceClient;
use orchestrator_proto::scaffolder::v1 as scaffolder;
use orchestrator_proto::scaffolder::v1::scaffolder_service_client::ScaffolderServiceClient;
use orchestrator_proto::secretbroker::v1 as broker;
use orchestrator_proto::secretbroker::v1::secret_broker_service_client::SecretBrokerServiceClient;
use orchestrator_proto::vault::v1 as vault;
use orchestrator_proto::vault::v1::vault_service_client::VaultServiceClient;

use crate::conn::{MeshArgs, status_error, when};
use crate::secrets::random_id;

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// The state folder of the running `orchctl up` (its PKI and address files).
    #[arg(long, default_value = ".orchestrator")]
    state_dir: PathBuf,
    #[arg(long, default_value = "orchestrator.local", env = "ORCH_TRUST_DOMAIN")]
    trust_domain: String,
}

/// Where `service` listens, from the address file `orchctl up` keeps in `<state>/run`.
fn target(state: &Path, service: Service) -> anyhow::Result<String> {
    let file = state.join("run").join(format!("{}.json", service.name()));
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "{} not found: start the mesh first (`orchctl up --state-dir {}`)",
            file.display(),
            state.display()
        )
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    let addr: std::net::SocketAddr = value["grpc"]
        .as_str()
        .context("no grpc address in the address file")?
        .parse()?;
    Ok(if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    })
}

#[allow(clippy::print_stdout)]
fn step(n: u8, text: &str) {
    println!();
    println!("{n}/4  {text}");
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(demo(args))
}

#[allow(clippy::print_stdout, clippy::too_many_lines)]
async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mesh = MeshArgs {
        pki: args.state_dir.join("pki"),
        identity: None,
        trust_domain: args.trust_domain.clone(),
    };
    let tls = mesh.tls("api")?;
    let channel = |service: Service| {
        let mesh = mesh.clone();
        let tls = tls.clone();
        let state = args.state_dir.clone();
        async move {
            let target = target(&state, service)?;
            mesh.connect(&tls, &target, service).await
        }
    };
    println!("The seed's flows against the local mesh, as the `api` identity (the orchestrator's");
    println!("API); every call is mTLS and each service checks who may call what.");

    let suffix = &random_id()[..8];
    let user = "u-demo";
    step(
        1,
        "the scaffolder creates a project: a GitHub repository with its deploy workflow",
    );
    let mut scaffolder = ScaffolderServiceClient::new(channel(Service::Scaffolder).await?);
    let bot_token = common::SecretTarget {
        target: Some(common::secret_target::Target::GithubSecret(
            common::GitHubSecretTarget {
                name: "BOT_TOKEN".into(),
                location: None,
            },
        )),
    };
    let project = scaffolder
        .create_project(scaffolder::CreateProjectRequest {
            request_id: random_id(),
            name: format!("demo-{suffix}"),
            user_id: user.into(),
            template: scaffolder::ProjectTemplate::DockerSsh as i32,
            visibility: scaffolder::RepositoryVisibility::Private as i32,
            secrets_ref: Some(common::SecretsRef {
                entries: HashMap::from([("bot_token".to_owned(), bot_token)]),
            }),
            ..Default::default()
        })
        .await
        .map_err(|s| status_error("CreateProject", &s))?
        .into_inner()
        .project
        .context("no project in the answer")?;
    let repo = project
        .repository
        .as_ref()
        .map_or(String::new(), |r| format!("{}/{}", r.owner, r.name));
    println!(
        "     project {} `{}`, repository {repo}",
        project.id, project.name
    );
    println!("     its app reads `bot_token` from the GitHub secret BOT_TOKEN (not set yet)");

    step(
        2,
        "the secret broker pushes a bot token into the repository's secrets",
    );
    let mut secrets = SecretBrokerServiceClient::new(channel(Service::SecretBroker).await?);
    let written = secrets
        .set_project_secrets(broker::SetProjectSecretsRequest {
            request_id: random_id(),
            project_id: project.id.clone(),
            secrets: vec![common::ProjectSecretValue {
                name: "BOT_TOKEN".into(),
                value: format!("bot-token-{}", random_id()).into_bytes(),
            }],
            location: None,
        })
        .await
        .map_err(|s| status_error("SetProjectSecrets", &s))?
        .into_inner();
    for r in &written.results {
        let outcome = common::SecretWriteOutcome::try_from(r.outcome)
            .map_or("?".to_owned(), |o| format!("{o:?}").to_lowercase());
        println!(
            "     {} {outcome} (encrypted for GitHub with the repository's public key)",
            r.name
        );
    }

    step(3, "infra provisions a server for the project, step by step");
    let mut infra_client = InfraServiceClient::new(channel(Service::Infra).await?);
    let hostname = format!("demo-{suffix}.orchestrator.test");
    let operation = infra_client
        .provision_server(infra::ProvisionServerRequest {
            request_id: random_id(),
            project_id: project.id.clone(),
            provider: infra::Provider::Digitalocean as i32,
            spec: Some(infra::provision_server_request::Spec::Digitalocean(
                infra::DigitalOceanServerSpec {
                    region: "fra1".into(),
                    size: "s-1vcpu-1gb".into(),
                    image: "ubuntu-24-04-x64".into(),
                },
            )),
            hostname: hostname.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| status_error("ProvisionServer", &s))?
        .into_inner()
        .operation
        .context("no operation in the answer")?;
    crate::infra::follow(&mut infra_client, &operation.id, &operation.server_id).await?;

    step(4, "what each service holds, and what it does not");
    let server = infra_client
        .get_server(infra::GetServerRequest {
            server_id: operation.server_id.clone(),
        })
        .await
        .map_err(|s| status_error("GetServer", &s))?
        .into_inner()
        .server
        .context("no server in the answer")?;
    println!(
        "     infra:        server {} {} at {}, deploy key {}",
        server.id, server.hostname, server.ipv4_address, server.deploy_key_fingerprint
    );
    println!("                   (the deploy key's private half went to GitHub, never to `api`)");
    let listed = secrets
        .list_project_secrets(broker::ListProjectSecretsRequest {
            project_id: project.id.clone(),
            page_size: 100,
            page_token: String::new(),
            location: None,
        })
        .await
        .map_err(|s| status_error("ListProjectSecrets", &s))?
        .into_inner();
    println!(
        "     broker:       the repository's secrets, names and times (GitHub never gives a value back)"
    );
    for s in &listed.secrets {
        let presence = common::SecretPresence::try_from(s.presence)
            .map_or("?".to_owned(), |p| format!("{p:?}").to_lowercase());
        println!(
            "                   {:<20} {presence:<8} {}  written by {}",
            s.name,
            when(s.github_update_time),
            s.written_by
        );
    }
    let mut vault_client = VaultServiceClient::new(channel(Service::Vault).await?);
    vault_client
        .put_user_secret(vault::PutUserSecretRequest {
            request_id: random_id(),
            user_id: user.into(),
            key: "digitalocean/token".into(),
            value: format!("dop_v1_demo_{}", random_id()).into_bytes(),
            expected_version: None,
        })
        .await
        .map_err(|s| status_error("PutUserSecret", &s))?;
    println!("     vault:        {user}'s digitalocean/token stored, encrypted under a data key");
    match vault_client
        .get_user_secret(vault::GetUserSecretRequest {
            user_id: user.into(),
            key: "digitalocean/token".into(),
            project_id: project.id.clone(),
            ..Default::default()
        })
        .await
    {
        Ok(_) => anyhow::bail!("the vault served a plaintext to `api`: the policy is broken"),
        Err(s) => println!(
            "                   ... and refuses `api` its value: {:?} {}",
            s.code(),
            s.message()
        ),
    }
    println!(
        "     scaffolder:   project {} {}",
        project.id,
        scaffolder::ProjectState::try_from(project.state)
            .map_or("?".to_owned(), |s| format!("{s:?}").to_lowercase())
    );
    println!();
    println!(
        "Done in {:.0?}. Look around: orchctl project get {} / orchctl secrets list {} / orchctl infra get {}",
        started.elapsed(),
        project.id,
        project.id,
        server.id
    );
    Ok(())
}
