//! What infra hands the broker: a deploy key's private half the moment it exists (infra keeps
//! none), and the host with its pinned key once the server has an address.

use orchestrator_deploy_keys as keys;
use orchestrator_proto::secretbroker::v1 as broker;
use secrecy::ExposeSecret as _;

use super::failure::StepError;
use super::steps::Run;
use crate::model::{Server, Step, StepState};

/// Hands a deploy key's private half to the broker (DEPLOY_SSH_KEY).
// Architecture Invariant: infra never stores a deploy private key; it goes to the broker here
// and only the public half is recorded.
pub(super) async fn send_private_key(
    run: Run<'_>,
    server: &Server,
    deploy: &keys::KeyPair,
) -> Result<(), StepError> {
    run.infra
        .broker()
        .set_deploy_credentials(broker::SetDeployCredentialsRequest {
            // Per key: a retry with the same key is one write, a new key another.
            request_id: format!("{}-key-{}", run.id, &deploy.fingerprint[7..15]),
            project_id: server.project_id.clone(),
            credentials: Some(broker::DeployCredentials {
                ssh_private_key: deploy.private_openssh.expose_secret().as_bytes().to_vec(),
                ..Default::default()
            }),
            server_id: server.id.clone(),
        })
        .await
        .map_err(StepError::peer("secret broker"))?;
    Ok(())
}

/// Host, user and the pinned host key: the workflow can now deploy.
pub(super) async fn hand_over_host(run: Run<'_>, server: &Server) -> Result<(), StepError> {
    run.mark(
        Step::DeployCredentialsHandedOver,
        StepState::Running,
        "handing over the deploy credentials",
    )
    .await?;
    let ip = server.ipv4.clone().unwrap_or_default();
    let host_public = server.host_public_key.clone().unwrap_or_default();
    // Architecture Invariant: the workflow's DEPLOY_KNOWN_HOSTS is the pinned host key.
    let known_hosts = format!(
        "{}{}",
        keys::known_hosts(&server.hostname, &host_public),
        keys::known_hosts(&ip, &host_public)
    );
    let host = if run.infra.settings.cloudflare.zone.is_some() {
        server.hostname.clone()
    } else {
        ip.clone()
    };
    run.infra
        .broker()
        .set_deploy_credentials(broker::SetDeployCredentialsRequest {
            request_id: format!("{}-host", run.id),
            project_id: server.project_id.clone(),
            credentials: Some(broker::DeployCredentials {
                host,
                user: server.deploy_user.clone(),
                known_hosts,
                ..Default::default()
            }),
            server_id: server.id.clone(),
        })
        .await
        .map_err(StepError::peer("secret broker"))?;
    run.mark(
        Step::DeployCredentialsHandedOver,
        StepState::Done,
        "DEPLOY_HOST, DEPLOY_USER, DEPLOY_SSH_KEY, DEPLOY_KNOWN_HOSTS",
    )
    .await?;
    Ok(())
}
