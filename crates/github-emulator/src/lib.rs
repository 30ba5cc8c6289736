//! A local stand-in for GitHub's REST API, faithful where the broker and the scaffolder depend on
//! GitHub's behaviour, so their tests exercise the real rules instead of a mock's guesses.
//!
//! What it models, each after the GitHub REST API docs (<https://docs.github.com/en/rest>) page
//! named:
//! - **App auth as GitHub does it.** App endpoints take an RS256 JWT checked against the App's
//!   public key and GitHub's `iss`/`iat`/`exp` rules ("Generating a JSON Web Token (JWT) for a
//!   GitHub App"); installations are found per repository or organization ("Get a repository
//!   installation for the authenticated app", "Get an organization installation for the
//!   authenticated app"); installation tokens are random, expire after an hour, can only
//!   narrow the installation's repositories (all of the account's, or the ones an installation
//!   on selected repositories was given: another is refused with 422) and permissions, and
//!   every call is checked against them ("Resource not accessible by integration"). A token
//!   revokes itself with `DELETE /installation/token` (204); a revoked or expired token is 401
//!   "Bad credentials". Tokens are long (`ghs_`, the App id and 240 more characters), as
//!   GitHub's are becoming. ("Create an installation access token for an app", "Revoke an
//!   installation access token".)
//! - **Repositories.** "Create an organization repository" (`administration: write`, from a
//!   token not narrowed to selected repositories) and "Get a repository". A requested name is
//!   normalized as GitHub does: a character other than ASCII letters, digits, `.`, `-`, `_`
//!   becomes `-` and a `.git` suffix is dropped; the answer carries the name it got.
//! - **Generation from a template is asynchronous** ("Create a repository using a template"):
//!   the call answers 201 with the new, still empty repository, and the template's files land
//!   `Config::template_copy_delay` later (500 ms by default) as the branch's first commit,
//!   replacing whatever was written meanwhile; until then "List commits" answers 409 "Git
//!   Repository is empty." and contents are 404. A repository that is not a template, or an
//!   empty template, is refused with 422.
//! - **Contents on the default branch** (`main`; "Get repository content", "Create or update
//!   file contents"): an update must name the file's current blob `sha` (422 without one, 409
//!   with another), and writing under `.github/workflows/` needs `workflows: write` ("Permissions
//!   required for GitHub Apps"). "List commits" lists the branch's commits, newest first.
//! - **Sealed secrets are really decrypted** ("Get a repository public key", "Create or update
//!   a repository secret", "List repository secrets", "Get a repository secret", "Delete a
//!   repository secret"). Each repository holds a real X25519 key pair; a `PUT` of an Actions
//!   secret is unsealed with it, so a test proves GitHub could read the value. Names follow
//!   GitHub's rules; a repository holds at most 100 secrets; a value is at most 48 KB ("Secrets
//!   reference", "Limits for secrets"), measured on the decrypted value (49,152 bytes): GitHub
//!   does not say which size it measures, see `routes::secrets`. Environment, Dependabot and
//!   organization secrets the same way, each set with its own key pair and permission
//!   (`routes::places`), environments created by `PUT .../environments/{name}`. Plaintexts live only in this
//!   process's memory, in zeroizing buffers, for assertions.
//! - **Limits and faults.** Every response carries GitHub's rate-limit headers; primary and
//!   secondary limits (concurrency, minimum spacing of writes) are enforced per installation,
//!   and faults (5xx, 429, secondary 403, dropped connections, latency) are injected with a
//!   seeded generator so a test's failure pattern is reproducible. As GitHub documents ("Rate
//!   limits for the REST API", "Best practices for using the REST API"): the primary limit is
//!   403 or 429 (`Config::primary_status`) with `x-ratelimit-remaining: 0` and the reset time
//!   and no `retry-after`; a secondary limit is 403 or 429 with `retry-after`, or without it
//!   (`Faults::retry_after_secs = 0`), when a client must wait at least a minute.
//! - **No values in logs.** One `tracing` line per request: method, route, path, status; never a
//!   header, a token or a body.
//!
//! What it does not model: branches other than `main` and the Git data API (refs, trees,
//! blobs, commit contents), user-owned repositories (every account is an organization),
//! environments' protection rules (reviewers, wait timers, branch policies), Codespaces secrets,
//! variables, webhooks, pull requests, the search and GraphQL
//! limits, points per request, the abuse-detection bans, and GitHub's exact wording of some
//! refusals (the empty-template 422's message is ours).
//!
//! Architecture: an axum router behind one middleware (`limits::gate`) that authenticates,
//! counts, limits and injects faults; handlers take the identity it resolved. The accept loop
//! (`orchestrator-emulator-kit`) lets a fault close a connection without an answer.

