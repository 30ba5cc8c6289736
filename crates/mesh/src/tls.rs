//! Mutual TLS on rustls (ring provider, TLS 1.3 only).
//!
//! [`MeshTls`] holds the current certificate, key and trust roots of one process and swaps them
//! when the files change, so certificates and CAs rotate without a restart: every new handshake
//! uses the newest files, established connections keep theirs until they age out.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{Identity, IdentityError};

/// Where a process finds its certificate chain, its private key and the CA bundle it trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Why TLS material could not be loaded. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("certificate {path} does not name a mesh identity: {source}")]
    Identity {
        path: PathBuf,
        source: IdentityError,
    },
    #[error("certificate {path} proves {found}, but this process is {expected}")]
    WrongIdentity {
        path: PathBuf,
        found: Identity,
        expected: Identity,
    },
    #[error("certificate {path} is not valid now (expired or not yet valid)")]
    NotValidNow { path: PathBuf },
    #[error("TLS configuration rejected ({context}): {source}")]
    Rustls {
        context: &'static str,
        source: rustls::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One loaded set of certificate chain, key and trust roots.
pub struct Material {
    identity: Identity,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("identity", &self.identity.to_string())
            .field("chain_len", &self.chain.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Material {
    /// Loads and checks the files: a parsable chain whose leaf names one SPIFFE identity, a key
    /// that matches it, and at least one trust root. Validity dates are checked by peers at
    /// each handshake (and by [`MeshTls`] for a process's own certificate), not here, so tools
    /// can present an expired certificate to prove it is refused.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let chain = read_certs(&files.cert)?;
        let leaf = &chain[0];
        let identity = Identity::from_certificate(leaf).map_err(|source| TlsError::Identity {
            path: files.cert.clone(),
            source,
        })?;
        let key_pem = zeroize::Zeroizing::new(read(&files.key)?);
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey {
            path: files.key.clone(),
        })?;
        let roots = read_roots(&files.ca)?;
        let material = Self {
            identity,
            chain,
            key,
            roots,
        };
        // Building a server config checks that key and certificate belong together.
        material.server_config()?;
        Ok(material)
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// A server configuration that demands a client certificate from the trusted CAs.
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Rustls {
                context: "client verifier",
                source: rustls::Error::General(e.to_string()),
            })?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                context: "server protocol versions",
                source,
            })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|source| TlsError::Rustls {
                context: "server certificate and key",
                source,
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// A client configuration presenting this certificate and accepting only a server that
    /// proves `server` (its SPIFFE ID, not merely its DNS name).
    pub fn client_config(&self, server: &Identity) -> Result<ClientConfig, TlsError> {
        client_config(Some(self), self.roots.clone(), server)
    }
}

/// A client configuration without a client certificate. The mesh refuses such clients; this
/// exists so tests and diagnostics can prove it.
pub fn anonymous_client_config(ca: &Path, server: &Identity) -> Result<ClientConfig, TlsError> {
    client_config(None, read_roots(ca)?, server)
}

