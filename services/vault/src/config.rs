//! The vault's settings beyond the mesh's, read once at start-up.

use std::time::Duration;

use orchestrator_mesh::Env;

use crate::crypto::Keyring;

/// Every setting of the vault. Debug shows no key material (see [`Keyring`]).
#[derive(Debug)]
pub(crate) struct Settings {
    /// The master keys (`VAULT_MASTER_KEY`, an L1 secret), the first one primary.
    pub(crate) keyring: Keyring,
    pub(crate) limits: Limits,
    pub(crate) rewrap: RewrapPace,
}

/// What the write path enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Versions kept per key (`VAULT_KEEP_VERSIONS`); older ones are pruned on write.
    pub(crate) keep_versions: i64,
    /// Encryptions after which a data key is rotated (`VAULT_ROTATE_AFTER`), well below the
    /// 2^32 random-nonce limit of AES-GCM.
    pub(crate) rotate_after: i64,
}

/// How the background rewrap runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RewrapPace {
    /// Rows per batch transaction (`VAULT_REWRAP_BATCH`).
    pub(crate) batch: i64,
    /// How long the loop sleeps when not woken (`VAULT_REWRAP_INTERVAL`): how soon a rotation
    /// on another replica is noticed.
    pub(crate) interval: Duration,
}

impl Settings {
    pub(crate) fn from_env(env: &Env) -> anyhow::Result<Self> {
        let keyring = Keyring::parse(&env.required_secret("VAULT_MASTER_KEY")?)?;
        let limits = Limits {
            keep_versions: env.positive("VAULT_KEEP_VERSIONS", 10_i64)?,
            rotate_after: env.positive("VAULT_ROTATE_AFTER", 1_i64 << 30)?,
        };
        let rewrap = RewrapPace {
            batch: env.positive("VAULT_REWRAP_BATCH", 200_i64)?,
            interval: env.positive_duration("VAULT_REWRAP_INTERVAL", Duration::from_secs(30))?,
        };
        Ok(Self {
            keyring,
            limits,
            rewrap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn defaults_apply_when_only_the_keyring_is_set() {
        let settings = Settings::from_env(&env(&[("VAULT_MASTER_KEY", KEY)])).unwrap();
        assert_eq!(settings.keyring.primary_id(), "k1");
        assert_eq!(settings.limits.keep_versions, 10);
        assert_eq!(settings.limits.rotate_after, 1 << 30);
        assert_eq!(settings.rewrap.batch, 200);
        assert_eq!(settings.rewrap.interval, Duration::from_secs(30));
    }

    #[test]
    fn every_setting_is_read() {
        let settings = Settings::from_env(&env(&[
            ("VAULT_MASTER_KEY", KEY),
            ("VAULT_KEEP_VERSIONS", "3"),
            ("VAULT_ROTATE_AFTER", "1000"),
            ("VAULT_REWRAP_BATCH", "7"),
            ("VAULT_REWRAP_INTERVAL", "500ms"),
        ]))
        .unwrap();
        assert_eq!(settings.limits.keep_versions, 3);
        assert_eq!(settings.limits.rotate_after, 1000);
        assert_eq!(settings.rewrap.batch, 7);
        assert_eq!(settings.rewrap.interval, Duration::from_millis(500));
    }

    #[test]
    fn bad_settings_are_named_without_the_key() {
        let missing = Settings::from_env(&env(&[])).unwrap_err().to_string();
        assert!(missing.contains("VAULT_MASTER_KEY"), "{missing}");
        for (var, bad) in [
            ("VAULT_KEEP_VERSIONS", "0"),
            ("VAULT_ROTATE_AFTER", "many"),
            ("VAULT_REWRAP_BATCH", "0"),
            ("VAULT_REWRAP_INTERVAL", "0s"),
        ] {
            let err = Settings::from_env(&env(&[("VAULT_MASTER_KEY", KEY), (var, bad)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(var), "{err}");
            assert!(!err.contains("AQEB"), "{err}");
        }
        let err = Settings::from_env(&env(&[("VAULT_MASTER_KEY", "k1:AQEB")]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("AQEB"), "{err}");
    }
}
