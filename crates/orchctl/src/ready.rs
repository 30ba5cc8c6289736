//! `orchctl ready ADDR`: asks a service's plain-HTTP admin port for `GET /readyz` and exits 0 on
//! 200. For container healthchecks: the image then needs no shell and no curl.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[derive(Debug, clap::Args)]
pub(crate) struct ReadyArgs {
    /// The admin address (`host:port`, e.g. 127.0.0.1:51053).
    #[arg(value_name = "HOST:PORT")]
    admin: SocketAddr,
    /// Ask `/healthz` (the process runs) instead of `/readyz` (it serves gRPC).
    #[arg(long)]
    live: bool,
}

/// How long the whole check may take: a healthcheck that hangs is a failed one.
const TIMEOUT: Duration = Duration::from_secs(3);
/// The status line is all that is read.
const MAX_ANSWER: u64 = 256;

pub(crate) fn run(args: ReadyArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let path = if args.live { "/healthz" } else { "/readyz" };
    let status = runtime.block_on(async {
        tokio::time::timeout(TIMEOUT, status(args.admin, path))
            .await
            .with_context(|| format!("{}{path} did not answer in {TIMEOUT:?}", args.admin))?
    })?;
    if status != 200 {
        bail!("{}{path} answered {status}", args.admin);
    }
    Ok(())
}

/// The status code of `GET path` on `addr` (HTTP/1.0: the server closes after answering).
async fn status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer).await?;
    parse_status(&answer).with_context(|| format!("{addr}{path}: not an HTTP answer"))
}

/// `HTTP/1.x NNN ...` -> NNN.
fn parse_status(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_line() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n\r\nready"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
