//! The emulated GitHub's state: accounts, installations, repositories (files, secrets, the
//! secrets key pair) and installation tokens, behind short-lived locks that are never held
//! across an `.await`.
//!
//! Owner and repository names are case-insensitive as on GitHub: maps are keyed by the
//! lower-cased name and keep the spelling they were created with for display.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use crypto_box::aead::OsRng;
use ring::rand::SecureRandom as _;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::auth::AppKey;
use crate::limits::{FaultState, Limits};
use crate::{Config, Stats};

/// Everything the handlers share.
pub(crate) struct State {
    pub(crate) config: Config,
    pub(crate) app_key: AppKey,
    pub(crate) base_url: String,
    world: Mutex<World>,
    limits: Mutex<Limits>,
    faults: Mutex<FaultState>,
    stats: Mutex<Stats>,
}

use orchestrator_emulator_kit::{hex, lock};

impl State {
    pub(crate) fn new(config: Config, app_key: AppKey, base_url: String) -> Self {
        let window = config.primary_window;
        Self {
            config,
            app_key,
            base_url,
            world: Mutex::new(World::default()),
            limits: Mutex::new(Limits::new(window)),
            faults: Mutex::new(FaultState::default()),
            stats: Mutex::new(Stats::default()),
        }
    }

    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }

    pub(crate) fn limits(&self) -> MutexGuard<'_, Limits> {
        lock(&self.limits)
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, FaultState> {
        lock(&self.faults)
    }

    pub(crate) fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.stats)
    }
}

/// A permission level; `read < write < admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Read,
    Write,
    Admin,
}

impl Level {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

pub(crate) type Permissions = BTreeMap<String, Level>;

pub(crate) fn permissions_json(p: &Permissions) -> serde_json::Value {
    p.iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn default_permissions() -> Permissions {
    [
        ("actions", Level::Write),
        ("administration", Level::Write),
        ("contents", Level::Write),
        ("dependabot_secrets", Level::Write),
        ("environments", Level::Write),
        ("metadata", Level::Read),
        ("organization_secrets", Level::Write),
        ("secrets", Level::Write),
        ("workflows", Level::Write),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub(crate) login: String,
    pub(crate) id: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Installation {
    pub(crate) id: u64,
    /// Lower-cased login of the organization.
    pub(crate) account: String,
    pub(crate) permissions: Permissions,
    /// The repositories it was given when installed on selected repositories; `None` = all
    /// of the account's.
    pub(crate) repositories: Option<BTreeSet<u64>>,
    pub(crate) created_at: OffsetDateTime,
}

/// What an installation token may do.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub(crate) installation_id: u64,
    /// Lower-cased login of the installation's account.
    pub(crate) account: String,
    /// Repository ids when narrowed; `None` = all of the account's repositories.
    pub(crate) repositories: Option<BTreeSet<u64>>,
    pub(crate) permissions: Permissions,
    pub(crate) expires_at: OffsetDateTime,
}

/// A repository's Actions-secrets key pair.
pub(crate) struct RepoKey {
    pub(crate) id: String,
    pub(crate) secret: crypto_box::SecretKey,
}

impl RepoKey {
    pub(crate) fn generate() -> Self {
        Self {
            id: random_u64().to_string(),
            secret: crypto_box::SecretKey::generate(&mut OsRng),
        }
    }
}

pub(crate) struct Secret {
    pub(crate) value: Zeroizing<Vec<u8>>,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) updated_at: OffsetDateTime,
}

/// One set of secrets with its own key pair: a repository's Actions or Dependabot secrets, an
/// environment's, an organization's.
pub(crate) struct SecretStore {
    /// Secrets by upper-cased name.
    pub(crate) secrets: BTreeMap<String, Secret>,
    pub(crate) key: RepoKey,
}

impl SecretStore {
    pub(crate) fn new() -> Self {
        Self {
            secrets: BTreeMap::new(),
            key: RepoKey::generate(),
        }
    }

    /// Creates or updates a secret; `updated_at` moves forward on every write even within one
    /// second (the API shows whole seconds and clients detect drift by it). True if created.
    pub(crate) fn store_secret(&mut self, name: &str, value: Zeroizing<Vec<u8>>) -> bool {
        let now = now_s();
        let name = name.to_ascii_uppercase();
        match self.secrets.get_mut(&name) {
            Some(secret) => {
                secret.value = value;
                secret.updated_at = now.max(secret.updated_at + time::Duration::SECOND);
                false
            }
            None => {
                self.secrets.insert(
                    name,
                    Secret {
                        value,
                        created_at: now,
                        updated_at: now,
                    },
                );
                true
            }
        }
    }
}

/// A deployment environment of a repository.
pub(crate) struct Environment {
    /// The name as it was created (GitHub compares names ignoring case).
    pub(crate) name: String,
    pub(crate) id: u64,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) store: SecretStore,
}

/// Who may use an organization secret: GitHub's `visibility`, and for `selected` the
/// repository ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrgAccess {
    pub(crate) visibility: String,
    pub(crate) selected: BTreeSet<u64>,
}

