//! A repository's default branch: whether it has a commit yet. GitHub's "Create a repository
//! using a template" answers before the template's files are copied (the copy is asynchronous;
//! until it lands the repository is empty and `GET .../commits` answers 409), so a client
//! that writes files into a generated repository waits for its first commit first.

use std::time::{Duration, Instant};

use http::Method;
use secrecy::SecretString;
use serde::Deserialize;

use crate::client::{Auth, GitHub, GitHubError};
use crate::names::RepoRef;

#[derive(Deserialize)]
struct CommitBody {
    sha: String,
}

impl GitHub {
    /// The sha of the default branch's newest commit, or `None` while the repository is
    /// empty (409 "Git Repository is empty.").
    pub async fn head_commit(
        &self,
        token: &SecretString,
        repo: &RepoRef,
    ) -> Result<Option<String>, GitHubError> {
        let path = format!("/repos/{}/{}/commits?per_page=1", repo.owner(), repo.name());
        match self
            .json::<Vec<CommitBody>>(Method::GET, &path, Auth::Token(token), None)
            .await
        {
            Ok(list) => Ok(list.into_iter().next().map(|c| c.sha)),
            Err(GitHubError::Status { status: 409, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits (polling, 100 ms doubling to 2 s) until the repository has a commit, at most
    /// `limit`; returns its sha. `Unavailable` if it still has none then.
    pub async fn wait_for_first_commit(
        &self,
        token: &SecretString,
        repo: &RepoRef,
        limit: Duration,
    ) -> Result<String, GitHubError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            if let Some(sha) = self.head_commit(token, repo).await? {
                return Ok(sha);
            }
            if started.elapsed() + pause > limit {
                return Err(GitHubError::Unavailable(format!(
                    "{}/{} has no commit {} s after it was generated from its template",
                    repo.owner(),
                    repo.name(),
                    limit.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}
