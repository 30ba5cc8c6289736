//! Per-process configuration, read once from the environment at start-up.
//!
//! Non-secret settings use `ORCH_*` variables. L1 secrets use their own names and may be given as
//! `<NAME>_FILE` (Docker and Kubernetes secrets); see [`Env::secret`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::identity::{Identity, TrustDomain};
use crate::service::Service;
use crate::tls::TlsFiles;

/// Why a service cannot start with the environment it was given. Every variant names the
/// variable at fault and never carries its value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{var} is set, but it holds an L1 secret of the {owner} service; \
         {service} must never see it (remove it from this process's environment)"
    )]
    ForeignSecret {
        var: String,
        owner: Service,
        service: Service,
    },
    #[error("{var} is invalid: {reason}")]
    Invalid { var: String, reason: String },
    #[error("both {var} and {var}_FILE are set; give exactly one")]
    Ambiguous { var: String },
    #[error("{var}_FILE points at {path}, which cannot be read")]
    Unreadable {
        var: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{var} is required but not set (nor {var}_FILE)")]
    Missing { var: String },
    #[error("{var} is required: {what}")]
    Required { var: String, what: String },
}

/// Names the file a deployment keeps this service's settings in (`deploy/compose/vault.env`),
/// for errors about a missing setting.
pub const SETTINGS_FILE_VAR: &str = "ORCH_SETTINGS_FILE";

/// A snapshot of the process environment. Tests build one from a map instead of mutating the
/// real environment.
#[derive(Clone, Default)]
pub struct Env(BTreeMap<String, String>);

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values may be secrets: show names only.
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Env {
    pub fn from_process() -> Self {
        Self(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        )
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    pub fn get(&self, var: &str) -> Option<&str> {
        self.0
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A required setting (not a secret: see [`Env::required_secret`]); `what` says what it is
    /// for in the error.
    /// When `ORCH_SETTINGS_FILE` names the file the settings come from (the compose env files
    /// do), the error says to set it there.
    pub fn required(&self, var: &str, what: &str) -> Result<&str, ConfigError> {
        self.get(var).ok_or_else(|| ConfigError::Required {
            var: var.to_owned(),
            what: match self.get(SETTINGS_FILE_VAR) {
                Some(file) => format!("{what} (set {var} in {file})"),
                None => what.to_owned(),
            },
        })
    }

    /// `var` parsed as `T`, or `default` when unset.
    pub fn parse<T: std::str::FromStr>(&self, var: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e: T::Err| ConfigError::Invalid {
                var: var.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    /// A positive count (a batch size, a limit) of the integer type `T`, or `default` when
    /// unset; zero, negatives and values beyond `T` are refused.
    pub fn positive<T>(&self, var: &str, default: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + Default,
        T::Err: std::fmt::Display,
    {
        let n = self.parse::<T>(var, default)?;
        if n > T::default() {
            Ok(n)
        } else {
            Err(ConfigError::Invalid {
                var: var.to_owned(),
                reason: "must be a positive integer".to_owned(),
            })
        }
    }

    /// A duration like `500ms`, `10s`, `5m` or `1h`, at most [`MAX_DURATION`], or `default`
    /// when unset.
    pub fn duration(&self, var: &str, default: Duration) -> Result<Duration, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(default);
        };
        let invalid = |reason: String| ConfigError::Invalid {
            var: var.to_owned(),
            reason,
        };
        match parse_duration(raw) {
            Some(d) if d <= MAX_DURATION => Ok(d),
            Some(_) => Err(invalid(format!("`{raw}` is longer than a year"))),
            None => Err(invalid(format!(
                "`{raw}` is not a duration like 500ms, 10s or 5m"
            ))),
        }
    }

    /// A whole number of seconds (`*_SECS` settings), at most [`MAX_DURATION`], or `default`
    /// when unset.
    pub fn seconds(&self, var: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.parse::<u64>(var, default.as_secs())? {
            n if n <= MAX_DURATION.as_secs() => Ok(Duration::from_secs(n)),
            _ => Err(ConfigError::Invalid {
                var: var.to_owned(),
                reason: "longer than a year".to_owned(),
            }),
        }
    }

    /// A duration that must not be zero (an interval a loop sleeps between rounds).
    pub fn positive_duration(&self, var: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.duration(var, default)? {
            d if d.is_zero() => Err(ConfigError::Invalid {
                var: var.to_owned(),
                reason: "must be longer than zero".to_owned(),
            }),
            d => Ok(d),
        }
    }

    /// An L1 secret from `var`, or from the file named by `var_FILE` (one trailing newline is
    /// dropped). The value is held in a [`SecretString`] from the moment it is read.
    pub fn secret(&self, var: &str) -> Result<Option<SecretString>, ConfigError> {
        let file_var = format!("{var}_FILE");
        match (self.get(var), self.get(&file_var)) {
            (Some(_), Some(_)) => Err(ConfigError::Ambiguous {
                var: var.to_owned(),
            }),
            (Some(value), None) => Ok(Some(SecretString::from(value.to_owned()))),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map(Zeroizing::new)
                    .map_err(|source| ConfigError::Unreadable {
                        var: var.to_owned(),
                        path: PathBuf::from(path),
                        source,
                    })?;
                let value = text.strip_suffix('\n').unwrap_or(&text);
                let value = value.strip_suffix('\r').unwrap_or(value);
                Ok(Some(SecretString::from(value.to_owned())))
            }
            (None, None) => Ok(None),
        }
    }

    /// Like [`Env::secret`], for a secret the service cannot run without.
    pub fn required_secret(&self, var: &str) -> Result<SecretString, ConfigError> {
        self.secret(var)?.ok_or_else(|| ConfigError::Missing {
            var: var.to_owned(),
        })
    }

    /// Refuses an environment that carries another service's L1 secret.
    pub fn check_no_foreign_secrets(&self, service: Service) -> Result<(), ConfigError> {
        let present = self
            .0
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| k.as_str());
        match service.foreign_secret(present) {
            Some((var, owner)) => Err(ConfigError::ForeignSecret {
                var,
                owner,
                service,
            }),
            None => Ok(()),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not `text` or `json`")),
        }
    }
}

/// What every service needs to join the mesh.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub service: Service,
    /// `ORCH_TRUST_DOMAIN`, default `orchestrator.local`.
    pub trust_domain: TrustDomain,
    /// `ORCH_LISTEN_ADDR`: the mTLS gRPC port (default `127.0.0.1:5005x`).
    pub listen_addr: SocketAddr,
    /// `ORCH_ADMIN_ADDR`: plain HTTP `/healthz`, `/readyz`, `/metrics` (default `127.0.0.1:5105x`).
    pub admin_addr: SocketAddr,
    /// `ORCH_TLS_CERT`, `ORCH_TLS_KEY`, `ORCH_TLS_CA` (default `.orchestrator/pki/...`).
    pub tls: TlsFiles,
    /// `ORCH_POLICY_FILE`, default `config/policy.toml`.
    pub policy_file: PathBuf,
    /// `ORCH_LOG_FORMAT`: `text` (default) or `json`.
    pub log_format: LogFormat,
    /// `ORCH_TLS_RELOAD_INTERVAL`: how often certificate files are checked for changes (10s).
    pub tls_reload_interval: Duration,
    /// `ORCH_MAX_CONNECTION_AGE`: connections are closed gracefully after this long, so that
    /// clients pick up rotated certificates (5m).
    pub max_connection_age: Duration,
    /// `ORCH_ADDR_FILE`: when set, the bound addresses are written there as JSON once serving
    /// (for tests and tools that start a service on port 0).
    pub addr_file: Option<PathBuf>,
}

