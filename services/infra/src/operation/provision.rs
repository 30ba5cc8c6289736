//! A provision: the hostname checked at DNS, the deploy key (its private half straight to the
//! broker), then the server through its provider, its address, the A record, the handover of host and pinned
//! key, readiness, and on request the checkout. Each step is recorded, so a retry or a
//! restart resumes where it stopped and never asks the provider for a second server.

use orchestrator_deploy_keys as keys;
use orchestrator_providers::{ServerProvider, ServerSpec, Started};
use orchestrator_ssh::{HostKey, SshError, Target};

use super::checkout::check_out;
use super::failure::{StepError, not_ready};
use super::handover::{hand_over_host, send_private_key};
use super::steps::Run;
use super::{credentials, dns, ssh};
use crate::config::Settings;
use crate::db::Column;
use crate::model::{Provider, Server, ServerState, Step, StepState};

/// Runs (or resumes) the provision of `server`; `checkout` when its steps include one. Before
/// each step it checks that no destroy was asked for meanwhile.
pub(super) async fn provision(
    run: Run<'_>,
    mut server: Server,
    checkout: bool,
) -> Result<(), StepError> {
    run.still_wanted(&server.id).await?;
    // Before any side effect: a name someone else's DNS record holds is refused.
    dns::check_name(run, &server).await?;
    hand_over_deploy_key(run, &mut server).await?;
    run.still_wanted(&server.id).await?;
    match server.provider {
        Provider::DigitalOcean => {
            let provider = credentials::digitalocean(run.infra, &server).await?;
            bring_up(run, &mut server, &provider).await?
        }
        Provider::Time4Vps => {
            let provider =
                credentials::time4vps(run.infra, &server.project_id, &server.credentials).await?;
            bring_up(run, &mut server, &provider).await?
        }
    }
    run.still_wanted(&server.id).await?;
    dns::set_record(run, &mut server).await?;
    run.still_wanted(&server.id).await?;
    hand_over_host(run, &server).await?;
    run.still_wanted(&server.id).await?;
    check_ready(run, &server).await?;
    if checkout {
        run.still_wanted(&server.id).await?;
        check_out(run, &server).await?;
    }
    run.finish(&server.id, None, ServerState::Ready).await?;
    Ok(())
}

/// The deploy key: handed to the broker the moment it exists; only its public half stays, so
/// no later step (nor a restart) needs a private key infra no longer has.
async fn hand_over_deploy_key(run: Run<'_>, server: &mut Server) -> Result<(), StepError> {
    if server.deploy_public_key.is_some() {
        return Ok(());
    }
    let deploy =
        keys::generate(&format!("deploy@{}", server.hostname)).map_err(StepError::internal)?;
    send_private_key(run, server, &deploy).await?;
    run.set_server(
        &server.id,
        Column::DeployPublicKey,
        Some(&deploy.public_openssh),
    )
    .await?;
    server.deploy_public_key = Some(deploy.public_openssh.clone());
    Ok(())
}

/// The server, through whichever provider: found by its key or started (where cloud-init
/// runs, with the host key injected, so it is known and pinned before the server answers),
/// then its public address; where it does not (Time4VPS), taken over over SSH.
async fn bring_up<P: ServerProvider>(
    run: Run<'_>,
    server: &mut Server,
    provider: &P,
) -> Result<(), StepError> {
    let mut spec = server_spec(&run.infra.settings, run.id, server);
    if !server.started() {
        run.mark(Step::ServerCreated, StepState::Running, &starting(server))
            .await?;
        // Architecture Invariant: retries never duplicate a server; one is found by its key
        // before another is started.
        let started = match provider.find(&spec).await? {
            Some(existing) => existing,
            None => {
                if provider.runs_cloud_init() {
                    // Architecture Invariant: the host key is generated here and injected, so
                    // it is pinned before the server first answers.
                    let host = keys::generate(&format!("host@{}", server.hostname))
                        .map_err(StepError::internal)?;
                    run.set_server(
                        &server.id,
                        Column::HostPublicKey,
                        Some(&host.public_openssh),
                    )
                    .await?;
                    server.host_public_key = Some(host.public_openssh.clone());
                    spec.user_data = keys::cloud_init(
                        &server.deploy_user,
                        server.deploy_public_key.as_deref().unwrap_or_default(),
                        run.infra.settings.admin_key.public_openssh(),
                        &host,
                    )
                    .map_err(|e| {
                        StepError::Final(tonic::Status::invalid_argument(e.to_string()))
                    })?;
                }
                provider.start(&spec).await?
            }
        };
        // The task first: from now on a restart waits for it instead of starting another.
        if let Some(task) = &started.task {
            run.set_server(&server.id, Column::ProviderTaskId, Some(task))
                .await?;
            server.provider_task_id = Some(task.clone());
        }
        run.set_server(&server.id, Column::ProviderServerId, Some(&started.id))
            .await?;
        server.provider_server_id = Some(started.id.clone());
        let detail = match &started.task {
            Some(task) => format!(
                "server {} reinstalling with {} (task {task})",
                started.id, server.image
            ),
            None => format!("droplet {}", started.id),
        };
        run.mark(Step::ServerCreated, StepState::Done, &detail)
            .await?;
    }
    if server.ipv4.is_none() {
        run.mark(
            Step::AddressAssigned,
            StepState::Running,
            "waiting for a public address",
        )
        .await?;
        let started = Started {
            id: server.provider_server_id.clone().unwrap_or_default(),
            task: server.provider_task_id.clone(),
        };
        let ip = provider
            .wait_until_up(&started, run.infra.settings.ready_timeout)
            .await?;
        run.set_server(&server.id, Column::Ipv4, Some(&ip)).await?;
        server.ipv4 = Some(ip.clone());
        run.mark(Step::AddressAssigned, StepState::Done, &ip)
            .await?;
    }
    if server.host_public_key.is_none() {
        take_over(run, server).await?;
    }
    Ok(())
}

