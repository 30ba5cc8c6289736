//! A process started on port 0 says where it listens by writing a JSON address file once it
//! serves (`ORCH_ADDR_FILE` for the services, `*_ADDR_FILE` for the emulators).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::Child;

/// Where a service listens, as it wrote it.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

/// Waits until `child` (`name` in errors) has written `file` and returns what it wrote; fails
/// if the child exits first or `timeout` passes.
pub async fn wait_for_address_file(
    name: &str,
    child: &mut Child,
    file: &Path,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited during start-up ({status})");
        }
        // A file being written is not valid JSON yet: look again.
        if let Some(value) = std::fs::read(file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        {
            return Ok(value);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} did not start within {}s",
            timeout.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`wait_for_address_file`] for a service: its gRPC and admin addresses.
pub async fn wait_until_serving(
    name: &str,
    child: &mut Child,
    file: &Path,
    timeout: Duration,
) -> anyhow::Result<Bound> {
    let value = wait_for_address_file(name, child, file, timeout).await?;
    let addr = |key: &str| -> anyhow::Result<SocketAddr> {
        Ok(value[key]
            .as_str()
            .with_context(|| format!("{name} wrote no {key} address"))?
            .parse()?)
    };
    Ok(Bound {
        grpc: addr("grpc")?,
        admin: addr("admin")?,
    })
}