/// An organization's Actions secrets.
pub(crate) struct OrgSecrets {
    pub(crate) store: SecretStore,
    /// By upper-cased secret name.
    pub(crate) access: BTreeMap<String, OrgAccess>,
}

pub(crate) struct Repo {
    pub(crate) id: u64,
    pub(crate) owner: String,
    pub(crate) owner_id: u64,
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) private: bool,
    pub(crate) is_template: bool,
    pub(crate) template: Option<String>,
    pub(crate) created_at: OffsetDateTime,
    /// Files on the default branch (`main`), by path.
    pub(crate) files: BTreeMap<String, Vec<u8>>,
    /// Commits on the default branch, oldest first: (sha, message). Empty = an empty
    /// repository (no branch yet), as a generated one is until its template copy lands.
    pub(crate) commits: Vec<(String, String)>,
    /// Actions secrets, with the repository's key.
    pub(crate) actions: SecretStore,
    /// Dependabot secrets, with their own key.
    pub(crate) dependabot: SecretStore,
    /// Deployment environments by lower-cased name, each with its secrets and key.
    pub(crate) environments: BTreeMap<String, Environment>,
}

impl Repo {
    pub(crate) fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// Records a commit on the default branch; returns its sha.
    pub(crate) fn commit(&mut self, message: &str) -> String {
        let sha = orchestrator_emulator_kit::hex(&random_bytes::<20>());
        self.commits.push((sha.clone(), message.to_owned()));
        sha
    }
}

#[derive(Default)]
pub(crate) struct World {
    next_id: u64,
    accounts: BTreeMap<String, Account>,
    pub(crate) installations: BTreeMap<u64, Installation>,
    repos: BTreeMap<(String, String), Repo>,
    pub(crate) tokens: HashMap<String, Grant>,
    /// Tokens revoked through `DELETE /installation/token`: refused like unknown ones.
    pub(crate) revoked: BTreeSet<String>,
    /// Organizations' Actions secrets, by lower-cased login.
    pub(crate) org_secrets: BTreeMap<String, OrgSecrets>,
}

impl World {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn account(&mut self, login: &str) -> Account {
        let key = login.to_ascii_lowercase();
        if let Some(a) = self.accounts.get(&key) {
            return a.clone();
        }
        let account = Account {
            login: login.to_owned(),
            id: 1_000_000 + self.next_id(),
        };
        self.accounts.insert(key, account.clone());
        account
    }

    /// The account for a lower-cased login (one that was never seen gets a placeholder).
    pub(crate) fn account_by_lower(&self, lower: &str) -> Account {
        self.accounts
            .get(lower)
            .cloned()
            .unwrap_or_else(|| Account {
                login: lower.to_owned(),
                id: 0,
            })
    }

    pub(crate) fn install(&mut self, account: &str, permissions: Option<Permissions>) -> u64 {
        let lower = account.to_ascii_lowercase();
        if let Some(i) = self.installation_for(&lower) {
            return i.id;
        }
        self.account(account);
        let id = 40_000_000 + self.next_id();
        self.installations.insert(
            id,
            Installation {
                id,
                account: lower,
                permissions: permissions.unwrap_or_else(default_permissions),
                repositories: None,
                created_at: now_s(),
            },
        );
        id
    }

    /// Limits `account`'s installation to the repositories `names` (created if missing), as
    /// an installation on "Only select repositories".
    pub(crate) fn select_repositories(&mut self, account: &str, names: &[&str]) -> u64 {
        let id = self.install(account, None);
        let ids = names
            .iter()
            .map(|name| {
                let (key, _) = self.create_repo(account, name, None, true, false);
                self.repos.get(&key).map_or(0, |r| r.id)
            })
            .collect();
        if let Some(inst) = self.installations.get_mut(&id) {
            inst.repositories = Some(ids);
        }
        id
    }

