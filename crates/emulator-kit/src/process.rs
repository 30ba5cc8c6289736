//! What an emulator binary does around its server: read its environment, log, announce where
//! it listens, run until told to stop.

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

/// Logs to stdout, filtered by `RUST_LOG` (`info` when unset or invalid).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
}

/// An environment variable that is set and not blank.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `name`'s value, else the contents of the file `<name>_FILE` names (trimmed; a container gets
/// credentials as secret files, not in its environment). `None` when neither is set.
pub fn env_or_file(name: &str) -> anyhow::Result<Option<String>> {
    if let Some(value) = env(name) {
        return Ok(Some(value));
    }
    let var = format!("{name}_FILE");
    let Some(path) = env(&var) else {
        return Ok(None);
    };
    // The error names the variable and the path, never the contents.
    let text = std::fs::read_to_string(&path).with_context(|| format!("{var}: reading {path}"))?;
    let value = text.trim().to_owned();
    Ok((!value.is_empty()).then_some(value))
}

/// Writes `contents` (the listening addresses) to `path` through `{path}.tmp` and a rename, so
/// a reader polling for the file never sees half of it.
pub fn write_address_file(path: &str, contents: &str) -> anyhow::Result<()> {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {tmp}"))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {path}"))?;
    Ok(())
}

/// Returns on Ctrl-C or SIGTERM.
pub async fn stop_requested() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
