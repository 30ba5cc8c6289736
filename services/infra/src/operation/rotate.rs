//! A deploy key rotation: a new key authorized next to the old one, handed to the broker, then
//! the only one. Started over from the top after any interruption: a key whose private half
//! was lost is harmless (nobody holds it) and the revocation leaves exactly the newest key.

use orchestrator_deploy_keys as keys;
use orchestrator_ssh::Output;

use super::failure::StepError;
use super::handover::send_private_key;
use super::ssh;
use super::steps::Run;
use crate::db::Column;
use crate::model::{Server, ServerState, Step, StepState};

pub(super) async fn rotate(run: Run<'_>, server: Server) -> Result<(), StepError> {
    run.still_wanted(&server.id).await?;
    run.mark(
        Step::DeployKeyAuthorized,
        StepState::Running,
        "authorizing a new deploy key",
    )
    .await?;
    let deploy =
        keys::generate(&format!("deploy@{}", server.hostname)).map_err(StepError::internal)?;
    let line = format!(
        "{}\n",
        keys::normalized(&deploy.public_openssh).map_err(StepError::internal)?
    );
    let session = ssh::admin_session(&run.infra.settings, &server).await?;
    let output = session
        .run(
            &keys::authorize_command(&server.deploy_user),
            line.as_bytes(),
        )
        .await?;
    edited("authorizing the new key", output)?;
    run.mark(
        Step::DeployKeyAuthorized,
        StepState::Done,
        &deploy.fingerprint,
    )
    .await?;
    run.still_wanted(&server.id).await?;
    run.mark(
        Step::DeployCredentialsHandedOver,
        StepState::Running,
        "handing the new key to the broker",
    )
    .await?;
    send_private_key(run, &server, &deploy).await?;
    run.mark(
        Step::DeployCredentialsHandedOver,
        StepState::Done,
        "DEPLOY_SSH_KEY",
    )
    .await?;
    run.mark(
        Step::OldDeployKeysRevoked,
        StepState::Running,
        "revoking the older keys",
    )
    .await?;
    let output = session
        .run(
            &keys::replace_keys_command(&server.deploy_user),
            line.as_bytes(),
        )
        .await?;
    session.close().await;
    edited("revoking the older keys", output)?;
    run.set_server(
        &server.id,
        Column::DeployPublicKey,
        Some(&deploy.public_openssh),
    )
    .await?;
    run.mark(
        Step::OldDeployKeysRevoked,
        StepState::Done,
        &format!("only {} is authorized", deploy.fingerprint),
    )
    .await?;
    run.finish(&server.id, None, ServerState::Ready).await?;
    Ok(())
}

/// Whether an edit of the deploy user's authorized keys (`what`) worked on the server.
fn edited(what: &str, output: Output) -> Result<(), StepError> {
    if output.success() {
        Ok(())
    } else {
        Err(StepError::refused(
            "ROTATION_FAILED",
            format!("{what} failed on the server: {}", ssh::tail(&output.stderr)),
        ))
    }
}