mod auth;
mod error;
mod limits;
mod model;
mod routes;
pub mod testing;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use crypto_box::aead::OsRng;
use orchestrator_emulator_kit::Running;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::{EncodePublicKey as _, LineEnding};

pub use auth::AppKeyError;

/// How the emulator behaves; the App's public key must be set.
#[derive(Debug, Clone)]
pub struct Config {
    /// The App's id: the JWT's `iss` must equal it.
    pub app_id: u64,
    /// The App's public key: PKCS#1 `RSA PUBLIC KEY` or SPKI `PUBLIC KEY` PEM. A private key
    /// PEM (PKCS#1 or PKCS#8) is accepted too and only its public half is kept.
    pub app_public_key_pem: String,
    /// Primary limit: requests per hour per installation (and for the App's JWT).
    pub primary_limit_per_hour: u32,
    /// Secondary limit: requests in flight at once per installation (0 = unlimited).
    pub max_concurrent_per_installation: usize,
    /// Secondary limit: minimum spacing of content-creating requests (POST, PUT, PATCH,
    /// DELETE) per installation, measured between arrivals (zero = off).
    pub min_write_interval: Duration,
    /// Status of a secondary-limit rejection: 403 (GitHub's usual) or 429.
    pub secondary_status: u16,
    /// Status of a primary-limit rejection: 403 or 429 (GitHub sends either, with
    /// `x-ratelimit-remaining: 0` and no `retry-after`).
    pub primary_status: u16,
    /// How long after `POST /repos/{template_owner}/{template_repo}/generate` answered the
    /// template's files land in the new repository (GitHub copies them asynchronously; until
    /// then the repository is empty).
    pub template_copy_delay: Duration,
    /// The base URL clients reach it at, written into API answers (`url` fields); `None` = the
    /// address it bound. Set it when it listens on a wildcard address, as in a container
    /// (`http://github-emulator:8080`).
    pub public_url: Option<String>,
    /// How long an installation token lives (GitHub: one hour). Shorter in tests of a client's
    /// token cache, which must replace a token before it expires.
    pub token_lifetime: Duration,
    /// Length of a primary rate-limit window (GitHub: one hour), whose end each answer names in
    /// `x-ratelimit-reset`. Shorter in tests that a client waits for the reset.
    pub primary_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            app_id: 1,
            app_public_key_pem: String::new(),
            primary_limit_per_hour: 5000,
            max_concurrent_per_installation: 100,
            min_write_interval: Duration::ZERO,
            secondary_status: 403,
            primary_status: 403,
            template_copy_delay: Duration::from_millis(500),
            public_url: None,
            token_lifetime: Duration::from_secs(3600),
            primary_window: Duration::from_secs(3600),
        }
    }
}

/// Faults injected into requests that passed authentication and the limits. Probabilities are
/// per request (0.0-1.0) and exclusive: one draw picks at most one of dropped connection,
/// server error, 429, secondary 403 (in that order, so their sum should stay <= 1).
#[derive(Debug, Clone)]
pub struct Faults {
    /// Seed of the generator: the same seed and request order give the same faults.
    pub seed: u64,
    /// 500, 502 or 503 (chosen uniformly).
    pub server_error: f64,
    /// 429 with `retry-after`.
    pub rate_limited_429: f64,
    /// 403 "You have exceeded a secondary rate limit" with `retry-after`.
    pub secondary_403: f64,
    /// The connection is closed without an answer.
    pub dropped_connection: f64,
    /// Added to every request before it is answered (faulted ones included).
    pub latency: Duration,
    /// `retry-after` sent with an injected 429 or 403; 0 = none (GitHub does not always send
    /// one: the client must then wait at least a minute).
    pub retry_after_secs: u64,
    /// Probability that a request is additionally delayed by `slow_response_delay`.
    pub slow_response: f64,
    /// See `slow_response`.
    pub slow_response_delay: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            seed: 0,
            server_error: 0.0,
            rate_limited_429: 0.0,
            secondary_403: 0.0,
            dropped_connection: 0.0,
            latency: Duration::ZERO,
            retry_after_secs: 1,
            slow_response: 0.0,
            slow_response_delay: Duration::from_secs(2),
        }
    }
}

