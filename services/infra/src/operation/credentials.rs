//! Provider and DNS clients with a server's credentials: the platform's (L1), or the user's
//! own from the vault, read for this one use and dropped (zeroized) after it.

use orchestrator_proto::vault::v1 as vault;
use orchestrator_proto::vault::v1::vault_service_client::VaultServiceClient;
use orchestrator_providers::{Cloudflare, DigitalOcean, Retry, Time4Vps};
use secrecy::{ExposeSecret as _, SecretString};

use super::failure::StepError;
use crate::model::{CredentialSource, Server};
use crate::state::Infra;

pub(super) async fn digitalocean(
    infra: &Infra,
    server: &Server,
) -> Result<DigitalOcean, StepError> {
    let settings = &infra.settings.digitalocean;
    let token = token(
        infra,
        &server.project_id,
        &server.credentials,
        settings.token.as_ref(),
        "DIGITALOCEAN_TOKEN",
    )
    .await?;
    Ok(DigitalOcean::new(&settings.url, token, Retry::default())?)
}

/// Time4VPS logs in with a user and a password: the platform's, or the user's own vault entry
/// holding `username:password`.
pub(super) async fn time4vps(
    infra: &Infra,
    project_id: &str,
    source: &CredentialSource,
) -> Result<Time4Vps, StepError> {
    let settings = &infra.settings.time4vps;
    let (user, password) = match source {
        CredentialSource::Platform {} => settings.login.clone().ok_or_else(|| {
            StepError::precondition(
                "TIME4VPS_USER and TIME4VPS_PASSWORD are not configured on infra",
            )
        })?,
        CredentialSource::UserVault { user_id, key } => {
            let secret = user_secret(infra, project_id, user_id, key).await?;
            let (user, password) = secret.expose_secret().split_once(':').ok_or_else(|| {
                StepError::precondition("the user's Time4VPS entry must be `username:password`")
            })?;
            (user.to_owned(), SecretString::from(password.to_owned()))
        }
    };
    Ok(Time4Vps::new(
        &settings.url,
        &user,
        password,
        Retry::default(),
    )?)
}

/// Cloudflare with the DNS credential (`source`) of a server of `project_id`, and the zone;
/// `None` = no DNS configured.
pub(super) async fn cloudflare(
    infra: &Infra,
    project_id: &str,
    source: &CredentialSource,
) -> Result<Option<(Cloudflare, String)>, StepError> {
    let settings = &infra.settings.cloudflare;
    let Some(zone) = &settings.zone else {
        return Ok(None);
    };
    let token = token(
        infra,
        project_id,
        source,
        settings.token.as_ref(),
        "CLOUDFLARE_API_TOKEN",
    )
    .await?;
    Ok(Some((
        Cloudflare::new(&settings.url, token, Retry::default())?,
        zone.clone(),
    )))
}

/// A token: the platform's `platform` (named `name` when it is missing), or the user's own.
// Architecture Invariant: infra never stores a provider token; it lives in a SecretString for
// one call.
async fn token(
    infra: &Infra,
    project_id: &str,
    source: &CredentialSource,
    platform: Option<&SecretString>,
    name: &str,
) -> Result<SecretString, StepError> {
    match source {
        CredentialSource::Platform {} => platform
            .cloned()
            .ok_or_else(|| StepError::precondition(format!("{name} is not configured on infra"))),
        CredentialSource::UserVault { user_id, key } => {
            user_secret(infra, project_id, user_id, key).await
        }
    }
}

/// A user's provider key from the vault, for one call on the server of `project_id` (the
/// vault serves it only while the user grants it to that project); never stored or logged.
/// A read: retried like every call of an operation when the vault is down or restarting.
async fn user_secret(
    infra: &Infra,
    project_id: &str,
    user_id: &str,
    key: &str,
) -> Result<SecretString, StepError> {
    let secret = VaultServiceClient::new(infra.peers.vault.clone())
        .get_user_secret(vault::GetUserSecretRequest {
            user_id: user_id.to_owned(),
            key: key.to_owned(),
            version: 0,
            project_id: project_id.to_owned(),
        })
        .await
        .map_err(StepError::peer("vault"))?
        .into_inner()
        .secret
        .ok_or_else(|| StepError::internal("the vault answered without a secret"))?;
    let value = zeroize::Zeroizing::new(secret.value);
    let text = std::str::from_utf8(&value)
        .map_err(|_| StepError::precondition("the user's provider key is not text"))?;
    Ok(SecretString::from(text.trim().to_owned()))
}