impl MeshConfig {
    pub fn from_env(service: Service, env: &Env) -> Result<Self, ConfigError> {
        env.check_no_foreign_secrets(service)?;
        let name = service.name();
        let pki = PathBuf::from(".orchestrator/pki");
        let path = |var: &str, default: PathBuf| env.get(var).map(PathBuf::from).unwrap_or(default);
        Ok(Self {
            service,
            trust_domain: env.parse(
                "ORCH_TRUST_DOMAIN",
                "orchestrator.local".parse().expect("valid"),
            )?,
            listen_addr: env.parse(
                "ORCH_LISTEN_ADDR",
                SocketAddr::from(([127, 0, 0, 1], service.default_port())),
            )?,
            admin_addr: env.parse(
                "ORCH_ADMIN_ADDR",
                SocketAddr::from(([127, 0, 0, 1], service.default_admin_port())),
            )?,
            tls: TlsFiles {
                cert: path("ORCH_TLS_CERT", pki.join(format!("{name}.crt"))),
                key: path("ORCH_TLS_KEY", pki.join(format!("{name}.key"))),
                ca: path("ORCH_TLS_CA", pki.join("ca.crt")),
            },
            policy_file: path("ORCH_POLICY_FILE", PathBuf::from("config/policy.toml")),
            log_format: env.parse("ORCH_LOG_FORMAT", LogFormat::Text)?,
            // Zero would spin the reload loop (tokio's interval refuses it with a panic).
            tls_reload_interval: env
                .positive_duration("ORCH_TLS_RELOAD_INTERVAL", Duration::from_secs(10))?,
            max_connection_age: env
                .positive_duration("ORCH_MAX_CONNECTION_AGE", Duration::from_secs(300))?,
            addr_file: env.get("ORCH_ADDR_FILE").map(PathBuf::from),
        })
    }

    /// The identity this process must prove with its certificate.
    pub fn identity(&self) -> Identity {
        Identity::new(self.trust_domain.clone(), self.service.identity_name())
    }
}