/// One installation token minted through the API: what was asked for, what was granted, and
/// whether it was revoked since.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenMint {
    /// The token itself, so that a test can try it again (Debug leaves it out).
    pub token: String,
    pub installation_id: u64,
    /// Requested repository names (ids resolved to names); empty = not narrowed.
    pub repositories: Vec<String>,
    /// Requested permissions; empty = the installation's.
    pub permissions: BTreeMap<String, String>,
    /// The permissions the token carries (`metadata: read` is implied, as on GitHub).
    pub granted_permissions: BTreeMap<String, String>,
    /// The repositories the token reaches; `None` = every repository of the account.
    pub granted_repositories: Option<Vec<String>>,
    /// Revoked through `DELETE /installation/token`.
    pub revoked: bool,
}

impl std::fmt::Debug for TokenMint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMint")
            .field("installation_id", &self.installation_id)
            .field("repositories", &self.repositories)
            .field("permissions", &self.permissions)
            .field("granted_permissions", &self.granted_permissions)
            .field("granted_repositories", &self.granted_repositories)
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
}

/// Counters for assertions.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub token_mints: Vec<TokenMint>,
    /// Successful `GET .../actions/secrets/public-key` calls.
    pub public_key_fetches: usize,
    /// Requests by `"METHOD /route/{template}"` (`"METHOD <unmatched>"` for unknown paths).
    pub requests: BTreeMap<String, usize>,
    /// Rejections by the primary or secondary limits (not injected faults).
    pub rate_limited: usize,
    /// Most requests in flight at once for one installation (or the App's JWT).
    pub max_concurrent: usize,
    /// Accepted Actions-secret PUTs: (`owner/repo`, arrival time).
    pub secret_writes: Vec<(String, Instant)>,
    /// Injected faults by kind: `server_error`, `rate_limited_429`, `secondary_403`,
    /// `dropped_connection`, `slow_response`.
    pub faults_injected: BTreeMap<String, usize>,
    /// Every request in arrival order, with what it was told about waiting: so a test can check
    /// that a client's next attempt came no earlier than it was asked to.
    pub attempts: Vec<Attempt>,
}

/// One request as the emulator saw it: when it arrived, how it was answered, and the waits the
/// answer asked for.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// `METHOD /path` as sent, query included (one secret's PUT is told from another's).
    pub request: String,
    pub arrived: Instant,
    /// When the answer was handed to the connection (or the connection dropped).
    pub answered: Instant,
    /// 0 for a dropped connection.
    pub status: u16,
    /// `retry-after`, in seconds, when the answer carried one.
    pub retry_after: Option<u64>,
    /// `x-ratelimit-reset` (Unix seconds) when the answer said the primary limit is used up
    /// (`x-ratelimit-remaining: 0` on a refusal).
    pub wait_until_reset: Option<i64>,
    /// Wall-clock arrival, Unix milliseconds (to compare with `wait_until_reset`).
    pub arrived_unix_ms: i64,
}

/// The most requests [`Stats::attempts`] keeps (later ones are counted but not kept).
pub const MAX_ATTEMPTS_KEPT: usize = 100_000;

/// How the clients honoured the waits they were asked for (see [`Stats::waits`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waits {
    /// Answers that asked for a wait (`retry-after`, or the primary limit's reset) and were
    /// followed by another attempt of the same request.
    pub followed: usize,
    /// Of those, the ones whose next attempt came too early: `request: what was asked, when
    /// the next attempt came`.
    pub early: Vec<String>,
}

impl Stats {
    /// For every answer that asked the client to wait, whether the next attempt of the same
    /// request (method, path and query) came no earlier than asked: `retry-after` seconds after
    /// the answer, or at the primary limit's `x-ratelimit-reset` (Unix seconds) at the earliest.
    pub fn waits(&self) -> Waits {
        let mut waits = Waits::default();
        for (i, asked) in self.attempts.iter().enumerate() {
            if asked.retry_after.is_none() && asked.wait_until_reset.is_none() {
                continue;
            }
            let Some(next) = self.attempts[i + 1..]
                .iter()
                .find(|a| a.request == asked.request)
            else {
                continue;
            };
            waits.followed += 1;
            if let Some(secs) = asked.retry_after {
                let waited = next.arrived.saturating_duration_since(asked.answered);
                if waited < Duration::from_secs(secs) {
                    waits.early.push(format!(
                        "{}: retry-after {secs} s, next attempt after {waited:?}",
                        asked.request
                    ));
                }
            } else if let Some(reset) = asked.wait_until_reset
                && next.arrived_unix_ms < reset.saturating_mul(1000)
            {
                waits.early.push(format!(
                    "{}: x-ratelimit-reset {reset}, next attempt at {} ms",
                    asked.request, next.arrived_unix_ms
                ));
            }
        }
        waits
    }
}