/// What the first step says while it runs.
fn starting(server: &Server) -> String {
    match server.provider {
        Provider::DigitalOcean => "creating the server".to_owned(),
        Provider::Time4Vps => format!(
            "reinstalling server {} with {}",
            server.provider_server_id.as_deref().unwrap_or_default(),
            server.image
        ),
    }
}

/// What the provider is asked for, from the server's record; `op_id` is the provision's (its
/// key finds what it made).
pub(super) fn server_spec(settings: &Settings, op_id: &str, server: &Server) -> ServerSpec {
    ServerSpec {
        key: format!("orch-{op_id}"),
        existing: match server.provider {
            Provider::Time4Vps => server.provider_server_id.clone().unwrap_or_default(),
            Provider::DigitalOcean => String::new(),
        },
        name: server.hostname.replace('.', "-"),
        region: server.region.clone(),
        size: server.size.clone(),
        image: server.image.clone(),
        user_data: String::new(),
        root_key: settings.admin_key.public_openssh().to_owned(),
    }
}

/// A server without cloud-init (Time4VPS), freshly reinstalled with the admin key for root:
/// the takeover script over SSH sets it up as cloud-init would. Its host key is learned on
/// this first contact — right after the reinstall infra itself asked for, the only moment it
/// can be — and pinned from then on.
async fn take_over(run: Run<'_>, server: &mut Server) -> Result<(), StepError> {
    let settings = &run.infra.settings;
    let ip = server.ipv4.clone().unwrap_or_default();
    run.mark(
        Step::ServerReady,
        StepState::Running,
        "taking over the reinstalled server",
    )
    .await?;
    let script = keys::takeover_script(
        &server.deploy_user,
        server.deploy_public_key.as_deref().unwrap_or_default(),
        settings.admin_key.public_openssh(),
    )
    .map_err(|e| StepError::Final(tonic::Status::invalid_argument(e.to_string())))?;
    // Architecture Invariant: the one host key learned on first use, right after our own
    // reinstall; pinned below.
    let target = Target {
        host: ip.clone(),
        port: settings.ssh_port,
        user: "root".to_owned(),
        host_key: HostKey::LearnOnFirstUse,
    };
    let session = match ssh::when_up(settings, &target).await {
        Ok(session) => session,
        // Root refused after our reinstall: an earlier attempt took the server over but died
        // before recording its host key. Reinstall again rather than guess.
        Err(SshError::AuthRefused { .. }) => {
            for column in [Column::ProviderTaskId, Column::Ipv4] {
                run.set_server(&server.id, column, None).await?;
            }
            return Err(StepError::Transient(format!(
                "{ip} was taken over by an earlier attempt; reinstalling again"
            )));
        }
        Err(e) => return Err(not_ready(e, settings.ready_timeout)),
    };
    let output = session.run("bash -s", script.as_bytes()).await?;
    let host_key = session.host_key().to_owned();
    session.close().await;
    if !output.success() {
        return Err(StepError::refused(
            "TAKEOVER_FAILED",
            format!(
                "the takeover script on {ip} exited with {:?}: {}",
                output.status,
                ssh::tail(&output.stderr)
            ),
        ));
    }
    run.set_server(&server.id, Column::HostPublicKey, Some(&host_key))
        .await?;
    server.host_public_key = Some(host_key);
    Ok(())
}

/// Ready when the admin account gets in under the pinned host key and cloud-init says it is
/// done (DigitalOcean); a Time4VPS takeover script checked its own result.
async fn check_ready(run: Run<'_>, server: &Server) -> Result<(), StepError> {
    if server.provider == Provider::Time4Vps {
        return Ok(run
            .mark(
                Step::ServerReady,
                StepState::Done,
                "takeover finished: deploy user set up, root login off",
            )
            .await?);
    }
    run.mark(
        Step::ServerReady,
        StepState::Running,
        "waiting for cloud-init",
    )
    .await?;
    let session = ssh::admin_session(&run.infra.settings, server).await?;
    let output = session.run("cloud-init status --wait", b"").await?;
    session.close().await;
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.success() || !said.contains("status: done") {
        return Err(StepError::refused(
            "CLOUD_INIT_FAILED",
            format!(
                "cloud-init on {} did not finish: {said} {}",
                server.ipv4.as_deref().unwrap_or_default(),
                ssh::tail(&output.stderr)
            ),
        ));
    }
    run.mark(
        Step::ServerReady,
        StepState::Done,
        "cloud-init done; the admin key and the pinned host key work",
    )
    .await?;
    Ok(())
}
