//! The folder `orchctl up` keeps the local mesh in (`.orchestrator` by default), as `orchctl up`
//! writes it and `orchctl audit verify` reads it.

use std::path::{Path, PathBuf};

use orchestrator_mesh::Service;

use crate::secrets::DevSecrets;

/// A local mesh's state folder.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The development PKI: the CA and a certificate per identity.
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }

    /// What running processes write: address files, the GitHub App's public key.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    /// Each service's own secrets.
    pub fn secrets(&self) -> DevSecrets {
        DevSecrets::new(self.root.join("secrets"))
    }

    /// The folder of the services' databases.
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// `service`'s SQLite database file.
    pub fn database(&self, service: Service) -> PathBuf {
        self.data().join(format!("{}.db", service.name()))
    }
}