fn client_config(
    me: Option<&Material>,
    roots: Arc<RootCertStore>,
    server: &Identity,
) -> Result<ClientConfig, TlsError> {
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Rustls {
            context: "server verifier",
            source: rustls::Error::General(e.to_string()),
        })?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            context: "client protocol versions",
            source,
        })?
        .dangerous() // Not weaker: the WebPKI verifier still runs; the SPIFFE check is added.
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
            webpki,
            expected: server.clone(),
        }));
    let mut config = match me {
        Some(m) => builder
            .with_client_auth_cert(m.chain.clone(), m.key.clone_key())
            .map_err(|source| TlsError::Rustls {
                context: "client certificate and key",
                source,
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Verifies the server chain with WebPKI, then requires its SPIFFE ID to be the expected one.
#[derive(Debug)]
struct SpiffeServerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    expected: Identity,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match Identity::from_certificate(end_entity) {
            Ok(found) if found == self.expected => Ok(ServerCertVerified::assertion()),
            Ok(found) => Err(rustls::Error::General(format!(
                "server proves {found}, expected {}",
                self.expected
            ))),
            Err(e) => Err(rustls::Error::General(format!("server certificate: {e}"))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate {
            path: path.to_owned(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            context: "trust root",
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

fn valid_now(der: &[u8]) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, cert)| cert.validity().is_valid())
}

struct Current {
    material: Arc<Material>,
    server: Arc<ServerConfig>,
}

/// The TLS state of one process, swapped atomically when its files change.
pub struct MeshTls {
    files: TlsFiles,
    expected: Option<Identity>,
    current: ArcSwap<Current>,
    /// The raw bytes last loaded, to notice changes without trusting file times.
    seen: Mutex<Vec<u8>>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("files", &self.files)
            .field("identity", &self.identity().to_string())
            .finish_non_exhaustive()
    }
}

impl MeshTls {
    /// Loads the files; with `expected`, refuses a certificate that proves another identity.
    pub fn load(files: TlsFiles, expected: Option<Identity>) -> Result<Arc<Self>, TlsError> {
        let (current, seen) = Self::build(&files, expected.as_ref())?;
        Ok(Arc::new(Self {
            files,
            expected,
            current: ArcSwap::from_pointee(current),
            seen: Mutex::new(seen),
        }))
    }

    fn build(
        files: &TlsFiles,
        expected: Option<&Identity>,
    ) -> Result<(Current, Vec<u8>), TlsError> {
        let seen = fingerprint(files);
        let material = Material::load(files)?;
        if !valid_now(&material.chain[0]) {
            return Err(TlsError::NotValidNow {
                path: files.cert.clone(),
            });
        }
        if let Some(expected) = expected
            && material.identity() != expected
        {
            return Err(TlsError::WrongIdentity {
                path: files.cert.clone(),
                found: material.identity().clone(),
                expected: expected.clone(),
            });
        }
        let server = Arc::new(material.server_config()?);
        Ok((
            Current {
                material: Arc::new(material),
                server,
            },
            seen,
        ))
    }

    pub fn identity(&self) -> Identity {
        self.current.load().material.identity().clone()
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current.load().server.clone()
    }

    pub fn client_config(&self, server: &Identity) -> Result<Arc<ClientConfig>, TlsError> {
        self.current
            .load()
            .material
            .client_config(server)
            .map(Arc::new)
    }

    /// Reloads when the files changed. A broken or half-written set of files is reported and
    /// the current material stays in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if fingerprint(&self.files) == *seen {
            return Ok(false);
        }
        let (current, bytes) = Self::build(&self.files, self.expected.as_ref())?;
        self.current.store(Arc::new(current));
        *seen = bytes;
        Ok(true)
    }

    /// Checks the files every `interval` for as long as the process runs.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let tls = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(tls) = tls.upgrade() else { return };
                // Reading and parsing the files is blocking I/O; keep it off the runtime's workers.
                let reloaded = {
                    let tls = tls.clone();
                    tokio::task::spawn_blocking(move || tls.reload()).await
                };
                let Ok(reloaded) = reloaded else {
                    // A panic while reading the files: say so, and try again next tick.
                    tracing::error!("reloading the TLS files failed unexpectedly; will retry");
                    continue;
                };
                match reloaded {
                    Ok(true) => {
                        tracing::info!(identity = %tls.identity(), "TLS certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but cannot be used; keeping the current certificate")
                    }
                }
            }
        })
    }
}

/// A digest of the three files as they are now; unreadable files count as changed content.
fn fingerprint(files: &TlsFiles) -> Vec<u8> {
    use ring::digest;
    let mut ctx = digest::Context::new(&digest::SHA256);
    for path in [&files.cert, &files.key, &files.ca] {
        let bytes = zeroize::Zeroizing::new(std::fs::read(path).unwrap_or_default());
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(&bytes);
    }
    ctx.finish().as_ref().to_vec()
}
