//! Issues the development CA and the mesh certificates: one SPIFFE URI SAN
//! (`spiffe://<trust-domain>/<name>`), DNS SANs for the name and `localhost`, loopback IP SANs,
//! and both TLS EKUs, because every identity is a client and services are servers too.
//!
//! Production issues these from cert-manager or SPIRE; this crate exists for `orchctl pki`,
//! the local mesh and tests (which also need expired and foreign-CA certificates).

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// The identities a development PKI issues by default: the four services and the two callers
/// from outside the mesh.
pub const DEFAULT_IDENTITIES: [&str; 6] = [
    "scaffolder",
    "secret-broker",
    "vault",
    "infra",
    "api",
    "operator",
];

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A PEM certificate and its PEM private key (wiped from memory on drop).
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// How long a certificate is valid, relative to now. Negative offsets make expired
/// certificates for tests.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: Duration,
    pub not_after: Duration,
}

impl Validity {
    pub fn days(days: i64) -> Self {
        Self {
            not_before: Duration::minutes(-5),
            not_after: Duration::days(days),
        }
    }

    /// Valid from two days ago until yesterday.
    pub fn expired() -> Self {
        Self {
            not_before: Duration::days(-2),
            not_after: Duration::days(-1),
        }
    }
}

/// A certificate authority that signs mesh certificates.
pub struct Ca {
    issued: Issued,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA for `trust_domain`.
    pub fn generate(trust_domain: &str, validity: Validity) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{trust_domain} development CA"));
        dn.push(DnType::OrganizationName, "orchestrator");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, validity);
        let cert = params.self_signed(&key)?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        };
        Ok(Self {
            issued,
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA loaded from its PEM certificate and key, to issue more certificates.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issued = Issued {
            cert_pem: cert_pem.to_owned(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        };
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self { issued, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.issued.cert_pem
    }

    pub fn pem(&self) -> &Issued {
        &self.issued
    }

    /// A leaf certificate for `spiffe://<trust_domain>/<name>`.
    pub fn issue(
        &self,
        trust_domain: &str,
        name: &str,
        validity: Validity,
    ) -> Result<Issued, PkiError> {
        self.issue_with_uris(&[format!("spiffe://{trust_domain}/{name}")], name, validity)
    }

    /// A leaf certificate with exactly the given URI SANs (tests use zero or two).
    pub fn issue_with_uris(
        &self,
        uris: &[String],
        dns_name: &str,
        validity: Validity,
    ) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, dns_name);
        params.distinguished_name = dn;
        let mut sans = Vec::new();
        for uri in uris {
            sans.push(SanType::URI(uri.as_str().try_into()?));
        }
        sans.push(SanType::DnsName(dns_name.try_into()?));
        sans.push(SanType::DnsName("localhost".try_into()?));
        sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        sans.push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now + validity.not_before;
    params.not_after = now + validity.not_after;
}

/// Writes `cert_pem` (0644) and `key_pem` (0600, never group or world readable) atomically.
pub fn write_pair(dir: &Path, name: &str, issued: &Issued) -> Result<(), PkiError> {
    write_file(
        &dir.join(format!("{name}.crt")),
        issued.cert_pem.as_bytes(),
        0o644,
    )?;
    write_private(&dir.join(format!("{name}.key")), issued.key_pem.as_bytes())
}

/// Writes `bytes` to `path` (0600, never group or world readable) atomically: a key or any
/// other secret handed to a process as a `<NAME>_FILE`.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_file(path, bytes, 0o600)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
    // The file may have existed with wider permissions.
    #[cfg(unix)]
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(io_err(&tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// What [`init`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InitReport {
    pub created: Vec<String>,
    pub kept: Vec<String>,
}

/// Creates `dir` with `ca.crt`/`ca.key` and a certificate per identity, keeping whatever
/// already exists (so it is safe to run on every `orchctl up`). Certificates are valid for
/// `days` days.
pub fn init(
    dir: &Path,
    trust_domain: &str,
    identities: &[&str],
    days: i64,
) -> Result<InitReport, PkiError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    #[cfg(unix)]
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(io_err(dir))?;
    let mut report = InitReport::default();
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let ca = if ca_crt.exists() && ca_key.exists() {
        report.kept.push("ca".into());
        let cert = fs::read_to_string(&ca_crt).map_err(io_err(&ca_crt))?;
        let key = Zeroizing::new(fs::read_to_string(&ca_key).map_err(io_err(&ca_key))?);
        Ca::from_pem(&cert, &key)?
    } else {
        let ca = Ca::generate(trust_domain, Validity::days(days.max(1) * 2))?;
        write_pair(dir, "ca", ca.pem())?;
        report.created.push("ca".into());
        ca
    };
    for name in identities {
        if dir.join(format!("{name}.crt")).exists() && dir.join(format!("{name}.key")).exists() {
            report.kept.push((*name).to_owned());
            continue;
        }
        write_pair(
            dir,
            name,
            &ca.issue(trust_domain, name, Validity::days(days))?,
        )?;
        report.created.push((*name).to_owned());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    fn der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn init_writes_private_keys_0600_and_spiffe_sans() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let report = init(&pki, "orchestrator.local", &DEFAULT_IDENTITIES, 30).unwrap();
        assert_eq!(report.created.len(), 7);
        for name in ["ca"].iter().chain(DEFAULT_IDENTITIES.iter()) {
            let meta = fs::metadata(pki.join(format!("{name}.key"))).unwrap();
            #[cfg(unix)]
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
                0o600,
                "{name}.key"
            );
        }
        for name in DEFAULT_IDENTITIES {
            let pem = fs::read_to_string(pki.join(format!("{name}.crt"))).unwrap();
            let bytes = der(&pem);
            let (_, cert) = X509Certificate::from_der(&bytes).unwrap();
            let sans: Vec<_> = cert
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .clone();
            let uris: Vec<_> = sans
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect();
            assert_eq!(
                uris,
                vec![format!("spiffe://orchestrator.local/{name}").as_str()]
            );
            assert!(
                sans.iter()
                    .any(|n| matches!(n, GeneralName::DNSName(d) if *d == name))
            );
        }
        // A second run keeps everything.
        let again = init(&pki, "orchestrator.local", &DEFAULT_IDENTITIES, 30).unwrap();
        assert!(again.created.is_empty());
        assert_eq!(again.kept.len(), 7);
    }
}
