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
}
