//! Helpers for the emulators' test suites (feature `testing`): a failed step panics, as a
//! failed test should.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers: a failed step is a failed test.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A response header as text (`None` when absent or not visible ASCII).
pub fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The JSON an emulator binary wrote to its address file, polled for until `limit`.
pub async fn address_file(path: &Path, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text).unwrap();
        }
        assert!(Instant::now() < deadline, "no address file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGTERM to `child` and waits up to 10 s for it to exit.
pub async fn stop_with_sigterm(child: &mut Child) -> ExitStatus {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            return exit;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
