//! Booted servers over SSH: a droplet serves the host key its cloud-init injected and lets in
//! exactly the users and keys cloud-init named; `cloud-init status --wait` blocks until boot is
//! over; a deleted droplet stops answering. A reinstalled Time4VPS server lets in root with the
//! reinstall's key, under a host key nobody knew before, and has no cloud-init.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{DO_TOKEN, T4_PASSWORD, T4_USER, call, client, json};
use orchestrator_deploy_keys as keys;
use orchestrator_provider_emulators::{DigitalOcean, DoConfig, HostsConfig, T4Config, Time4Vps};
use orchestrator_ssh::{AdminKey, HostKey, SshError, Target, connect};
use reqwest::Method;
use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn admin(pair: &keys::KeyPair) -> AdminKey {
    AdminKey::from_openssh(&pair.private_openssh).unwrap()
}

async fn login(
    ip: &str,
    port: u16,
    user: &str,
    key: &AdminKey,
    host_key: HostKey,
) -> Result<orchestrator_ssh::Session, SshError> {
    let target = Target {
        host: ip.to_owned(),
        port,
        user: user.to_owned(),
        host_key,
    };
    connect(&target, key, Duration::from_secs(10)).await
}

/// Retries while the server is not up yet.
async fn login_when_up(
    ip: &str,
    port: u16,
    user: &str,
    key: &AdminKey,
    host_key: HostKey,
) -> orchestrator_ssh::Session {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match login(ip, port, user, key, host_key.clone()).await {
            Ok(s) => return s,
            Err(SshError::Unreachable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("login as {user}: {e}"),
        }
    }
}

#[tokio::test]
async fn a_droplet_boots_what_its_cloud_init_says() {
    let port = free_port();
    let boot_time = Duration::from_millis(700);
    let emulator = DigitalOcean::start(DoConfig {
        tokens: vec![DO_TOKEN.to_owned()],
        active_after: Duration::from_millis(50),
        address_after: Duration::from_millis(50),
        hosts: Some(HostsConfig {
            ssh_port: port,
            boot_time,
            ..Default::default()
        }),
        ..DoConfig::default()
    })
    .await
    .unwrap();
    let (deploy, admin_pair, host, stranger) = (
        keys::generate("deploy").unwrap(),
        keys::generate("admin").unwrap(),
        keys::generate("host").unwrap(),
        keys::generate("stranger").unwrap(),
    );
    let user_data = keys::cloud_init(
        "deploy",
        &deploy.public_openssh,
        &admin_pair.public_openssh,
        &host,
    )
    .unwrap();
    let http = client();
    let created = json(
        call(
            &http,
            Method::POST,
            &format!("{}/v2/droplets", emulator.url()),
            Some(DO_TOKEN),
            Some(
                &json!({"name": "web", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64",
                         "user_data": user_data}),
            ),
        )
        .await,
    )
    .await;
    let id = created["droplet"]["id"].as_u64().unwrap();
    let ip = common::eventually(Duration::from_secs(5), || async {
        emulator
            .droplets()
            .into_iter()
            .find(|d| d.id == id)
            .and_then(|d| d.ipv4)
    })
    .await;
    assert!(
        ip.starts_with("127."),
        "a loopback address of its own: {ip}"
    );
    let pinned = HostKey::Pinned(host.public_openssh.clone());

    // The admin logs in under the injected host key; cloud-init is still running for a while.
    let booted_at = Instant::now();
    let session = login_when_up(
        &ip,
        port,
        "orchestrator-admin",
        &admin(&admin_pair),
        pinned.clone(),
    )
    .await;
    let status = session.run("cloud-init status --wait", b"").await.unwrap();
    assert_eq!(status.stdout, b"status: done\n");
    assert!(status.success());
    assert!(
        booted_at.elapsed() >= boot_time / 2,
        "status --wait returns when boot is over"
    );
    let other = session
        .run("sudo cat /etc/hostname", b"stdin here")
        .await
        .unwrap();
    assert!(other.success());
    session.close().await;
    let log = emulator.commands(id);
    assert_eq!(
        log.len(),
        1,
        "commands other than the readiness check are recorded"
    );
    assert_eq!(
        (
            log[0].user.as_str(),
            log[0].command.as_str(),
            log[0].stdin.as_slice()
        ),
        (
            "orchestrator-admin",
            "sudo cat /etc/hostname",
            &b"stdin here"[..]
        )
    );

    // The deploy user gets in with the deploy key only; root is off; another host key is refused.
    login(&ip, port, "deploy", &admin(&deploy), pinned.clone())
        .await
        .unwrap()
        .close()
        .await;
    for (user, key) in [
        ("deploy", &admin_pair),
        ("deploy", &stranger),
        ("root", &admin_pair),
        ("orchestrator-admin", &deploy),
    ] {
        let refused = login(&ip, port, user, &admin(key), pinned.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(refused, SshError::AuthRefused { .. }),
            "{user}: {refused}"
        );
    }
    let mismatch = login(
        &ip,
        port,
        "deploy",
        &admin(&deploy),
        HostKey::Pinned(stranger.public_openssh.clone()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(mismatch, SshError::HostKeyMismatch { .. }),
        "{mismatch}"
    );

    // Deleted: nothing answers any more.
    let deleted = call(
        &http,
        Method::DELETE,
        &format!("{}/v2/droplets/{id}", emulator.url()),
        Some(DO_TOKEN),
        None,
    )
    .await;
    assert_eq!(deleted.status(), 204);
    let gone = login(&ip, port, "deploy", &admin(&deploy), pinned)
        .await
        .unwrap_err();
    assert!(matches!(gone, SshError::Unreachable { .. }), "{gone}");
}

#[tokio::test]
async fn a_reinstalled_time4vps_server_lets_in_root_with_the_reinstall_key() {
    let port = free_port();
    let octet = 10 + (std::process::id() % 200) as u8;
    let ip = format!("127.{octet}.77.9");
    let emulator = Time4Vps::start(T4Config {
        user: T4_USER.to_owned(),
        password: T4_PASSWORD.to_owned(),
        servers: vec![(501, ip.clone())],
        task_after: Duration::from_millis(300),
        hosts: Some(HostsConfig {
            ssh_port: port,
            boot_time: Duration::ZERO,
            ..Default::default()
        }),
        ..T4Config::default()
    })
    .await
    .unwrap();
    let admin_pair = keys::generate("admin").unwrap();
    let answer = client()
        .post(format!("{}/api/server/501/reinstall", emulator.url()))
        .basic_auth(T4_USER, Some(T4_PASSWORD))
        .json(&json!({"os": "kvm-ubuntu-24.04-gpt-x86_64", "ssh_key": admin_pair.public_openssh}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let session = login_when_up(
        &ip,
        port,
        "root",
        &admin(&admin_pair),
        HostKey::LearnOnFirstUse,
    )
    .await;
    assert_eq!(
        Some(session.host_key().to_owned()),
        emulator.host_key(501),
        "the key seen on first contact is the server's own"
    );
    let no_cloud_init = session.run("cloud-init status --wait", b"").await.unwrap();
    assert_eq!(no_cloud_init.status, Some(127));
    session.run("bash -s", b"echo setup").await.unwrap();
    session.close().await;
    assert_eq!(emulator.commands(501)[0].stdin, b"echo setup");
}
