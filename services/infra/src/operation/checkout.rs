//! The checkout: the project's repository cloned on the server as the deploy user, with a
//! clone-scoped token minted for this one use and revoked as soon as the checkout is over.

use std::time::Duration;

use orchestrator_github::RepoRef;
use orchestrator_mesh::retry;
use orchestrator_proto::secretbroker::v1 as broker;
use secrecy::{ExposeSecret as _, SecretString};

use super::failure::StepError;
use super::ssh;
use super::steps::Run;
use crate::model::{Server, Step, StepState};

/// How long a mint is retried in place while the broker is down or restarting (the step's own
/// retries come after).
const MINT_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// Clones the project's repository on the server as the deploy user. The token travels over
/// the SSH channel's stdin, reaches git through a credential helper reading the environment,
/// and is stored nowhere (the checkout's remote carries no credential). Safe to repeat: an
/// existing checkout is fetched instead.
pub(super) async fn check_out(run: Run<'_>, server: &Server) -> Result<(), StepError> {
    run.mark(
        Step::RepositoryCheckedOut,
        StepState::Running,
        "cloning the repository",
    )
    .await?;
    // One request id for this checkout's token, repeated while the call fails transiently: a
    // mint whose answer was lost is revoked by the broker when the retry arrives.
    let request = broker::MintRepositoryTokenRequest {
        scope: broker::RepositoryTokenScope::Clone as i32,
        project_id: server.project_id.clone(),
        from_template: false,
        request_id: retry::request_id(&format!("{}/clone", run.id)),
    };
    let minted = retry::while_transient(MINT_RETRY_BUDGET, || {
        let (mut broker, request) = (run.infra.broker(), request.clone());
        async move { broker.mint_repository_token(request).await }
    })
    .await
    .map_err(StepError::peer("secret broker"))?
    .into_inner();
    let token = SecretString::from(minted.token);
    let cloned = clone_on_server(run, server, &token, minted.repositories.first()).await;
    // Architecture Invariant: a minted token lives as long as its job: the clone token is
    // revoked once the checkout is over, whether it worked or not.
    revoke(run, server, &token).await;
    let repository = cloned?;
    run.mark(
        Step::RepositoryCheckedOut,
        StepState::Done,
        &format!(
            "{}/{} in ~{}/{}",
            repository.owner(),
            repository.name(),
            server.deploy_user,
            repository.name()
        ),
    )
    .await?;
    Ok(())
}

/// The clone itself, as the deploy user, over SSH; the repository when it worked.
async fn clone_on_server(
    run: Run<'_>,
    server: &Server,
    token: &SecretString,
    repository: Option<&orchestrator_proto::common::v1::RepositoryRef>,
) -> Result<RepoRef, StepError> {
    let repository = repository.ok_or_else(|| {
        StepError::precondition("the broker minted a clone token for no repository")
    })?;
    // GitHub's own naming rules: nothing else reaches the URL or the checkout's path.
    let repository = RepoRef::new(&repository.owner, &repository.name)
        .map_err(|e| StepError::precondition(e.to_string()))?;
    let url = format!(
        "{}/{}/{}.git",
        run.infra.settings.git_url,
        repository.owner(),
        repository.name()
    );
    let stdin = checkout_stdin(token, &url, repository.name());
    let session = ssh::admin_session(&run.infra.settings, server).await?;
    let command = format!("sudo -u {} -H bash -s", server.deploy_user);
    let output = session.run(&command, stdin.as_bytes()).await?;
    session.close().await;
    if !output.success() {
        return Err(StepError::refused(
            "CHECKOUT_FAILED",
            format!(
                "cloning {url} on the server failed: {}",
                ssh::tail(&output.stderr)
            ),
        ));
    }
    Ok(repository)
}

/// Revokes the clone token at GitHub (`DELETE /installation/token`, authenticated by the
/// token itself: infra holds no other GitHub credential). A failure is logged, not the
/// operation's: GitHub expires the token within the hour anyway.
async fn revoke(run: Run<'_>, server: &Server, token: &SecretString) {
    if let Err(e) = run.infra.github.revoke_token(token).await {
        tracing::warn!(
            server_id = %server.id,
            error = %e,
            "could not revoke the clone token after the checkout (it expires within the hour)"
        );
    }
}

/// What `bash -s` on the server reads: line 2 is the token (bash reads a script from a pipe
/// line by line, so `read` takes the line that follows it), then the script, which clones (or
/// fetches) `url` into `~/<dir>` with the token from `$GIT_TOKEN`. The credential helper on
/// git's command line names the variable, never the token.
// Architecture Invariant: one-use tokens travel only on stdin.
fn checkout_stdin(token: &SecretString, url: &str, dir: &str) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(format!(
        r#"set -euo pipefail
IFS= read -r GIT_TOKEN
{token}
export GIT_TOKEN
helper='!f() {{ test "$1" = get && printf "username=x-access-token\npassword=%s\n" "$GIT_TOKEN"; }}; f'
git_() {{ git -c credential.helper= -c "credential.helper=$helper" "$@"; }}
if [ -d "$HOME/{dir}/.git" ]; then
  git_ -C "$HOME/{dir}" fetch --quiet origin
else
  git_ clone --quiet '{url}' "$HOME/{dir}"
fi
"#,
        token = token.expose_secret(),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    fn git(dir: &std::path::Path, args: &[&str]) {
        let ok = Command::new("git")
            .current_dir(dir)
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "git {args:?}");
    }

    /// The checkout script, run by a real bash and git: it clones, keeps no credential, runs
    /// again as a fetch, and its credential helper answers with the token from stdin.
    #[test]
    fn the_checkout_clones_keeps_no_token_and_repeats() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = tmp.path().join("origin");
        std::fs::create_dir(&origin).unwrap();
        git(&origin, &["init", "--quiet", "--initial-branch=main"]);
        std::fs::write(origin.join("compose.yaml"), "services: {}\n").unwrap();
        git(&origin, &["add", "."]);
        git(
            &origin,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "--quiet",
                "-m",
                "first",
            ],
        );
        let home = tmp.path().join("home");
        std::fs::create_dir(&home).unwrap();
        let token = SecretString::from("ghs_canary_clone_token_0123456789".to_owned());
        let url = format!("file://{}", origin.display());
        let run = |stdin: &str| {
            let mut child = Command::new("bash")
                .arg("-s")
                .env("HOME", &home)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(stdin.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        };
        let stdin = checkout_stdin(&token, &url, "app");
        assert_eq!(stdin.lines().nth(2), Some(token.expose_secret()));
        run(&stdin);
        assert!(home.join("app/compose.yaml").exists());
        run(&stdin); // again: a fetch, not a failed clone
        let config = std::fs::read_to_string(home.join("app/.git/config")).unwrap();
        assert!(!config.contains("ghs_canary"), "{config}");
        // The helper hands git the token read from stdin (what an HTTPS clone would send).
        let head = &stdin[..stdin.find("if [ -d").unwrap()];
        let probe = format!(
            "{head}printf 'protocol=https\\nhost=github.com\\n\\n' | git_ credential fill\n"
        );
        let out = run(&probe);
        let answer = String::from_utf8(out.stdout).unwrap();
        assert!(answer.contains("username=x-access-token"), "{answer}");
        assert!(
            answer.contains(&format!("password={}", token.expose_secret())),
            "{answer}"
        );
    }
}
