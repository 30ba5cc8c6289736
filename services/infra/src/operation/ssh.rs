//! Logging in to servers: as soon as they answer, within the readiness deadline.

use std::time::{Duration, Instant};

use orchestrator_deploy_keys as keys;
use orchestrator_ssh::{HostKey, Session, SshError, Target};

use super::failure::{StepError, not_ready};
use crate::config::Settings;
use crate::model::Server;

/// Logs in as soon as the server answers, within the readiness deadline: a refused
/// connection or login while it boots is retried, a wrong host key never is. Root refused on
/// first contact is returned at once (see `provision::take_over`).
pub(super) async fn when_up(settings: &Settings, target: &Target) -> Result<Session, SshError> {
    let deadline = Instant::now() + settings.ready_timeout;
    let mut pause = Duration::from_millis(100);
    loop {
        match orchestrator_ssh::connect(target, &settings.admin_key, Duration::from_secs(30)).await
        {
            Ok(session) => return Ok(session),
            // Root refused on first contact is not a boot delay (see `take_over`).
            Err(e @ SshError::AuthRefused { .. })
                if target.host_key == HostKey::LearnOnFirstUse =>
            {
                return Err(e);
            }
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tracing::debug!(error = %e, "server not answering over SSH yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The admin account on `server`, under its pinned host key, as soon as it answers.
pub(super) async fn admin_session(
    settings: &Settings,
    server: &Server,
) -> Result<Session, StepError> {
    // Architecture Invariant: every later login uses the pinned host key.
    let target = Target {
        host: server.ipv4.clone().unwrap_or_default(),
        port: settings.ssh_port,
        user: keys::ADMIN_USER.to_owned(),
        host_key: HostKey::Pinned(server.host_public_key.clone().unwrap_or_default()),
    };
    when_up(settings, &target)
        .await
        .map_err(|e| not_ready(e, settings.ready_timeout))
}

/// The last line(s) of a command's stderr, for an error message (bounded).
pub(super) fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let start = text.len().saturating_sub(300);
    text[text.floor_char_boundary(start)..].to_owned()
}
