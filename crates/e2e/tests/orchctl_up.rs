//! `orchctl up` brings up four healthy processes and stops them all on SIGTERM.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_e2e::{bin, orchctl_up};
use orchestrator_mesh::Service;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn up_starts_the_four_services_and_stops_them() {
    let state = tempfile::tempdir().unwrap();
    let mut up = orchctl_up(state.path()).unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let mut table = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("Press Ctrl-C") {
                return true;
            }
            table.push(line);
        }
        false
    })
    .await
    .unwrap();
    assert!(found, "orchctl up ended early:\n{}", table.join("\n"));
    let output = table.join("\n");

    // Four processes, each with a pid, and ready on its admin port.
    let mut pids = Vec::new();
    for service in Service::ALL {
        let row = output
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{} ", service.name())))
            .unwrap_or_else(|| panic!("no row for {service}:\n{output}"));
        let fields: Vec<&str> = row.split_whitespace().collect();
        pids.push(fields[1].parse::<u32>().unwrap());
        let admin = fields[3]
            .trim_start_matches("http://")
            .trim_end_matches("/readyz")
            .parse()
            .unwrap();
        assert_eq!(
            orchestrator_e2e::raw::http_get(admin, "/readyz")
                .await
                .unwrap()
                .0,
            200
        );
    }
    assert!(output.contains("buf curl --protocol grpc"), "{output}");
    // `orchctl health` finds the services where `up` put them (free ports here), as JSON.
    let health = Command::new(bin("orchctl"))
        .args(["health", "--output", "json", "--state-dir"])
        .arg(state.path())
        .arg("--pki")
        .arg(state.path().join("pki"))
        .output()
        .await
        .unwrap();
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&health.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    for row in rows {
        assert_eq!(row["status"], "Serving", "{row}");
        assert!(row["error"].is_null(), "{row}");
    }
    // Four distinct processes, none of them orchctl itself.
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 4);
    assert!(!pids.contains(&up.id().unwrap()));

    let status = Command::new("kill")
        .args(["-TERM", &up.id().unwrap().to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), up.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "orchctl up exited with {exit}");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
            "process {pid} still runs"
        );
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}
