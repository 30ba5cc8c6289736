//! The provider clients against the emulators: the real HTTP code, the providers' shapes and
//! errors, and retries that never duplicate a server.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_provider_emulators as emu;
use orchestrator_providers::{
    Claim, Cloudflare, CreateDroplet, DigitalOcean, NameState, ProviderError, Retry,
    ServerProvider, ServerSpec, Time4Vps, owner_comment,
};
use secrecy::SecretString;

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn retry() -> Retry {
    Retry {
        deadline: Duration::from_secs(10),
        base_backoff: Duration::from_millis(20),
        attempt_timeout: Duration::from_secs(2),
    }
}

fn token(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

fn spec(tag: &str) -> CreateDroplet {
    CreateDroplet {
        name: "app-1".into(),
        region: "fra1".into(),
        size: "s-1vcpu-1gb".into(),
        image: "ubuntu-24-04-x64".into(),
        tag: tag.into(),
        user_data: "#cloud-config\n{}\n".into(),
        ssh_keys: vec![],
    }
}

#[tokio::test]
async fn droplets_are_created_once_even_when_a_third_of_the_calls_fail() {
    init();
    let config = emu::DoConfig {
        tokens: vec!["do-token".into()],
        transient_404_polls: 2,
        ..emu::DoConfig::default()
    };
    let server = emu::DigitalOcean::start(config).await.unwrap();
    server.set_faults(emu::Faults::mixed(11, 0.3));
    let client = DigitalOcean::new(&server.url(), token("do-token"), retry()).unwrap();
    // What infra does: retry the step until it succeeds; the tag makes each retry safe.
    let mut created = None;
    for _ in 0..20 {
        match client.create_droplet(&spec("op-42")).await {
            Ok(d) => {
                created = Some(d);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let created = created.expect("created within 20 attempts");
    assert_eq!(
        server.live_droplets().len(),
        1,
        "{:?}",
        server.live_droplets()
    );
    assert!(server.stats().faults_injected.values().sum::<usize>() > 0);
    server.clear_faults();
    let ready = client
        .wait_for_address(
            created.id,
            Duration::from_secs(10),
            Duration::from_millis(50),
        )
        .await
        .unwrap();
    assert_eq!(ready.status, "active");
    assert_eq!(ready.public_ipv4, server.live_droplets()[0].ipv4);
    // A second create with the same tag finds the same droplet.
    assert_eq!(
        client.create_droplet(&spec("op-42")).await.unwrap().id,
        created.id
    );
    assert!(client.delete_droplet(created.id).await.unwrap());
    assert!(
        !client.delete_droplet(created.id).await.unwrap(),
        "a second delete is a 404: already gone"
    );
    assert!(server.live_droplets().is_empty());
}

#[tokio::test]
async fn digitalocean_refusals_are_precise() {
    init();
    let server = emu::DigitalOcean::start(emu::DoConfig {
        tokens: vec!["good".into()],
        ..emu::DoConfig::default()
    })
    .await
    .unwrap();
    let bad = DigitalOcean::new(&server.url(), token("bad"), retry()).unwrap();
    assert!(matches!(
        bad.create_droplet(&spec("t")).await,
        Err(ProviderError::Auth { .. })
    ));
    let good = DigitalOcean::new(&server.url(), token("good"), retry()).unwrap();
    let key = orchestrator_deploy_keys_like_key();
    let first = good.ensure_ssh_key("deploy", &key).await.unwrap();
    // DigitalOcean answers 422 for a key already registered: found, not duplicated.
    assert_eq!(
        good.ensure_ssh_key("deploy-again", &key).await.unwrap(),
        first
    );
    assert_eq!(server.ssh_keys().iter().filter(|k| !k.deleted).count(), 1);
    let mut invalid = spec("t2");
    invalid.size = String::new();
    let err = good.create_droplet(&invalid).await.unwrap_err();
    assert_eq!(err.status(), Some(422), "{err}");
}

fn orchestrator_deploy_keys_like_key() -> String {
    // A syntactically valid Ed25519 public key line (a test fixture, not a secret).
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl deploy".into()
}

/// A Cloudflare token of the wrong form is 400 with 6003 (not an authentication code by its
/// status): the client still reports it as PROVIDER_AUTH_FAILED, like an unknown one (403,
/// 10000), not as a request Cloudflare refused.
#[tokio::test]
async fn cloudflare_token_refusals_are_authentication_failures() {
    init();
    let server = emu::Cloudflare::start(emu::CfConfig {
        tokens: vec!["cf-token".into()],
        zones: vec!["orchestrator.test".into()],
        ..emu::CfConfig::default()
    })
    .await
    .unwrap();
    for bad in ["not a token!", "unknown-token"] {
        let client = Cloudflare::new(&server.api_base(), token(bad), retry()).unwrap();
        let err = client.zone_id("orchestrator.test").await.unwrap_err();
        assert!(matches!(err, ProviderError::Auth { .. }), "{bad}: {err:?}");
        assert_eq!(err.reason(), "PROVIDER_AUTH_FAILED");
    }
}

#[tokio::test]
async fn dns_records_are_marked_claimed_by_id_and_foreign_ones_never_touched() {
    init();
    let config = emu::CfConfig {
        tokens: vec!["cf-token".into(), "someone-else".into()],
        zones: vec!["orchestrator.test".into()],
        // The zone proxies a new record unless told otherwise: the record is unproxied only
        // because the client says `proxied: false`.
        proxied_by_default: true,
        ..emu::CfConfig::default()
    };
    let server = emu::Cloudflare::start(config).await.unwrap();
    let client = Cloudflare::new(&server.api_base(), token("cf-token"), retry()).unwrap();
    let zone = client.zone_id("orchestrator.test").await.unwrap();
    let owner = owner_comment("srv-1");
    let Claim::Ours(id) = client
        .claim_a_record(&zone, "app.orchestrator.test", "203.0.113.7", &owner)
        .await
        .unwrap()
    else {
        panic!("a free name is claimed")
    };
    let again = client
        .claim_a_record(&zone, "app.orchestrator.test", "203.0.113.8", &owner)
        .await
        .unwrap();
    assert_eq!(
        again,
        Claim::Ours(id.clone()),
        "updated in place, not duplicated"
    );
    let records = server.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].content, "203.0.113.8");
    assert_eq!(
        records[0].comment.as_deref(),
        Some("orchestrator server srv-1")
    );
    assert!(!records[0].proxied, "SSH does not pass the proxy");
    // Another server's claim on the same name finds it taken and writes nothing.
    let taken = client
        .claim_a_record(
            &zone,
            "app.orchestrator.test",
            "203.0.113.9",
            &owner_comment("srv-2"),
        )
        .await
        .unwrap();
    assert!(
        matches!(taken, Claim::Taken(ref r) if r.id == id),
        "{taken:?}"
    );
    assert_eq!(server.records()[0].content, "203.0.113.8");

    // A record someone else made (no comment, or another comment; any type) is foreign.
    let other = Cloudflare::new(&server.api_base(), token("someone-else"), retry()).unwrap();
    let foreign = other
        .claim_a_record(&zone, "www.orchestrator.test", "192.0.2.1", "hand-made")
        .await
        .unwrap();
    let Claim::Ours(foreign_id) = foreign else {
        panic!("{foreign:?}")
    };
    for name in ["www.orchestrator.test"] {
        let state = client.name_state(&zone, name, &owner).await.unwrap();
        assert!(
            matches!(state, NameState::Taken(ref r) if r.id == foreign_id),
            "{state:?}"
        );
        let claim = client
            .claim_a_record(&zone, name, "203.0.113.10", &owner)
            .await
            .unwrap();
        assert!(matches!(claim, Claim::Taken(_)), "{claim:?}");
        assert!(
            client
                .find_owned(&zone, name, &owner)
                .await
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(
        client
            .name_state(&zone, "free.orchestrator.test", &owner)
            .await
            .unwrap(),
        NameState::Free
    );
    let www = server
        .records()
        .into_iter()
        .find(|r| r.id == foreign_id)
        .unwrap();
    assert_eq!(
        (www.content.as_str(), www.token_used.as_str()),
        ("192.0.2.1", "someone-else")
    );

    // Deletes go by id: ours goes, the foreign one stays.
    assert_eq!(
        client
            .find_owned(&zone, "app.orchestrator.test", &owner)
            .await
            .unwrap()
            .map(|r| r.id),
        Some(id.clone())
    );
    assert!(client.delete_record(&zone, &id).await.unwrap());
    assert!(!client.delete_record(&zone, &id).await.unwrap());
    assert_eq!(server.records().len(), 1);
    assert_eq!(server.records()[0].id, foreign_id);

    let bad = Cloudflare::new(&server.api_base(), token("nope"), retry()).unwrap();
    assert!(matches!(
        bad.zone_id("orchestrator.test").await,
        Err(ProviderError::Auth { .. })
    ));

    // Under faults (some striking after the change), retrying the step still leaves one
    // record, ours.
    server.set_faults(emu::Faults::mixed(5, 0.3));
    let mut claimed = None;
    for _ in 0..20 {
        if let Ok(claim) = client
            .claim_a_record(&zone, "faulty.orchestrator.test", "203.0.113.9", &owner)
            .await
        {
            claimed = Some(claim);
            break;
        }
    }
    assert!(matches!(claimed, Some(Claim::Ours(_))), "{claimed:?}");
    server.clear_faults();
    let faulty: Vec<_> = server
        .records()
        .into_iter()
        .filter(|r| r.name == "faulty.orchestrator.test")
        .collect();
    assert_eq!(faulty.len(), 1);
    assert_eq!(faulty[0].comment.as_deref(), Some(owner.as_str()));
}

#[tokio::test]
async fn time4vps_servers_are_taken_over_by_reinstalling_with_the_admin_key() {
    init();
    let config = emu::T4Config {
        user: "acct".into(),
        password: "pw".into(),
        servers: vec![(101, "203.0.113.10".into())],
        task_after: Duration::from_millis(200),
        ..emu::T4Config::default()
    };
    let server = emu::Time4Vps::start(config).await.unwrap();
    let client = Time4Vps::new(&server.url(), "acct", token("pw"), retry()).unwrap();
    assert_eq!(client.server(101).await.unwrap().ip, "203.0.113.10");
    let key = orchestrator_deploy_keys_like_key();
    let task = client
        .reinstall(101, "kvm-ubuntu-24.04-gpt-x86_64", &key)
        .await
        .unwrap();
    client
        .wait_for_task(
            101,
            task,
            Duration::from_secs(10),
            Duration::from_millis(50),
        )
        .await
        .unwrap();
    assert_eq!(
        server.last_reinstall(101).unwrap().ssh_key.as_deref(),
        Some(key.as_str())
    );
    let bad = Time4Vps::new(&server.url(), "acct", token("wrong"), retry()).unwrap();
    assert!(matches!(
        bad.server(101).await,
        Err(ProviderError::Auth { .. })
    ));
}

/// The one trait, over both providers: DigitalOcean finds the droplet made for a key instead of
/// making another; Time4VPS refuses to start while a task runs, waits for exactly its own task,
/// and releases by wiping (the server stays).
#[tokio::test]
async fn both_providers_behind_one_trait() {
    init();
    let droplets = emu::DigitalOcean::start(emu::DoConfig {
        tokens: vec!["t".into()],
        active_after: Duration::from_millis(50),
        address_after: Duration::from_millis(50),
        ..emu::DoConfig::default()
    })
    .await
    .unwrap();
    let digitalocean = DigitalOcean::new(&droplets.url(), token("t"), retry()).unwrap();
    let spec = ServerSpec {
        key: "orch-op-1".into(),
        name: "app-1".into(),
        region: "fra1".into(),
        size: "s-1vcpu-1gb".into(),
        image: "ubuntu-24-04-x64".into(),
        user_data: "#cloud-config\n{}\n".into(),
        ..ServerSpec::default()
    };
    assert!(digitalocean.runs_cloud_init());
    assert_eq!(digitalocean.find(&spec).await.unwrap(), None);
    let started = digitalocean.start(&spec).await.unwrap();
    assert_eq!(
        digitalocean.find(&spec).await.unwrap(),
        Some(started.clone())
    );
    assert_eq!(
        digitalocean.start(&spec).await.unwrap(),
        started,
        "no second droplet"
    );
    let ip = digitalocean
        .wait_until_up(&started, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        droplets.live_droplets()[0].ipv4.as_deref(),
        Some(ip.as_str())
    );
    assert!(digitalocean.release(&started.id, &spec).await.unwrap());
    assert!(
        !digitalocean.release(&started.id, &spec).await.unwrap(),
        "already gone"
    );

    let servers = emu::Time4Vps::start(emu::T4Config {
        user: "acct".into(),
        password: "pw".into(),
        servers: vec![(101, "203.0.113.10".into())],
        task_after: Duration::from_millis(300),
        ..emu::T4Config::default()
    })
    .await
    .unwrap();
    let time4vps = Time4Vps::new(&servers.url(), "acct", token("pw"), retry()).unwrap();
    let spec = ServerSpec {
        existing: "101".into(),
        image: "kvm-debian-12-gpt-x86_64".into(),
        root_key: orchestrator_deploy_keys_like_key(),
        ..ServerSpec::default()
    };
    assert!(!time4vps.runs_cloud_init());
    assert_eq!(time4vps.find(&spec).await.unwrap(), None);
    let started = time4vps.start(&spec).await.unwrap();
    assert!(started.task.is_some());
    let busy = time4vps.start(&spec).await.unwrap_err();
    assert!(matches!(busy, ProviderError::Unavailable { .. }), "{busy}");
    let ip = time4vps
        .wait_until_up(&started, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(ip, "203.0.113.10");
    assert_eq!(
        servers.servers()[0].os,
        "kvm-debian-12-gpt-x86_64",
        "up means reinstalled"
    );
    assert!(time4vps.release("101", &spec).await.unwrap());
    assert_eq!(servers.reinstalls(101).len(), 2);
}

/// A server busy with a task that is not ours (a reboot someone started in the panel) is never
/// reinstalled over: the real API shows the running task as an `active_task` object, and the
/// client waits (a retryable refusal) until it ends.
#[tokio::test]
async fn a_time4vps_server_busy_with_another_task_is_waited_for() {
    init();
    let servers = emu::Time4Vps::start(emu::T4Config {
        user: "acct".into(),
        password: "pw".into(),
        servers: vec![(101, "203.0.113.10".into())],
        task_after: Duration::from_millis(400),
        ..emu::T4Config::default()
    })
    .await
    .unwrap();
    let reboot = reqwest::Client::new()
        .post(format!("{}/api/server/101/reboot", servers.url()))
        .basic_auth("acct", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(reboot.status(), 200);

    let time4vps = Time4Vps::new(&servers.url(), "acct", token("pw"), retry()).unwrap();
    assert_eq!(
        time4vps.server(101).await.unwrap().active_task.as_deref(),
        Some("Reboot")
    );
    let spec = ServerSpec {
        existing: "101".into(),
        image: "kvm-debian-12-gpt-x86_64".into(),
        root_key: orchestrator_deploy_keys_like_key(),
        ..ServerSpec::default()
    };
    let busy = time4vps.start(&spec).await.unwrap_err();
    assert!(
        matches!(&busy, ProviderError::Unavailable { reason, .. } if reason.contains("Reboot")),
        "{busy}"
    );
    assert_eq!(
        servers.reinstalls(101).len(),
        0,
        "nothing started over the reboot"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(time4vps.server(101).await.unwrap().active_task, None);
    assert!(time4vps.start(&spec).await.unwrap().task.is_some());
    assert_eq!(servers.reinstalls(101).len(), 1);
}

/// DigitalOcean refuses to delete a droplet while its create action runs (422 "Droplet already
/// has a pending event"); the client waits for the action and deletes it then.
#[tokio::test]
async fn a_delete_right_after_the_create_waits_for_the_pending_event() {
    init();
    let server = emu::DigitalOcean::start(emu::DoConfig {
        tokens: vec!["do-token".into()],
        active_after: Duration::from_millis(400),
        ..emu::DoConfig::default()
    })
    .await
    .unwrap();
    let client = DigitalOcean::new(&server.url(), token("do-token"), retry()).unwrap();
    let created = client.create_droplet(&spec("op-43")).await.unwrap();
    assert!(client.delete_droplet(created.id).await.unwrap());
    assert!(server.live_droplets().is_empty());
}
