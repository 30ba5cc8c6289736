//! Workload identities: SPIFFE IDs (`spiffe://<trust-domain>/<name>`) carried as the one URI SAN
//! of every mesh certificate. Parsed and validated once, at the edge (a handshake, a config load).

use std::fmt;
use std::str::FromStr;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Why a string or certificate does not name a mesh identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("`{0}` is not a SPIFFE ID of the form spiffe://<trust-domain>/<name>")]
    Malformed(String),
    #[error("trust domain `{0}` is invalid (lowercase letters, digits, `.`, `-`, `_`)")]
    TrustDomain(String),
    #[error("identity name `{0}` is invalid (lowercase letters, digits, `-`, 1-63 characters)")]
    Name(String),
    #[error("the certificate could not be parsed")]
    Certificate,
    #[error("the certificate carries {0} SPIFFE URI SANs; exactly one is required")]
    SanCount(usize),
}

/// A SPIFFE trust domain such as `orchestrator.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 255
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdentityError::TrustDomain(s.to_owned()))
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The workload name inside a trust domain: `vault`, `secret-broker`, `api`, ...
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityName(String);

impl IdentityName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IdentityName {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdentityError::Name(s.to_owned()))
        }
    }
}

impl fmt::Display for IdentityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A workload identity: `spiffe://<trust-domain>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    trust_domain: TrustDomain,
    name: IdentityName,
}

impl Identity {
    pub fn new(trust_domain: TrustDomain, name: IdentityName) -> Self {
        Self { trust_domain, name }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn name(&self) -> &IdentityName {
        &self.name
    }

    /// The identity a certificate proves: its single SPIFFE URI SAN.
    ///
    /// A certificate with no SPIFFE URI, or with several, proves nothing and is refused.
    pub fn from_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Certificate)?;
        let sans = cert
            .subject_alternative_name()
            .map_err(|_| IdentityError::Certificate)?;
        let uris: Vec<&str> = sans
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|n| match n {
                GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [one] => one.parse(),
            other => Err(IdentityError::SanCount(other.len())),
        }
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::Malformed(s.to_owned()))?;
        let (domain, name) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::Malformed(s.to_owned()))?;
        Ok(Self {
            trust_domain: domain.parse()?,
            name: name.parse()?,
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/{}", self.trust_domain, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_spiffe_ids() {
        let id: Identity = "spiffe://orchestrator.local/secret-broker".parse().unwrap();
        assert_eq!(id.trust_domain().as_str(), "orchestrator.local");
        assert_eq!(id.name().as_str(), "secret-broker");
        assert_eq!(id.to_string(), "spiffe://orchestrator.local/secret-broker");
    }

    #[test]
    fn refuses_malformed_ids() {
        for bad in [
            "",
            "https://orchestrator.local/vault",
            "spiffe://orchestrator.local",
            "spiffe://orchestrator.local/",
            "spiffe://orchestrator.local/a/b",
            "spiffe://Orchestrator/vault",
            "spiffe://orchestrator.local/Vault",
            "spiffe://orchestrator.local/-vault",
            "spiffe:///vault",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad} parsed");
        }
    }

    mod props {
        //! Property tests: the SPIFFE ID parser and the certificate parser take arbitrary input
        //! without panicking, accept only the canonical form, and round-trip with `Display`.
        use super::super::*;
        use proptest::prelude::*;
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;

        fn config() -> ProptestConfig {
            // Found cases are kept as unit tests above, not as seed files.
            ProptestConfig {
                failure_persistence: None,
                // PROPTEST_CASES (the long run) wins over the short run.
                ..ProptestConfig::with_cases(
                    std::env::var("PROPTEST_CASES")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(256),
                )
            }
        }

        /// Strings near the valid shape (most random strings fail on the prefix).
        fn spiffe_like() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "spiffe://[a-zA-Z0-9._/ -]{0,24}",
                "spiffe://[a-z0-9.]{0,12}/[a-z0-9/-]{0,12}\\PC{0,3}",
                "(spiffe:/|SPIFFE://|spiffe:///)?[a-z.]{0,8}/?\\PC{0,8}",
            ]
        }

        fn valid_domain() -> impl Strategy<Value = String> {
            "[a-z0-9._-]{1,40}"
        }

        fn valid_name() -> impl Strategy<Value = String> {
            "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn prop_identity_parse_never_panics_and_is_canonical(s in spiffe_like()) {
                match s.parse::<Identity>() {
                    // Accepted only in its one printed form: no two spellings of one identity.
                    Ok(id) => prop_assert_eq!(id.to_string(), s),
                    Err(e) => {
                        let _ = e.to_string();
                    }
                }
            }

            #[test]
            fn prop_identity_display_parse_round_trip(d in valid_domain(), n in valid_name()) {
                let id = Identity::new(d.parse().unwrap(), n.parse().unwrap());
                prop_assert_eq!(id.to_string().parse::<Identity>(), Ok(id));
            }

            #[test]
            fn prop_certificate_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                prop_assert!(Identity::from_certificate(&bytes).is_err());
            }

            #[test]
            fn prop_mutated_certificates_never_panic(
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<prop::sample::Index>(),
            ) {
                let der = certificate();
                let mut bytes = der.clone();
                for (at, byte) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                // A changed byte may still parse (a signature byte); whatever parses names a
                // valid identity, and a truncated certificate never parses.
                let _ = Identity::from_certificate(&bytes);
                let truncated = &der[..cut.index(der.len())];
                prop_assert!(Identity::from_certificate(truncated).is_err());
            }
        }

        fn certificate() -> Vec<u8> {
            static DER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            DER.get_or_init(|| {
                let ca = orchestrator_pki::Ca::generate(
                    "orchestrator.local",
                    orchestrator_pki::Validity::days(1),
                )
                .unwrap();
                let leaf = ca
                    .issue(
                        "orchestrator.local",
                        "vault",
                        orchestrator_pki::Validity::days(1),
                    )
                    .unwrap();
                let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
                assert_eq!(
                    Identity::from_certificate(&der).unwrap().to_string(),
                    "spiffe://orchestrator.local/vault"
                );
                der.to_vec()
            })
            .clone()
        }
    }
}