    pub(crate) fn installation_for(&self, account_lower: &str) -> Option<&Installation> {
        self.installations
            .values()
            .find(|i| i.account == account_lower)
    }

    /// Creates a repository unless one with that name (case-insensitively) exists; returns its
    /// key and whether it was created.
    pub(crate) fn create_repo(
        &mut self,
        owner: &str,
        name: &str,
        description: Option<String>,
        private: bool,
        is_template: bool,
    ) -> ((String, String), bool) {
        let key = repo_key(owner, name);
        if self.repos.contains_key(&key) {
            return (key, false);
        }
        let account = self.account(owner);
        let id = 500_000_000 + self.next_id();
        self.repos.insert(
            key.clone(),
            Repo {
                id,
                owner: account.login,
                owner_id: account.id,
                name: name.to_owned(),
                description,
                private,
                is_template,
                template: None,
                created_at: now_s(),
                files: BTreeMap::new(),
                commits: Vec::new(),
                actions: SecretStore::new(),
                dependabot: SecretStore::new(),
                environments: BTreeMap::new(),
            },
        );
        (key, true)
    }

    pub(crate) fn repo(&self, owner: &str, name: &str) -> Option<&Repo> {
        self.repos.get(&repo_key(owner, name))
    }

    pub(crate) fn repo_mut(&mut self, owner: &str, name: &str) -> Option<&mut Repo> {
        self.repos.get_mut(&repo_key(owner, name))
    }

    pub(crate) fn repo_by_key_mut(&mut self, key: &(String, String)) -> Option<&mut Repo> {
        self.repos.get_mut(key)
    }

    /// The organization's secrets (created empty, with a fresh key, on first use).
    pub(crate) fn org_secrets(&mut self, org: &str) -> &mut OrgSecrets {
        self.org_secrets
            .entry(org.to_ascii_lowercase())
            .or_insert_with(|| OrgSecrets {
                store: SecretStore::new(),
                access: BTreeMap::new(),
            })
    }

    /// A fresh id for an environment.
    pub(crate) fn new_id(&mut self) -> u64 {
        self.next_id()
    }

    pub(crate) fn repo_by_id(&self, id: u64) -> Option<&Repo> {
        self.repos.values().find(|r| r.id == id)
    }

    /// Revokes `token` (GitHub forgets it: every later use is 401 "Bad credentials").
    pub(crate) fn revoke(&mut self, token: &str) -> bool {
        let known = self.tokens.remove(token).is_some();
        if known {
            self.revoked.insert(token.to_owned());
        }
        known
    }

    pub(crate) fn expire_tokens(&mut self) {
        let past = OffsetDateTime::now_utc() - time::Duration::SECOND;
        for grant in self.tokens.values_mut() {
            grant.expires_at = past;
        }
    }
}

pub(crate) fn repo_key(owner: &str, name: &str) -> (String, String) {
    (owner.to_ascii_lowercase(), name.to_ascii_lowercase())
}

/// Now, in whole seconds (what the API shows).
pub(crate) fn now_s() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// `2024-05-01T12:00:00Z`.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // SystemRandom fails only if the OS generator does; zeros would then be a visible bug,
    // but tokens would be guessable: refuse to continue.
    #[allow(clippy::expect_used)]
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .expect("the operating system's random generator failed");
    buf
}

fn random_u64() -> u64 {
    u64::from_be_bytes(random_bytes::<8>()) >> 1
}

/// A fresh installation token. GitHub's are getting longer (`ghs_`, then the App id and a
/// JWT-like payload of a few hundred characters), so ours are long too: `ghs_`, the App id, `_`,
/// and 240 characters of `[A-Za-z0-9_-]`, so that no client survives with a length assumption.
/// No `.`: a credential with two dots is read as a JWT.
pub(crate) fn new_token(app_id: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const PAYLOAD: usize = 240;
    let mut token = format!("ghs_{app_id}_");
    let target = token.len() + PAYLOAD;
    // 64 characters: every byte maps uniformly through its low six bits.
    while token.len() < target {
        for b in random_bytes::<64>() {
            if token.len() < target {
                token.push(char::from(ALPHABET[usize::from(b & 0x3f)]));
            }
        }
    }
    token
}

/// Git's blob id of `content` (what the contents API calls `sha`).
pub(crate) fn blob_sha(content: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(format!("blob {}\0", content.len()).as_bytes());
    ctx.update(content);
    hex(ctx.finish().as_ref())
}