/// The longest duration a setting takes: far beyond any interval or timeout here, and far
/// from the clock overflow a timer panics on (`ORCH_TLS_RELOAD_INTERVAL=18446744073709551615s`
/// was accepted, and tokio's interval panicked on its second tick).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Parses `250ms`, `10s`, `5m`, `1h`.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let split = raw.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = raw.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn defaults_follow_the_service() {
        let cfg = MeshConfig::from_env(Service::Vault, &Env::default()).unwrap();
        assert_eq!(cfg.listen_addr.port(), 50053);
        assert_eq!(cfg.admin_addr.port(), 51053);
        assert_eq!(cfg.tls.cert, PathBuf::from(".orchestrator/pki/vault.crt"));
        assert_eq!(
            cfg.identity().to_string(),
            "spiffe://orchestrator.local/vault"
        );
    }

    #[test]
    fn a_foreign_secret_is_named_never_shown() {
        let env = Env::from_pairs([("GITHUB_APP_PRIVATE_KEY", "canary-7f3a")]);
        let err = MeshConfig::from_env(Service::Infra, &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("GITHUB_APP_PRIVATE_KEY"), "{err}");
        assert!(err.contains("secret-broker"), "{err}");
        assert!(!err.contains("canary-7f3a"), "{err}");
        assert!(format!("{env:?}").contains("GITHUB_APP_PRIVATE_KEY"));
        assert!(!format!("{env:?}").contains("canary-7f3a"));
    }

    #[test]
    fn secrets_come_from_the_variable_or_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "from-file\n").unwrap();
        let env = Env::from_pairs([
            ("A", "direct".to_owned()),
            ("B_FILE", file.display().to_string()),
            ("C", "x".to_owned()),
            ("C_FILE", file.display().to_string()),
            ("D_FILE", "/nonexistent/key".to_owned()),
        ]);
        assert_eq!(env.secret("A").unwrap().unwrap().expose_secret(), "direct");
        assert_eq!(
            env.secret("B").unwrap().unwrap().expose_secret(),
            "from-file"
        );
        assert!(matches!(
            env.secret("C"),
            Err(ConfigError::Ambiguous { .. })
        ));
        assert!(matches!(
            env.secret("D"),
            Err(ConfigError::Unreadable { .. })
        ));
        assert!(env.secret("E").unwrap().is_none());
        assert!(matches!(
            env.required_secret("E"),
            Err(ConfigError::Missing { .. })
        ));
    }

    #[test]
    fn invalid_settings_name_their_variable() {
        let env = Env::from_pairs([("ORCH_TLS_RELOAD_INTERVAL", "soon")]);
        let err = MeshConfig::from_env(Service::Vault, &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("ORCH_TLS_RELOAD_INTERVAL is invalid"),
            "{err}"
        );
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("5"), None);
    }

    #[test]
    fn zero_intervals_are_refused_at_start() {
        for var in ["ORCH_TLS_RELOAD_INTERVAL", "ORCH_MAX_CONNECTION_AGE"] {
            let env = Env::from_pairs([(var, "0s")]);
            let err = MeshConfig::from_env(Service::Vault, &env)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(var) && err.contains("longer than zero"),
                "{err}"
            );
        }
    }

    #[test]
    fn typed_settings_name_their_variable() {
        let env = Env::from_pairs([("N", "0"), ("M", "x"), ("D", "3s")]);
        assert!(
            env.positive("N", 5)
                .unwrap_err()
                .to_string()
                .contains("N is invalid")
        );
        assert!(env.positive("M", 5).is_err());
        assert_eq!(env.positive("UNSET", 5).unwrap(), 5);
        assert_eq!(
            env.duration("D", Duration::ZERO).unwrap(),
            Duration::from_secs(3)
        );
        assert!(
            env.required("UNSET", "the organization")
                .unwrap_err()
                .to_string()
                .contains("UNSET is required: the organization")
        );
    }

    #[test]
    fn a_missing_setting_names_the_settings_file() {
        let env = Env::from_pairs([("ORCH_SETTINGS_FILE", "deploy/compose/secret-broker.env")]);
        let e = env
            .required("GITHUB_APP_ID", "the GitHub App's id")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "GITHUB_APP_ID is required: the GitHub App's id \
             (set GITHUB_APP_ID in deploy/compose/secret-broker.env)"
        );
    }

    #[test]
    fn durations_a_clock_cannot_hold_are_refused_at_start() {
        // Found by `prop_accepted_durations_fit_a_clock`: accepted, then a panic in the TLS
        // reload task on its second tick, and rotation silently stopped.
        let env = Env::from_pairs([("ORCH_TLS_RELOAD_INTERVAL", "18446744073709551615s")]);
        let err = MeshConfig::from_env(Service::Vault, &env).unwrap_err();
        assert!(err.to_string().contains("longer than a year"), "{err}");
        let env = Env::from_pairs([("D", "8760h")]);
        assert_eq!(env.duration("D", Duration::ZERO).unwrap(), MAX_DURATION);
        let env = Env::from_pairs([("S", "18446744073709551615"), ("T", "900")]);
        assert!(env.seconds("S", Duration::ZERO).is_err());
        assert_eq!(
            env.seconds("T", Duration::ZERO).unwrap(),
            Duration::from_secs(900)
        );
    }
}
