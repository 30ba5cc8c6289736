//! Development secrets: a folder of its own for each service (`<root>/<service>/`, the root
//! 0700) with one 0600 file per secret, created once and then kept, so a restarted service finds
//! the same keys and its data stays readable.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use orchestrator_mesh::Service;

/// The key id of the vault's development master key (`<id>:<base64 key>`).
pub const VAULT_KEY_ID: &str = "dev1";

/// One development secret: whose it is, its file, and how a development value is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    /// The key of a service's audit chain (`AUDIT_KEY`).
    AuditKey(Service),
    /// The vault's master keyring (`VAULT_MASTER_KEY`).
    VaultMasterKey,
    /// The GitHub App's private key (`GITHUB_APP_PRIVATE_KEY`): generated with its public half
    /// by whoever runs the GitHub emulator, then [`DevSecrets::put`] here.
    GitHubAppKey,
    /// The orchestrator's admin SSH key (`ORCHESTRATOR_SSH_PRIVATE_KEY`).
    AdminSshKey,
    /// The platform's DigitalOcean token (`DIGITALOCEAN_TOKEN`).
    DigitalOceanToken,
    /// The platform's Cloudflare token (`CLOUDFLARE_API_TOKEN`).
    CloudflareToken,
    /// The platform's Time4VPS password (`TIME4VPS_PASSWORD`).
    Time4VpsPassword,
}

impl Secret {
    /// The service whose secret this is, and whose folder holds it.
    pub fn owner(self) -> Service {
        match self {
            Secret::AuditKey(service) => service,
            Secret::VaultMasterKey => Service::Vault,
            Secret::GitHubAppKey => Service::SecretBroker,
            Secret::AdminSshKey
            | Secret::DigitalOceanToken
            | Secret::CloudflareToken
            | Secret::Time4VpsPassword => Service::Infra,
        }
    }

    /// Its file name in the owner's folder.
    fn file_name(self) -> &'static str {
        match self {
            Secret::AuditKey(_) => "audit_key",
            Secret::VaultMasterKey => "vault_master_key",
            Secret::GitHubAppKey => "github_app_key",
            Secret::AdminSshKey => "orchestrator_ssh_key",
            Secret::DigitalOceanToken => "digitalocean_token",
            Secret::CloudflareToken => "cloudflare_token",
            Secret::Time4VpsPassword => "time4vps_password",
        }
    }

    /// A fresh development value.
    fn generate(self) -> anyhow::Result<String> {
        use secrecy::ExposeSecret as _;
        Ok(match self {
            Secret::AuditKey(_) => random_key(),
            Secret::VaultMasterKey => format!("{VAULT_KEY_ID}:{}", random_key()),
            Secret::AdminSshKey => orchestrator_deploy_keys::generate("orchestrator-admin")
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .private_openssh
                .expose_secret()
                .to_owned(),
            Secret::DigitalOceanToken | Secret::Time4VpsPassword => {
                format!("dev-{}", random_key())
            }
            // Shaped as Cloudflare's are (40 of [A-Za-z0-9_-]): its API, and the emulator,
            // refuse another shape as a malformed header (6003).
            Secret::CloudflareToken => cloudflare_token(),
            Secret::GitHubAppKey => {
                anyhow::bail!("the GitHub App key is made with its public half: put it first")
            }
        })
    }
}

/// The development secrets of every service, under one root.
#[derive(Debug, Clone)]
pub struct DevSecrets {
    root: PathBuf,
}

impl DevSecrets {
    /// Secrets under `root` (created when the first secret is written).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `secret` is (or will be).
    pub fn path(&self, secret: Secret) -> PathBuf {
        self.root
            .join(secret.owner().name())
            .join(secret.file_name())
    }

    /// The file of `secret`, with a fresh development value if there is none yet.
    pub fn ensure(&self, secret: Secret) -> anyhow::Result<PathBuf> {
        self.create_folder(secret)?;
        let path = self.path(secret);
        if path.exists() && !stale(secret, &path) {
            return Ok(path);
        }
        self.put(secret, &secret.generate()?)
    }

    /// Writes `value` as `secret`, replacing what was there.
    pub fn put(&self, secret: Secret, value: &str) -> anyhow::Result<PathBuf> {
        self.create_folder(secret)?;
        let path = self.path(secret);
        orchestrator_pki::write_private(&path, value.as_bytes())?;
        Ok(path)
    }

    /// Creates the owner's folder of `secret`, under a root only we can enter.
    fn create_folder(&self, secret: Secret) -> anyhow::Result<()> {
        let folder = self.root.join(secret.owner().name());
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
        #[cfg(unix)]
        std::fs::set_permissions(
            &self.root,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        Ok(())
    }

    /// The value of `secret` (made if there is none yet): for an emulator that must accept it.
    pub fn value(&self, secret: Secret) -> anyhow::Result<String> {
        let path = self.ensure(secret)?;
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// Base64 of 32 random bytes: a fresh key, never a fixture.
///
/// # Panics
/// Only if the operating system's random generator fails.
pub fn random_key() -> String {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    #[allow(clippy::expect_used)] // Documented: nothing to recover from without randomness.
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system RNG");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A value an earlier version made in a shape the emulators now refuse (a dev Cloudflare token
/// with `+`, `/` or `=`): made again.
fn stale(secret: Secret, path: &std::path::Path) -> bool {
    secret == Secret::CloudflareToken
        && std::fs::read_to_string(path).is_ok_and(|token| {
            !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A random token of Cloudflare's shape: 40 characters of `[A-Za-z0-9_-]`.
fn cloudflare_token() -> String {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 30];
    #[allow(clippy::expect_used)] // As in random_key.
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system RNG");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn secrets_are_made_once_in_their_owners_folder_and_0600() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = DevSecrets::new(dir.path().join("secrets"));
        let path = secrets.ensure(Secret::DigitalOceanToken).unwrap();
        assert_eq!(path, dir.path().join("secrets/infra/digitalocean_token"));
        let value = secrets.value(Secret::DigitalOceanToken).unwrap();
        assert!(value.starts_with("dev-"));
        secrets.ensure(Secret::DigitalOceanToken).unwrap();
        assert_eq!(secrets.value(Secret::DigitalOceanToken).unwrap(), value);
        assert!(
            secrets
                .value(Secret::VaultMasterKey)
                .unwrap()
                .starts_with("dev1:")
        );
        assert!(secrets.ensure(Secret::GitHubAppKey).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(secrets.root()), 0o700);
        }
    }

    #[test]
    fn a_dev_cloudflare_token_has_cloudflares_shape() {
        let token = super::cloudflare_token();
        assert_eq!(token.len(), 40);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
}
