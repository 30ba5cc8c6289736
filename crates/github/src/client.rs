//! The HTTP side: octocrab as the transport, and GitHub's own rules for when and how long to
//! wait — `retry-after`, `x-ratelimit-remaining: 0` until `x-ratelimit-reset`, secondary limits,
//! and exponential backoff with jitter for 5xx and timeouts — up to a deadline.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt as _;
use ring::rand::SecureRandom as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing::Instrument as _;

use crate::app::AppAuth;
use crate::locations::{EnvironmentName, OrgVisibility, SecretsAt};
use crate::names::{RepoRef, SecretName};

/// Why a GitHub call failed. Never carries a token or a secret value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GitHubError {
    /// GitHub answered, and not with success: its status and message.
    #[error("GitHub answered {status}: {message}")]
    Status { status: u16, message: String },
    /// Still rate limited when the deadline ran out.
    #[error("GitHub rate limit: still limited at the deadline (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    /// Unreachable, timed out or failing (5xx) until the deadline.
    #[error("GitHub unavailable: {0}")]
    Unavailable(String),
    /// Our side could not make the request (no App key, an unusable URL or token).
    #[error("unexpected answer from GitHub: {0}")]
    Decode(String),
    /// GitHub answered success in a shape it does not document (a field missing or of another
    /// type, a key of the wrong length, more pages than any listing has): UNKNOWN, not INTERNAL.
    #[error("GitHub answered in an unexpected shape: {0}")]
    BadAnswer(String),
    #[error(transparent)]
    AppKey(#[from] std::sync::Arc<crate::app::AppKeyError>),
}

impl GitHubError {
    pub fn status(&self) -> Option<u16> {
        match self {
            GitHubError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// What GitHub's refusal means for a gRPC caller, with GitHub's reason in the message and
    /// its HTTP status in the `ErrorInfo`.
    pub fn to_grpc(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self {
            GitHubError::Status {
                status: 401 | 403, ..
            } => Code::PermissionDenied,
            GitHubError::Status { status: 404, .. } => Code::NotFound,
            GitHubError::Status {
                status: 409 | 422, ..
            } => Code::FailedPrecondition,
            GitHubError::Status { .. } | GitHubError::BadAnswer(_) => Code::Unknown,
            GitHubError::RateLimited { .. } => Code::ResourceExhausted,
            GitHubError::Unavailable(_) => Code::Unavailable,
            GitHubError::Decode(_) | GitHubError::AppKey(_) => Code::Internal,
        };
        let reason = match self {
            GitHubError::Status { .. } => "GITHUB_REFUSED",
            GitHubError::RateLimited { .. } => "GITHUB_RATE_LIMITED",
            GitHubError::Unavailable(_) => "GITHUB_UNAVAILABLE",
            GitHubError::BadAnswer(_) => "GITHUB_BAD_ANSWER",
            _ => "GITHUB_ERROR",
        };
        let status = self.status().map(|s| s.to_string()).unwrap_or_default();
        orchestrator_status::with_reason(
            code,
            reason,
            self.to_string(),
            &[("github_status", status)],
        )
    }
}

/// How long and how often to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Give up once a call has taken this long in all.
    pub deadline: Duration,
    /// First backoff after a 5xx or a timeout; doubles each time, with jitter.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Wait after a secondary rate limit that names no `retry-after` (GitHub: at least a minute).
    pub secondary_wait: Duration,
    /// One attempt's limit.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(120),
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            secondary_wait: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(20),
        }
    }
}

/// Who a request is made as.
#[derive(Clone, Copy)]
pub(crate) enum Auth<'a> {
    App,
    Token(&'a SecretString),
}

/// A narrowed installation token.
#[derive(Clone)]
pub struct InstallationToken {
    pub token: SecretString,
    /// Unix seconds.
    pub expires_at: i64,
    pub permissions: BTreeMap<String, String>,
    pub repositories: Vec<String>,
}

impl std::fmt::Debug for InstallationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallationToken")
            .field("expires_at", &self.expires_at)
            .field("permissions", &self.permissions)
            .field("repositories", &self.repositories)
            .finish_non_exhaustive()
    }
}

