//! The one interface infra provisions servers through, whatever the provider: DigitalOcean
//! creates them, Time4VPS reinstalls servers bought in advance.

use std::future::Future;
use std::time::Duration;

use crate::digitalocean::{CreateDroplet, DigitalOcean};
use crate::http::ProviderError;
use crate::time4vps::Time4Vps;

/// A server infra asks a provider for.
#[derive(Debug, Clone, Default)]
pub struct ServerSpec {
    /// The idempotency key: a provider that creates servers finds the one made for this key
    /// instead of making another (DigitalOcean: the tag).
    pub key: String,
    /// The provider's id of a server bought in advance (Time4VPS); empty where servers are
    /// created.
    pub existing: String,
    pub name: String,
    pub region: String,
    pub size: String,
    /// The image (DigitalOcean) or OS template (Time4VPS).
    pub image: String,
    /// cloud-init user data, for providers whose servers run it.
    pub user_data: String,
    /// The public key root gets, where the provider installs one (a Time4VPS reinstall).
    pub root_key: String,
}

/// A server the provider has started making.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The provider's id of the server.
    pub id: String,
    /// The provider's task that makes it, where there is one (a Time4VPS reinstall): waiting
    /// for exactly this task, not for whatever runs, tells when the server is ours.
    pub task: Option<String>,
}

/// What infra needs of a server provider. Implementations never make a second server for one
/// key, retry reads and deletes only, and keep the provider's reason in their errors.
pub trait ServerProvider: Send + Sync {
    /// Whether the servers run cloud-init user data (then infra injects the host key and the
    /// users; otherwise it takes the server over over SSH).
    fn runs_cloud_init(&self) -> bool;

    /// The server already made for `spec.key`, if the provider can tell (`None` otherwise).
    fn find(
        &self,
        spec: &ServerSpec,
    ) -> impl Future<Output = Result<Option<Started>, ProviderError>> + Send;

    /// Starts making the server: creates it (or returns the one made for `spec.key`), or
    /// reinstalls the server bought in advance — refused as unavailable, to be retried, while
    /// another task runs on it.
    fn start(
        &self,
        spec: &ServerSpec,
    ) -> impl Future<Output = Result<Started, ProviderError>> + Send;

    /// Waits until the server is up with a public IPv4 (not just `active`, not while its task
    /// runs) and returns that address.
    fn wait_until_up(
        &self,
        started: &Started,
        timeout: Duration,
    ) -> impl Future<Output = Result<String, ProviderError>> + Send;

    /// Gives the server up: deleted, or wiped by a reinstall that leaves only `spec.root_key`
    /// (a server bought in advance stays bought). `false` = it was already gone.
    fn release(
        &self,
        id: &str,
        spec: &ServerSpec,
    ) -> impl Future<Output = Result<bool, ProviderError>> + Send;
}

const POLL: Duration = Duration::from_millis(250);

fn numeric(provider: &'static str, id: &str) -> Result<u64, ProviderError> {
    id.parse().map_err(|_| ProviderError::Decode {
        provider,
        reason: format!("`{id}` is not a server id"),
    })
}

impl ServerProvider for DigitalOcean {
    fn runs_cloud_init(&self) -> bool {
        true
    }

    async fn find(&self, spec: &ServerSpec) -> Result<Option<Started>, ProviderError> {
        Ok(self
            .droplets_by_tag(&spec.key)
            .await?
            .into_iter()
            .next()
            .map(|d| Started {
                id: d.id.to_string(),
                task: None,
            }))
    }

    async fn start(&self, spec: &ServerSpec) -> Result<Started, ProviderError> {
        let droplet = self
            .create_droplet(&CreateDroplet {
                name: spec.name.clone(),
                region: spec.region.clone(),
                size: spec.size.clone(),
                image: spec.image.clone(),
                tag: spec.key.clone(),
                user_data: spec.user_data.clone(),
                ssh_keys: Vec::new(),
            })
            .await?;
        Ok(Started {
            id: droplet.id.to_string(),
            task: None,
        })
    }

    async fn wait_until_up(
        &self,
        started: &Started,
        timeout: Duration,
    ) -> Result<String, ProviderError> {
        let id = numeric("DigitalOcean", &started.id)?;
        let droplet = self.wait_for_address(id, timeout, POLL).await?;
        Ok(droplet.public_ipv4.unwrap_or_default())
    }

    async fn release(&self, id: &str, _spec: &ServerSpec) -> Result<bool, ProviderError> {
        self.delete_droplet(numeric("DigitalOcean", id)?).await
    }
}

impl Time4Vps {
    /// Reinstalls `spec.existing` with `spec.image` and root's `spec.root_key`, unless a task
    /// runs on it.
    async fn reinstall_idle(&self, spec: &ServerSpec) -> Result<Started, ProviderError> {
        let id = numeric("Time4VPS", &spec.existing)?;
        // Never a reinstall over a running task: wait (the caller retries) until it ends.
        if let Some(task) = self.server(id).await?.active_task {
            return Err(ProviderError::Unavailable {
                provider: "Time4VPS",
                reason: format!("server {id} is busy ({task}); waiting for it to end"),
            });
        }
        let task = self.reinstall(id, &spec.image, &spec.root_key).await?;
        Ok(Started {
            id: id.to_string(),
            task: Some(task.to_string()),
        })
    }
}

impl ServerProvider for Time4Vps {
    fn runs_cloud_init(&self) -> bool {
        false
    }

    async fn find(&self, _spec: &ServerSpec) -> Result<Option<Started>, ProviderError> {
        // No idempotency key: whether a reinstall is ours only the caller's records can say.
        Ok(None)
    }

    async fn start(&self, spec: &ServerSpec) -> Result<Started, ProviderError> {
        self.reinstall_idle(spec).await
    }

    async fn wait_until_up(
        &self,
        started: &Started,
        timeout: Duration,
    ) -> Result<String, ProviderError> {
        let id = numeric("Time4VPS", &started.id)?;
        if let Some(task) = &started.task {
            self.wait_for_task(id, numeric("Time4VPS", task)?, timeout, POLL)
                .await?;
        }
        Ok(self.server(id).await?.ip)
    }

    async fn release(&self, id: &str, spec: &ServerSpec) -> Result<bool, ProviderError> {
        let spec = ServerSpec {
            existing: id.to_owned(),
            ..spec.clone()
        };
        match self.reinstall_idle(&spec).await {
            Ok(_) => Ok(true),
            // Not (or no longer) on this account: nothing of ours to wipe.
            Err(e) if e.reason() == "PROVIDER_NOT_FOUND" => Ok(false),
            Err(e) => Err(e),
        }
    }
}