/// A running emulator. Clones share it; the server stops when the last handle drops or on
/// [`Emulator::shutdown`].
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Handle>,
}

struct Handle {
    state: Arc<model::State>,
    running: Running,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("url", &self.inner.running.url)
            .finish()
    }
}

impl Emulator {
    /// Starts on `127.0.0.1:0`.
    pub async fn start(config: Config) -> anyhow::Result<Emulator> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr` (plain HTTP).
    pub async fn start_on(addr: SocketAddr, config: Config) -> anyhow::Result<Emulator> {
        for (name, status) in [
            ("secondary_status", config.secondary_status),
            ("primary_status", config.primary_status),
        ] {
            anyhow::ensure!(
                status == 403 || status == 429,
                "{name} must be 403 or 429, not {status}"
            );
        }
        let app_key = auth::AppKey::from_pem(&config.app_public_key_pem)
            .context("the App's public key (Config::app_public_key_pem)")?;
        let (listener, bound) = orchestrator_emulator_kit::bind(addr).await?;
        let url = config
            .public_url
            .as_deref()
            .map(|u| u.trim_end_matches('/').to_owned())
            .unwrap_or(bound);
        let state = Arc::new(model::State::new(config, app_key, url.clone()));
        let router = routes::router(state.clone());
        let running = Running::spawn("github-emulator", listener, url, router);
        Ok(Emulator {
            inner: Arc::new(Handle { state, running }),
        })
    }

    /// The API base, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> String {
        self.inner.running.url.clone()
    }

    /// Stops the server: no new connections, open ones are closed.
    pub fn shutdown(&self) {
        self.inner.running.stop();
    }

    /// Installs the App on organization `account` for all its repositories with the default
    /// permissions (actions, administration, contents, environments, secrets, workflows:
    /// write; metadata: read). Returns the installation id (the existing one if installed).
    pub fn install(&self, account: &str) -> u64 {
        self.inner.state.world().install(account, None)
    }

    /// Like [`install`](Self::install) with exactly these permissions (`("contents", "read")`).
    ///
    /// # Panics
    /// On a level other than `read`, `write` or `admin` (a test's mistake).
    pub fn install_with_permissions(&self, account: &str, permissions: &[(&str, &str)]) -> u64 {
        let mut perms = BTreeMap::new();
        for (name, level) in permissions {
            let level = model::Level::parse(level)
                .unwrap_or_else(|| panic!("permission level {level:?} for {name}"));
            perms.insert((*name).to_owned(), level);
        }
        self.inner.state.world().install(account, Some(perms))
    }

    /// Installs the App on `account` for the repositories `names` only ("Only select
    /// repositories"; missing ones are created empty and private), with the default
    /// permissions: a token for any other repository is refused (422), as is creating one.
    pub fn install_on_selected(&self, account: &str, names: &[&str]) -> u64 {
        self.inner.state.world().select_repositories(account, names)
    }

    /// Creates an empty private repository (no-op if it exists).
    pub fn create_repository(&self, owner: &str, name: &str) {
        self.inner
            .state
            .world()
            .create_repo(owner, name, None, true, false);
    }

    /// Creates an empty private template repository (for `POST .../generate`); add files with
    /// [`put_file_directly`](Self::put_file_directly).
    pub fn create_template_repository(&self, owner: &str, name: &str) {
        self.inner
            .state
            .world()
            .create_repo(owner, name, None, true, true);
    }

    /// Writes a file on the default branch as if pushed by someone else.
    ///
    /// # Panics
    /// If the repository does not exist (a test's mistake).
    pub fn put_file_directly(&self, owner: &str, repo: &str, path: &str, content: &[u8]) {
        let mut world = self.inner.state.world();
        let repo = world
            .repo_mut(owner, repo)
            .unwrap_or_else(|| panic!("no repository {owner}/{repo}"));
        repo.files.insert(path.to_owned(), content.to_vec());
        repo.commit(&format!("Update {path}"));
    }

    /// The decrypted value of an Actions secret (names are case-insensitive).
    pub fn secret(&self, owner: &str, repo: &str, name: &str) -> Option<Vec<u8>> {
        let world = self.inner.state.world();
        let repo = world.repo(owner, repo)?;
        repo.actions
            .secrets
            .get(&name.to_ascii_uppercase())
            .map(|s| s.value.to_vec())
    }

    /// The repository's secret names (upper-cased, sorted).
    pub fn secret_names(&self, owner: &str, repo: &str) -> Vec<String> {
        let world = self.inner.state.world();
        world
            .repo(owner, repo)
            .map(|r| r.actions.secrets.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The secret's `updated_at` as the API shows it (RFC 3339).
    pub fn secret_updated_at(&self, owner: &str, repo: &str, name: &str) -> Option<String> {
        let world = self.inner.state.world();
        let repo = world.repo(owner, repo)?;
        repo.actions
            .secrets
            .get(&name.to_ascii_uppercase())
            .map(|s| model::rfc3339(s.updated_at))
    }

    /// Creates or updates a secret as if someone else had (no API call, no counters).
    ///
    /// # Panics
    /// If the repository does not exist (a test's mistake).
    pub fn put_secret_directly(&self, owner: &str, repo: &str, name: &str, value: &[u8]) {
        let mut world = self.inner.state.world();
        let repo = world
            .repo_mut(owner, repo)
            .unwrap_or_else(|| panic!("no repository {owner}/{repo}"));
        repo.actions
            .store_secret(name, zeroize::Zeroizing::new(value.to_vec()));
    }

    /// Deletes a secret as if someone else had (no API call, no counters); `false` if there
    /// was none.
    ///
    /// # Panics
    /// If the repository does not exist (a test's mistake).
    pub fn delete_secret_directly(&self, owner: &str, repo: &str, name: &str) -> bool {
        let mut world = self.inner.state.world();
        let repo = world
            .repo_mut(owner, repo)
            .unwrap_or_else(|| panic!("no repository {owner}/{repo}"));
        repo.actions
            .secrets
            .remove(&name.to_ascii_uppercase())
            .is_some()
    }

    /// The decrypted value of a deployment environment's secret (environment and secret names
    /// are case-insensitive).
    pub fn environment_secret(
        &self,
        owner: &str,
        repo: &str,
        env: &str,
        name: &str,
    ) -> Option<Vec<u8>> {
        let world = self.inner.state.world();
        let repo = world.repo(owner, repo)?;
        let env = repo.environments.get(&env.to_ascii_lowercase())?;
        env.store
            .secrets
            .get(&name.to_ascii_uppercase())
            .map(|s| s.value.to_vec())
    }

    /// The repository's deployment environments, as created (sorted by lower-cased name).
    pub fn environments(&self, owner: &str, repo: &str) -> Vec<String> {
        let world = self.inner.state.world();
        world
            .repo(owner, repo)
            .map(|r| r.environments.values().map(|e| e.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Creates the deployment environment as if someone else had (no API call).
    ///
    /// # Panics
    /// If the repository does not exist (a test's mistake).
    pub fn create_environment_directly(&self, owner: &str, repo: &str, env: &str) {
        let mut world = self.inner.state.world();
        let id = world.new_id();
        let repo = world
            .repo_mut(owner, repo)
            .unwrap_or_else(|| panic!("no repository {owner}/{repo}"));
        repo.environments
            .entry(env.to_ascii_lowercase())
            .or_insert_with(|| model::Environment {
                name: env.to_owned(),
                id,
                created_at: model::now_s(),
                store: model::SecretStore::new(),
            });
    }

    /// The decrypted value of a Dependabot secret.
    pub fn dependabot_secret(&self, owner: &str, repo: &str, name: &str) -> Option<Vec<u8>> {
        let world = self.inner.state.world();
        let repo = world.repo(owner, repo)?;
        repo.dependabot
            .secrets
            .get(&name.to_ascii_uppercase())
            .map(|s| s.value.to_vec())
    }

    /// The decrypted value of an organization's Actions secret, with its visibility and
    /// selected repository ids.
    pub fn org_secret(&self, org: &str, name: &str) -> Option<(Vec<u8>, String, Vec<u64>)> {
        let world = self.inner.state.world();
        let org = world.org_secrets.get(&org.to_ascii_lowercase())?;
        let upper = name.to_ascii_uppercase();
        let value = org.store.secrets.get(&upper)?.value.to_vec();
        let access = org.access.get(&upper)?;
        Some((
            value,
            access.visibility.clone(),
            access.selected.iter().copied().collect(),
        ))
    }

    /// Creates or updates an organization secret (visibility `all`) as if someone else had.
    pub fn put_org_secret_directly(&self, org: &str, name: &str, value: &[u8]) {
        let mut world = self.inner.state.world();
        let secrets = world.org_secrets(org);
        let upper = name.to_ascii_uppercase();
        secrets
            .store
            .store_secret(&upper, zeroize::Zeroizing::new(value.to_vec()));
        secrets.access.insert(
            upper,
            model::OrgAccess {
                visibility: "all".into(),
                selected: Default::default(),
            },
        );
    }

    /// A repository's numeric id.
    pub fn repository_id(&self, owner: &str, repo: &str) -> Option<u64> {
        self.inner.state.world().repo(owner, repo).map(|r| r.id)
    }

    /// A file's content on the default branch.
    pub fn file(&self, owner: &str, repo: &str, path: &str) -> Option<Vec<u8>> {
        let world = self.inner.state.world();
        world.repo(owner, repo)?.files.get(path).cloned()
    }

    /// Replaces the repository's secrets key pair (new `key_id`): values sealed for the old key
    /// are then refused with 422.
    ///
    /// # Panics
    /// If the repository does not exist (a test's mistake).
    pub fn rotate_public_key(&self, owner: &str, repo: &str) {
        let mut world = self.inner.state.world();
        let repo = world
            .repo_mut(owner, repo)
            .unwrap_or_else(|| panic!("no repository {owner}/{repo}"));
        repo.actions.key = model::RepoKey::generate();
    }

    /// Makes every installation token minted so far expire now (401 "Bad credentials").
    pub fn expire_tokens(&self) {
        self.inner.state.world().expire_tokens();
    }

    /// Faults for every route without its own (see [`set_faults_for`](Self::set_faults_for));
    /// restarts the generator from `faults.seed`.
    pub fn set_faults(&self, faults: Faults) {
        self.inner.state.faults().set_default(faults);
    }

    /// Faults for one route, keyed like [`Stats::requests`]
    /// (`"PUT /repos/{owner}/{repo}/actions/secrets/{name}"`), with their own generator.
    pub fn set_faults_for(&self, route: &str, faults: Faults) {
        self.inner.state.faults().set_route(route, faults);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.state.stats().clone()
    }

    /// Clears the counters (not the rate-limit windows).
    pub fn reset_stats(&self) {
        *self.inner.state.stats() = Stats::default();
    }
}

/// Test helper: a fresh 2048-bit RSA App key pair: (private key PKCS#1 PEM, public key SPKI PEM).
///
/// # Panics
/// Only if the operating system's random generator fails.
pub fn generate_app_key() -> (String, String) {
    #[allow(clippy::expect_used)] // Documented: nothing to recover from without randomness.
    let key = rsa::RsaPrivateKey::new(&mut OsRng, 2048).expect("RSA key generation");
    #[allow(clippy::expect_used)] // Encoding a key we just generated cannot fail.
    let private = key
        .to_pkcs1_pem(LineEnding::LF)
        .expect("PKCS#1 encoding")
        .to_string();
    #[allow(clippy::expect_used)]
    let public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("SPKI encoding");
    (private, public)
}

/// Test helper: an App JWT for `app_id` as GitHub asks for it (`iat` 60 s in the past, `exp`
/// 9 minutes ahead), signed RS256 with `private_key_pem` (PKCS#1 or PKCS#8).
pub fn app_jwt(private_key_pem: &str, app_id: u64) -> anyhow::Result<String> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    sign_jwt(
        private_key_pem,
        &serde_json::json!({"iat": now - 60, "exp": now + 540, "iss": app_id}),
    )
}

/// Test helper: `claims` signed as an RS256 JWT with `private_key_pem` (PKCS#1 or PKCS#8).
pub fn sign_jwt(private_key_pem: &str, claims: &serde_json::Value) -> anyhow::Result<String> {
    let der = auth::private_key_pkcs1_der(private_key_pem)?;
    let pair = ring::signature::RsaKeyPair::from_der(&der)
        .map_err(|e| anyhow::anyhow!("RSA private key rejected: {e}"))?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = b64.encode(serde_json::to_vec(claims)?);
    let signing_input = format!("{header}.{payload}");
    let mut signature = vec![0; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| anyhow::anyhow!("RSA signing failed"))?;
    Ok(format!("{signing_input}.{}", b64.encode(signature)))
}