/// A repository's Actions secrets public key.
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub key_id: String,
    pub key: [u8; 32],
}

/// An Actions secret as GitHub lists it: name and times, never a value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SecretMeta {
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

/// What a secret PUT did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Updated,
}

/// The most pages of 100 secrets one listing reads (GitHub keeps far fewer per repository).
const MAX_PAGES: u32 = 100;

/// What a cached token was minted for: installation, sorted repositories, permissions.
pub(crate) type TokenKey = (u64, Vec<String>, BTreeMap<String, String>);

/// The GitHub client of the secret broker (the only holder of the App key).
pub struct GitHub {
    http: octocrab::Octocrab,
    /// The API's host, for the spans of outbound calls (`server.address`).
    host: String,
    /// The App key: only the broker's client has one; others work with tokens it minted.
    app: Option<AppAuth>,
    retry: RetryPolicy,
    /// Tokens the broker itself uses, by what they were minted for.
    pub(crate) tokens: Mutex<HashMap<TokenKey, Arc<InstallationToken>>>,
    /// Cached tokens GitHub refused (401) and that were replaced: SHA-256 of the token -> what
    /// it was minted for and when it would have expired, so that a holder of the old one gets
    /// the new one.
    pub(crate) superseded: Mutex<HashMap<[u8; 32], (TokenKey, i64)>>,
    rng: ring::rand::SystemRandom,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[derive(Deserialize)]
struct Installation {
    id: u64,
}

#[derive(Deserialize)]
pub(crate) struct TokenBody {
    pub(crate) token: String,
    pub(crate) expires_at: String,
    #[serde(default)]
    pub(crate) permissions: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) repositories: Vec<TokenRepo>,
}

#[derive(Deserialize)]
pub(crate) struct TokenRepo {
    pub(crate) name: String,
}

#[derive(Deserialize)]
struct KeyBody {
    key_id: String,
    key: String,
}

#[derive(Deserialize)]
struct FileBody {
    sha: String,
    #[serde(default)]
    content: String,
}

/// A repository as GitHub describes it (the fields we use).
#[derive(Debug, Clone, Deserialize)]
pub struct Repository {
    pub id: i64,
    pub name: String,
    pub full_name: String,
    #[serde(default)]
    pub html_url: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Deserialize)]
struct SecretList {
    secrets: Vec<SecretMeta>,
}

impl GitHub {
    /// A client for `base_url` (`GITHUB_API_URL`: `https://api.github.com`, or an emulator)
    /// acting as the App.
    pub fn new(base_url: &str, app: AppAuth, retry: RetryPolicy) -> Result<Self, GitHubError> {
        Self::build(base_url, Some(app), retry)
    }

    /// A client without the App key, for services that work with installation tokens the
    /// broker minted for them.
    pub fn with_tokens_only(base_url: &str, retry: RetryPolicy) -> Result<Self, GitHubError> {
        Self::build(base_url, None, retry)
    }

