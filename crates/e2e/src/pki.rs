//! A throwaway PKI for one test, and channels that present any of its identities.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use orchestrator_mesh::tls::Material;
use orchestrator_mesh::{Identity, MeshTls, TlsFiles};
use orchestrator_pki::{Ca, Issued, Validity};
use rustls::ClientConfig;
use tonic::transport::Channel;

use crate::{TRUST_DOMAIN, identity};

/// A throwaway CA with a certificate for every default identity, in a temporary folder.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Pki {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        orchestrator_pki::init(
            dir.path(),
            TRUST_DOMAIN,
            &orchestrator_pki::DEFAULT_IDENTITIES,
            1,
        )?;
        let ca = Ca::from_pem(
            &std::fs::read_to_string(dir.path().join("ca.crt"))?,
            &std::fs::read_to_string(dir.path().join("ca.key"))?,
        )?;
        Ok(Self { dir, ca })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir().join("ca.crt")
    }

    /// The files of `stem` (`<stem>.crt`, `<stem>.key`) with this PKI's CA bundle.
    pub fn files(&self, stem: &str) -> TlsFiles {
        TlsFiles {
            cert: self.dir().join(format!("{stem}.crt")),
            key: self.dir().join(format!("{stem}.key")),
            ca: self.ca_file(),
        }
    }

    /// Writes `issued` as `<stem>.crt`/`<stem>.key` and returns its files.
    pub fn write(&self, stem: &str, issued: &Issued) -> anyhow::Result<TlsFiles> {
        orchestrator_pki::write_pair(self.dir(), stem, issued)?;
        Ok(self.files(stem))
    }

    /// A client configuration presenting `stem`'s certificate as it is (even expired) and
    /// expecting the server to prove `server`.
    pub fn client_config(
        &self,
        stem: &str,
        server: &Identity,
    ) -> anyhow::Result<Arc<ClientConfig>> {
        Ok(Arc::new(
            Material::load(&self.files(stem))?.client_config(server)?,
        ))
    }

    /// A reloading client TLS state for a default identity.
    pub fn client(&self, name: &str) -> anyhow::Result<Arc<MeshTls>> {
        Ok(MeshTls::load(self.files(name), None)?)
    }

    /// A fresh leaf certificate for `name` from this CA.
    pub fn issue(&self, name: &str, validity: Validity) -> anyhow::Result<Issued> {
        Ok(self.ca.issue(TRUST_DOMAIN, name, validity)?)
    }
}

/// A channel to `addr` as `client`, expecting the server to prove `server`.
pub async fn channel(
    client: &Arc<MeshTls>,
    addr: SocketAddr,
    server: &str,
) -> anyhow::Result<Channel> {
    Ok(
        orchestrator_mesh::client::connect(client.clone(), &addr.to_string(), identity(server))
            .await?,
    )
}

/// A channel using exactly `config` for every connection.
pub async fn channel_with(config: Arc<ClientConfig>, addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(
        orchestrator_mesh::client::connect_with(move || Ok(config.clone()), &addr.to_string())
            .await?,
    )
}