    fn build(
        base_url: &str,
        app: Option<AppAuth>,
        retry: RetryPolicy,
    ) -> Result<Self, GitHubError> {
        let host = base_url
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.host().map(str::to_owned))
            .unwrap_or_default();
        let http = octocrab::Octocrab::builder()
            .base_uri(base_url)
            .map_err(|e| GitHubError::Decode(format!("GITHUB_API_URL: {e}")))?
            .set_connect_timeout(Some(Duration::from_secs(5)))
            .set_read_timeout(Some(retry.attempt_timeout))
            .build()
            .map_err(|e| GitHubError::Unavailable(e.to_string()))?;
        Ok(Self {
            http,
            host,
            app,
            retry,
            tokens: Mutex::new(HashMap::new()),
            superseded: Mutex::new(HashMap::new()),
            rng: ring::rand::SystemRandom::new(),
        })
    }

    /// The installation of the App on `repo`'s owner (JWT-authenticated).
    pub async fn installation_for_repo(&self, repo: &RepoRef) -> Result<u64, GitHubError> {
        let path = format!("/repos/{}/{}/installation", repo.owner(), repo.name());
        Ok(self
            .json::<Installation>(Method::GET, &path, Auth::App, None)
            .await?
            .id)
    }

    /// The installation of the App on organization `org`.
    pub async fn installation_for_org(&self, org: &str) -> Result<u64, GitHubError> {
        Ok(self
            .json::<Installation>(
                Method::GET,
                &format!("/orgs/{org}/installation"),
                Auth::App,
                None,
            )
            .await?
            .id)
    }

    /// The repository's Actions secrets public key.
    pub async fn public_key(
        &self,
        token: &SecretString,
        repo: &RepoRef,
    ) -> Result<PublicKey, GitHubError> {
        self.public_key_at(token, &SecretsAt::Repository(repo.clone()))
            .await
    }

    /// The public key of the secrets at `at` (each location has its own).
    pub async fn public_key_at(
        &self,
        token: &SecretString,
        at: &SecretsAt,
    ) -> Result<PublicKey, GitHubError> {
        let path = format!("{}/public-key", at.base());
        let body: KeyBody = self
            .json(Method::GET, &path, Auth::Token(token), None)
            .await?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&body.key)
            .map_err(|e| GitHubError::BadAnswer(format!("public key: {e}")))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| GitHubError::BadAnswer("public key is not 32 bytes".into()))?;
        Ok(PublicKey {
            key_id: body.key_id,
            key,
        })
    }

    /// PUTs an already sealed value (see [`crate::seal`]) as a repository Actions secret.
    pub async fn put_secret(
        &self,
        token: &SecretString,
        repo: &RepoRef,
        name: &SecretName,
        sealed_base64: &str,
        key_id: &str,
    ) -> Result<PutOutcome, GitHubError> {
        self.put_secret_at(
            token,
            &SecretsAt::Repository(repo.clone()),
            name,
            sealed_base64,
            key_id,
            None,
        )
        .await
    }

    /// PUTs an already sealed value at `at`; an organization secret also carries its
    /// visibility (GitHub requires it there, and only there).
    pub async fn put_secret_at(
        &self,
        token: &SecretString,
        at: &SecretsAt,
        name: &SecretName,
        sealed_base64: &str,
        key_id: &str,
        visibility: Option<&OrgVisibility>,
    ) -> Result<PutOutcome, GitHubError> {
        let path = format!("{}/{}", at.base(), name);
        let mut body = visibility.map_or_else(|| serde_json::json!({}), OrgVisibility::body);
        body["encrypted_value"] = serde_json::json!(sealed_base64);
        body["key_id"] = serde_json::json!(key_id);
        let (status, _, _) = self
            .send_ok(Method::PUT, &path, Auth::Token(token), Some(body))
            .await?;
        Ok(if status == StatusCode::CREATED {
            PutOutcome::Created
        } else {
            PutOutcome::Updated
        })
    }

    /// One repository secret's metadata, or `None` if it does not exist.
    pub async fn get_secret(
        &self,
        token: &SecretString,
        repo: &RepoRef,
        name: &SecretName,
    ) -> Result<Option<SecretMeta>, GitHubError> {
        self.get_secret_at(token, &SecretsAt::Repository(repo.clone()), name)
            .await
    }

    /// One secret's metadata at `at`, or `None` if it does not exist.
    pub async fn get_secret_at(
        &self,
        token: &SecretString,
        at: &SecretsAt,
        name: &SecretName,
    ) -> Result<Option<SecretMeta>, GitHubError> {
        let path = format!("{}/{}", at.base(), name);
        match self
            .json(Method::GET, &path, Auth::Token(token), None)
            .await
        {
            Ok(meta) => Ok(Some(meta)),
            Err(GitHubError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every secret of the repository (see [`GitHub::list_secrets_at`]).
    pub async fn list_secrets(
        &self,
        token: &SecretString,
        repo: &RepoRef,
    ) -> Result<Vec<SecretMeta>, GitHubError> {
        self.list_secrets_at(token, &SecretsAt::Repository(repo.clone()))
            .await
    }

    /// Every secret at `at`, 100 per page, at most `MAX_PAGES` pages (an answer that always
    /// names a next page must not keep the broker paging forever).
    pub async fn list_secrets_at(
        &self,
        token: &SecretString,
        at: &SecretsAt,
    ) -> Result<Vec<SecretMeta>, GitHubError> {
        let mut all = Vec::new();
        let base = at.base();
        for page in 1..=MAX_PAGES {
            let path = format!("{base}?per_page=100&page={page}");
            let (_, headers, body) = self
                .send_ok(Method::GET, &path, Auth::Token(token), None)
                .await?;
            let list: SecretList =
                serde_json::from_slice(&body).map_err(|e| GitHubError::BadAnswer(e.to_string()))?;
            let n = list.secrets.len();
            all.extend(list.secrets);
            let more = headers
                .get(http::header::LINK)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|link| link.contains("rel=\"next\""));
            if !more || n == 0 {
                return Ok(all);
            }
        }
        Err(GitHubError::BadAnswer(format!(
            "more than {MAX_PAGES} pages of secrets"
        )))
    }

    /// Deletes a repository secret; `false` if it did not exist.
    pub async fn delete_secret(
        &self,
        token: &SecretString,
        repo: &RepoRef,
        name: &SecretName,
    ) -> Result<bool, GitHubError> {
        self.delete_secret_at(token, &SecretsAt::Repository(repo.clone()), name)
            .await
    }

    /// Deletes a secret at `at`; `false` if it (or its environment) did not exist.
    pub async fn delete_secret_at(
        &self,
        token: &SecretString,
        at: &SecretsAt,
        name: &SecretName,
    ) -> Result<bool, GitHubError> {
        let path = format!("{}/{}", at.base(), name);
        match self
            .send_ok(Method::DELETE, &path, Auth::Token(token), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(GitHubError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates the deployment environment `env` without protection rules (needs
    /// `administration: write`); an existing one is left as it is (GitHub's PUT with an empty
    /// body changes nothing it was not sent).
    pub async fn create_environment(
        &self,
        token: &SecretString,
        repo: &RepoRef,
        env: &EnvironmentName,
    ) -> Result<(), GitHubError> {
        let path = format!("/repos/{}/{}/environments/{env}", repo.owner(), repo.name());
        self.send_ok(
            Method::PUT,
            &path,
            Auth::Token(token),
            Some(serde_json::json!({})),
        )
        .await?;
        Ok(())
    }

    /// Creates a repository in organization `org` (needs `administration: write`).
    pub async fn create_org_repository(
        &self,
        token: &SecretString,
        org: &str,
        name: &str,
        description: &str,
        private: bool,
    ) -> Result<Repository, GitHubError> {
        let body = serde_json::json!({ "name": name, "description": description, "private": private, "auto_init": false });
        self.json(
            Method::POST,
            &format!("/orgs/{org}/repos"),
            Auth::Token(token),
            Some(body),
        )
        .await
    }

    /// Creates `owner/name` from the template repository `template`.
    pub async fn generate_repository(
        &self,
        token: &SecretString,
        template: &RepoRef,
        owner: &str,
        name: &str,
        description: &str,
        private: bool,
    ) -> Result<Repository, GitHubError> {
        let body = serde_json::json!({ "owner": owner, "name": name, "description": description, "private": private });
        let path = format!("/repos/{}/{}/generate", template.owner(), template.name());
        self.json(Method::POST, &path, Auth::Token(token), Some(body))
            .await
    }

    /// A repository, or `None` if it does not exist (or the token cannot see it).
    pub async fn repository(
        &self,
        token: &SecretString,
        repo: &RepoRef,
    ) -> Result<Option<Repository>, GitHubError> {
        match self
            .json(
                Method::GET,
                &format!("/repos/{}/{}", repo.owner(), repo.name()),
                Auth::Token(token),
                None,
            )
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(GitHubError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a file on the default branch: creates it, or updates it when its content
    /// differs (so a resumed run commits nothing twice). Returns whether it wrote. A write that
    /// raced another (GitHub refuses it for a missing or stale `sha`) reads the file again.
    pub async fn put_file(
        &self,
        token: &SecretString,
        repo: &RepoRef,
        path: &str,
        content: &[u8],
        message: &str,
    ) -> Result<bool, GitHubError> {
        let url = format!("/repos/{}/{}/contents/{path}", repo.owner(), repo.name());
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut attempt = 1;
        loop {
            let existing: Option<FileBody> =
                match self.json(Method::GET, &url, Auth::Token(token), None).await {
                    Ok(f) => Some(f),
                    Err(GitHubError::Status { status: 404, .. }) => None,
                    Err(e) => return Err(e),
                };
            let mut body =
                serde_json::json!({ "message": message, "content": b64.encode(content) });
            if let Some(existing) = existing {
                let current = b64
                    .decode(existing.content.replace('\n', ""))
                    .unwrap_or_default();
                if current == content {
                    return Ok(false);
                }
                body["sha"] = serde_json::json!(existing.sha);
            }
            match self
                .send_ok(Method::PUT, &url, Auth::Token(token), Some(body))
                .await
            {
                Ok(_) => return Ok(true),
                // The file changed between our read and our write (another writer, or a
                // template's files landing): GitHub wants the new `sha` (422 without one, 409
                // with a stale one). Read it again and compare.
                Err(GitHubError::Status {
                    status: 409 | 422, ..
                }) if attempt < 3 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<serde_json::Value>,
    ) -> Result<T, GitHubError> {
        let (_, _, bytes) = self.send_ok(method, path, auth, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| GitHubError::BadAnswer(e.to_string()))
    }

    /// Sends with retries; `Err(Status)` for a final non-success answer.
    pub(crate) async fn send_ok(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GitHubError> {
        let (status, headers, bytes) = self.send(method.clone(), path, auth, body.clone()).await?;
        // A cached token GitHub no longer takes (revoked, or expired early): dropped, and the
        // request is sent once more with a new one.
        let (status, headers, bytes) = match auth {
            Auth::Token(old) if status == StatusCode::UNAUTHORIZED => {
                match self.replacement(old).await? {
                    Some(fresh) => {
                        self.send(method, path, Auth::Token(&fresh.token), body)
                            .await?
                    }
                    None => (status, headers, bytes),
                }
            }
            _ => (status, headers, bytes),
        };
        if status.is_success() {
            return Ok((status, headers, bytes));
        }
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
        Err(GitHubError::Status {
            status: status.as_u16(),
            message,
        })
    }

    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GitHubError> {
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            let outcome = self.attempt(&method, path, &auth, body.as_ref()).await;
            let (wait, failure) = match &outcome {
                Ok((status, headers, bytes)) => {
                    match self.wait_for(*status, headers, bytes, attempt) {
                        None => return outcome,
                        Some((wait, rate_limited)) => {
                            let failure = if rate_limited {
                                GitHubError::RateLimited {
                                    retry_after: Some(wait),
                                }
                            } else {
                                GitHubError::Unavailable(format!("GitHub answered {status}"))
                            };
                            (wait, failure)
                        }
                    }
                }
                Err(e) => (self.backoff(attempt), e.clone()),
            };
            // Saturating: `wait` may be GitHub's `retry-after` (u64::MAX seconds overflowed).
            if started.elapsed().saturating_add(wait) > self.retry.deadline {
                return Err(failure);
            }
            tracing::warn!(%method, path = %path_template(path), attempt, wait_ms = wait.as_millis() as u64, error = %failure, "GitHub call will be retried");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        auth: &Auth<'_>,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GitHubError> {
        let authorization = match auth {
            Auth::App => {
                let app = self
                    .app
                    .as_ref()
                    .ok_or_else(|| GitHubError::Decode("this client holds no App key".into()))?;
                let jwt = app
                    .jwt(now_unix())
                    .map_err(|e| GitHubError::AppKey(Arc::new(e)))?;
                format!("Bearer {}", jwt.expose_secret())
            }
            Auth::Token(token) => format!("Bearer {}", token.expose_secret()),
        };
        let mut authorization = http::HeaderValue::from_str(&authorization)
            .map_err(|_| GitHubError::Decode("token is not a header value".into()))?;
        authorization.set_sensitive(true);
        let payload = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let request = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::AUTHORIZATION, authorization)
            .header(http::header::ACCEPT, "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .header(http::header::USER_AGENT, "orchestrator-secret-broker")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(payload)
            .map_err(|e| GitHubError::Decode(e.to_string()))?;
        let span = self.span(method, path);
        let exchange = async {
            let response =
                tokio::time::timeout(self.retry.attempt_timeout, self.http.execute(request))
                    .await
                    .map_err(|_| GitHubError::Unavailable("timed out".into()))?
                    .map_err(|e| GitHubError::Unavailable(e.to_string()))?;
            let (parts, body) = response.into_parts();
            span.record("http.response.status_code", parts.status.as_u16());
            let bytes = tokio::time::timeout(self.retry.attempt_timeout, body.collect())
                .await
                .map_err(|_| GitHubError::Unavailable("timed out reading the answer".into()))?
                .map_err(|e| GitHubError::Unavailable(e.to_string()))?
                .to_bytes();
            Ok((parts.status, parts.headers, bytes))
        };
        let outcome = exchange.instrument(span.clone()).await;
        if outcome.as_ref().map_or(true, |(status, _, _)| {
            status.is_server_error() || status.is_client_error()
        }) {
            span.record("otel.status_code", "error");
        }
        outcome
    }

    /// The exported span of one HTTP request (target `otel`: see `orchestrator_mesh::telemetry`):
    /// method, host and path without its query, and later the status; never a header or a body.
    /// No trace context is sent to GitHub: a third party has no use for our trace IDs.
    fn span(&self, method: &Method, path: &str) -> tracing::Span {
        let path = path.split('?').next().unwrap_or(path);
        tracing::info_span!(
            target: "otel",
            "http.client",
            otel.name = %format_args!("{method} {}", path_template(path)),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = %method,
            server.address = %self.host,
            url.path = path,
            http.response.status_code = tracing::field::Empty,
        )
    }

    /// How long to wait before retrying this answer, and whether it is a rate limit; `None`
    /// when the answer is final (success, or an error retrying cannot fix).
    fn wait_for(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        attempt: u32,
    ) -> Option<(Duration, bool)> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let retry_after = header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // GitHub's rules ("Rate limits for the REST API"): a primary or a secondary limit comes
        // as 403 or 429; `retry-after` says how long to wait; else `x-ratelimit-remaining: 0`
        // means the primary limit, until `x-ratelimit-reset`; else a secondary limit, at least a
        // minute, longer each time it repeats. A 403 with none of these is a refusal.
        match status.as_u16() {
            403 | 429 => {
                if let Some(wait) = retry_after {
                    return Some((wait, true));
                }
                if header("x-ratelimit-remaining") == Some("0") {
                    let reset = header("x-ratelimit-reset")
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0);
                    // Saturating: i64::MIN overflowed the subtraction (a panic).
                    let wait = Duration::from_secs(reset.saturating_sub(now_unix()).max(1) as u64);
                    return Some((wait, true));
                }
                let secondary = String::from_utf8_lossy(body)
                    .to_ascii_lowercase()
                    .contains("rate limit");
                if status.as_u16() == 429 || secondary {
                    let wait = self
                        .retry
                        .secondary_wait
                        .saturating_mul(1 << attempt.min(3));
                    return Some((wait, true));
                }
                None
            }
            500..=599 => Some((retry_after.unwrap_or_else(|| self.backoff(attempt)), false)),
            _ => None,
        }
    }

    /// Exponential backoff with "full jitter" between half and all of the step.
    fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .retry
            .base_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.retry.max_backoff);
        let mut r = [0u8; 4];
        let _ = self.rng.fill(&mut r);
        let fraction = 0.5 + f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX) / 2.0;
        step.mul_f64(fraction)
    }
}

/// A path without its variable parts, for logs (`/repos/{owner}/{repo}/...`).
fn path_template(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["", "repos", _, _, rest @ ..] => format!("/repos/{{owner}}/{{repo}}/{}", rest.join("/")),
        ["", "app", "installations", _, rest @ ..] => {
            format!("/app/installations/{{id}}/{}", rest.join("/"))
        }
        _ => path.to_owned(),
    }
}
